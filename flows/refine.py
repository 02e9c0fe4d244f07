"""Refined benchmark build (CoLLM §4.2 / supp. §8.2) as a Prefect flow.

    ingest ─► embed_images ─► refine_candidates ─► refine_validate[0] ─► refine_regenerate
                                                        └──────────────► refine_validate[1..L] ─► refine_benchmark ─► export

Fashion-IQ categories run as groups; the exported folder holds every group's caption file. Registered as
`FLOWS["refine"]`, so `cirflow run` and `cirflow deploy` take a `method: refine` config.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cirflow.flows.method import Method, basic_preflight
from cirflow.flows.models import ModelPool
from cirflow.schemas.base import Strict
from cirflow.schemas.config import BenchmarkConfig
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.mllm import MLLMConfig
from cirflow.schemas.names import Name
from cirflow.schemas.paths import LocalPath
from cirflow.schemas.progress import group as progress_group
from cirflow.schemas.refine import RefineOptions
from cirflow.storage import ArtifactStore
from cirflow.tasks.runs import embed_images, ingest
from cirflow.tasks.refine import refine_benchmark, refine_candidates, refine_regenerate, refine_validate
from cirflow.tasks.lazy_prefect import flow  # Prefect on first real run: `--plan` never imports it
from cirflow.tasks.lazy_prefect import task as prefect_task
from cirflow.tasks.plan_mode import Plannable

_opts = dict(cache_policy="NO_CACHE", persist_result=False)


def task(fn, **options):
    """A Prefect task, called as the plain function under `--plan` and in the store shortcut (tasks/plan_mode.py)."""
    return Plannable(fn, prefect_task(fn, **options))

# Local wrappers (tasks/wrappers.py is shared; these can move there as they are).
_ingest = task(ingest.run, name="ingest", **_opts)
_embed_images = task(embed_images.embed_images, name="embed_images", **_opts)
refine_candidates_task = task(refine_candidates.candidates, name="refine_candidates", **_opts)
refine_validate_task = task(refine_validate.validate, name="refine_validate", retries=1, retry_delay_seconds=10,
                            **_opts)
refine_regenerate_task = task(refine_regenerate.regenerate, name="refine_regenerate", retries=1, retry_delay_seconds=10,
                              **_opts)
refine_build_task = task(refine_benchmark.build, name="refine_benchmark", **_opts)


class RefineConfig(Strict):
    """`method: refine` run config (one YAML file), the refine method of cirflow.flows.registry."""

    name: Name = "refine"
    method: Literal["refine"] = "refine"
    store: LocalPath = ".cirflow/store"
    storage_options: dict = Field(default_factory=dict)
    output_dir: LocalPath = ".cirflow/runs"
    gpu_limit: str | None = None  # Prefect global concurrency limit gating model loads (cirflow.flows.gpu)
    benchmark: BenchmarkConfig
    mllm: MLLMConfig
    encoder: EncoderConfig
    refine: RefineOptions = Field(default_factory=RefineOptions)
    embed_shard_size: int = Field(4096, ge=1)

    @model_validator(mode="after")
    def _benchmark(self) -> "RefineConfig":
        if self.benchmark.name not in ("cirr", "fashioniq"):
            raise ValueError(f"refinement supports cirr and fashioniq, not {self.benchmark.name}")
        if self.benchmark.split not in (None, "val", "train"):
            raise ValueError("refinement needs ground truth: split val (or train)")
        return self

    def out_dir(self) -> str:
        return self.refine.out_dir or str(Path(self.output_dir) / self.name)


@flow(name="refine-benchmark")
def refine(config: dict, progress: bool = True) -> dict:
    cfg = RefineConfig.model_validate(config)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    o, b = cfg.refine, cfg.benchmark
    t0 = datetime.now(timezone.utc)
    builds, stages = {}, []
    with ModelPool(cfg.gpu_limit) as pool:
        gate = pool.gate
        mllm, encoder = pool.add_mllm("mllm", cfg.mllm), pool.add_encoder("encoder", cfg.encoder)
        for group in b.groups():
            label = "/".join([b.name, *group.values()])
            with progress_group(label):  # the benchmark group on its stages' progress lines
                bench = _ingest(store, b.name, b.data_root, split=b.split or "val", image_root=b.image_root,
                                fiq_join=b.fiq_join, check_images=b.check_images, **group)
                image_emb = _embed_images(store, bench, cfg.encoder, shard_size=cfg.embed_shard_size,
                                          encoder=encoder, progress=progress)
                cands = refine_candidates_task(store, bench, image_emb, o)
                rounds = [refine_validate_task(store, bench, cands, cfg.mllm, o, level=0, mllm=mllm,
                                               progress=progress)]
                regen = None
                states = rounds[0].manifest.stats.get("states")
                if states is None:  # `--plan`: a round not computed yet; whether texts are regenerated hangs on it
                    from cirflow.tasks.plan_mode import PlanBlocked

                    raise PlanBlocked(f"{rounds[0].stage}/{rounds[0].key[:12]} would be computed first: whether "
                                      "texts are regenerated depends on its answers")
                if states.get("pending"):
                    regen = refine_regenerate_task(store, bench, rounds[0], cfg.mllm, o, mllm=mllm,
                                                   progress=progress)
                    for level in range(1, o.levels + 1):
                        rounds.append(refine_validate_task(store, bench, cands, cfg.mllm, o, level=level,
                                                           previous=rounds[-1], texts=regen, mllm=mllm,
                                                           progress=progress))
                built = refine_build_task(store, bench, cands, rounds, regen)
                builds[label] = (built, bench)
                arts = [bench, image_emb, cands, rounds[0], *([regen] if regen else []), *rounds[1:], built]
                stages += [_report(a, label) for a in arts]
    exported = refine_benchmark.export({k: v for k, v in builds.items()}, cfg.out_dir(), link_images=o.link_images)
    doc = {"run": cfg.name, "method": cfg.method, "benchmark": b.name, "store": store.url, "stages": stages,
           "counts": exported["counts"], "output_dir": exported["out_dir"], "files": exported,
           "gpu_gate": {"name": gate.name, "used": gate.used}, "started": t0.isoformat(),
           "wall_seconds": round((datetime.now(timezone.utc) - t0).total_seconds(), 3)}
    _prefect_artifacts(doc)
    return doc


def _report(a, label: str) -> dict:
    rep = a.report.as_dict() if a.report else {"stage": a.stage, "key": a.key, "status": "cached"}
    rep["label"] = label
    return rep


def _prefect_artifacts(doc: dict) -> None:
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    key = "".join(c if c.isalnum() else "-" for c in doc["run"].lower()).strip("-") or "refine"
    create_markdown_artifact(markdown=refine_benchmark.report_markdown(doc["counts"]), key=f"{key}-refinement",
                             description=f"refined {doc['benchmark']}: kept / revised / removed")


def run_refine(config: dict, progress: bool = True) -> dict:
    """The FLOWS entry: `FLOWS["refine"] = run_refine` (same signature as the other entries)."""
    return refine(config, progress=progress)


def print_refine(doc: dict, as_json: bool) -> None:
    shown = doc if as_json else {k: doc[k] for k in ("counts", "output_dir") if k in doc}
    print(json.dumps(shown, indent=2, default=str))


REFINE = Method("refine", RefineConfig, refine, basic_preflight, print_refine)
