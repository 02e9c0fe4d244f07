"""compose_target_text (PEFUSE §3): an MLLM reads the reference image and the modification and writes a
description of the target image, which T→I retrieval then embeds as a text query.

Work is sharded over queries; each shard is one batched call to the backend (vLLM's continuous batching or a
batched `generate`), and each request carries a seed derived from (seed, query_id), so a resumed run samples
exactly what an uninterrupted one would. Failed requests are kept as rows with status "failed" and the reason.
"""

from __future__ import annotations

from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import MLLM, ChatRequest
from cirflow.prompts import load_template, render
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.tables import TEXTS
from cirflow.storage import Artifact, ArtifactStore, item_seed
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.crops import image_for
from cirflow.tasks.stage import Context, MLLMRuntime, MLLMStage, Params, execute


class ComposeParams(Params):
    mllm: MLLMConfig  # contributes its key_fields(): model, revision, dtype — never the server address
    sampling: SamplingParams
    template: str  # the prompt's full text: editing a prompt recomputes exactly the stages that read it


class ComposeTargetText(MLLMStage):
    name, version = "compose_target_text", "1"
    Params, Runtime = ComposeParams, MLLMRuntime
    inputs = ("bench",)
    outputs = {"data": TEXTS}

    def items(self, ctx: Context):
        bench = ctx.inputs["bench"]
        ctx.scratch["images"] = {r["image_id"]: r for r in bench.read("images").to_pylist()}
        return bench.read("queries").to_pylist()

    def request(self, ctx: Context, q: dict) -> ChatRequest:
        p = ctx.params
        return ChatRequest(
            id=q["query_id"],
            prompt=render(p.template, modification=q["modification"], shared_concept=q["shared_concept"]),
            images=(image_for(ctx, ctx.scratch["images"][q["reference_id"]]),),
            sampling=p.sampling.model_copy(update={"seed": item_seed(p.sampling.seed, q["query_id"])}),
        )

    def row(self, ctx: Context, q: dict, r) -> dict:
        return {"id": r.id, "sample": 0, "text": r.text if r.status == "ok" else None, "raw": r.text,
                "status": r.status, "error": r.error, "seed": r.seed, "seconds": r.seconds}

    def model_factory(self, slot: str, ctx: Context):
        return load_mllm(ctx.params.mllm)

    def stats(self, ctx: Context) -> dict:
        secs = [s for s in ctx.run.committed("data", columns=["seconds"]).column("seconds").to_pylist()
                if s is not None]
        return {"model_seconds_per_item": round(sum(secs) / len(secs), 4) if secs else None}


def run(store: ArtifactStore, bench: Artifact, mllm_cfg: MLLMConfig, sampling: SamplingParams, *,
        prompt: str | None = None, shard_size: int = 256, mllm: Lazy[MLLM] | None = None,
        progress: bool = True, max_failure_rate: float | None = None, retry_failed: bool | None = None,
        rank: int = 0, world: int = 1) -> Artifact:
    template, source = load_template(ComposeTargetText.name, bench.manifest.params["benchmark"], prompt)
    return execute(ComposeTargetText, store, {"bench": bench},
                   ComposeParams(mllm=mllm_cfg, sampling=sampling, template=template),
                   MLLMRuntime(shard_size=shard_size, progress=progress, template_source=source,
                               backend=mllm_cfg.backend, max_failure_rate=max_failure_rate,
                               retry_failed=retry_failed),
                   {"mllm": mllm}, rank=rank, world=world)
