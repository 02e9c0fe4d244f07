"""What the refinement's stages share: the stage base (failed rows are data, never a reason to stop), its
runtime, the benchmarks it supports, the image paths of a benchmark and the raw answer of a rejected reply."""

from __future__ import annotations

import ast

from cirflow.models.mllm.factory import load_mllm
from cirflow.schemas.errors import CirflowError
from cirflow.storage import Artifact
from cirflow.tasks.stage import Context, MLLMRuntime, Stage

SUPPORTED = ("cirr", "fashioniq")
RAW_MARK = "; raw text: "  # how check_json_answer appends a rejected answer to its error


class RefineRuntime(MLLMRuntime):
    shard_size: int = 64


class RefineStage(Stage):
    """The refinement's stages: an unusable triplet (no target, a refused or ambiguous vote, a failed
    regeneration) is what the refinement measures and reports, so failed rows are data here, never a reason to
    stop the run; each stage's stats list its first failures."""

    failure_accounting = False

    def model_factory(self, slot: str, ctx: Context):
        return load_mllm(ctx.params.mllm)


def check_benchmark(bench: Artifact) -> str:
    name = bench.manifest.params["benchmark"]
    if name not in SUPPORTED:
        raise CirflowError(f"refinement supports {', '.join(SUPPORTED)}, not {name}")
    return name


def image_paths(bench: Artifact) -> dict[str, str]:
    t = bench.read("images", columns=["image_id", "path"])
    return dict(zip(t.column("image_id").to_pylist(), t.column("path").to_pylist()))


def raw_answer(error: str | None) -> str | None:
    if not error or RAW_MARK not in error:
        return None
    tail = error.rsplit(RAW_MARK, 1)[1]
    try:
        raw = ast.literal_eval(tail)
    except (ValueError, SyntaxError):
        return tail
    return raw if isinstance(raw, str) else None
