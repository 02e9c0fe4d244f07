"""Refined benchmark build (CoLLM §4.2 / supp. §8.2) as a Prefect flow.

    ingest ─► embed_images ─► refine_candidates ─► refine_validate[0] ─► refine_regenerate
                                                        └──────────────► refine_validate[1..L] ─► refine_benchmark ─► export

Fashion-IQ categories run as groups; the exported folder holds every group's caption file. Registered as
`FLOWS["refine"]`, so `cirflow run` and `cirflow deploy` take a `method: refine` config.
"""

from __future__ import annotations

from datetime import datetime, timezone

from cirflow.flows.gpu import GpuGate, uses_gpu
from cirflow.models.encoder import OpenClipEncoder
from cirflow.models.mllm.factory import load_mllm
from cirflow.schemas.refine import RefineConfig
from cirflow.storage import ArtifactStore
from cirflow.tasks import embed, ingest
from cirflow.tasks import refine_benchmark as rb
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

_opts = dict(cache_policy=NO_CACHE, persist_result=False)
# Local wrappers (tasks/wrappers.py is shared; these can move there as they are).
_ingest = task(ingest.run, name="ingest", **_opts)
_embed_images = task(embed.embed_images, name="embed_images", **_opts)
refine_candidates_task = task(rb.candidates, name="refine_candidates", **_opts)
refine_validate_task = task(rb.validate, name="refine_validate", retries=1, retry_delay_seconds=10, **_opts)
refine_regenerate_task = task(rb.regenerate, name="refine_regenerate", retries=1, retry_delay_seconds=10, **_opts)
refine_build_task = task(rb.build, name="refine_benchmark", **_opts)


@flow(name="refine-benchmark")
def refine(config: dict, progress: bool = True) -> dict:
    cfg = RefineConfig.model_validate(config)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    o, b = cfg.refine, cfg.benchmark
    t0 = datetime.now(timezone.utc)
    builds, stages = {}, []
    with GpuGate(cfg.gpu_limit) as gate, \
            gate.lazy(lambda: load_mllm(cfg.mllm), when=uses_gpu(cfg.mllm)) as mllm, \
            gate.lazy(lambda: OpenClipEncoder(cfg.encoder), when=uses_gpu(cfg.encoder)) as encoder:
        for group in b.groups():
            label = "/".join([b.name, *group.values()])
            bench = _ingest(store, b.name, b.data_root, split=b.split or "val", image_root=b.image_root,
                            fiq_join=b.fiq_join, check_images=b.check_images, **group)
            image_emb = _embed_images(store, bench, cfg.encoder, shard_size=cfg.embed_shard_size, encoder=encoder,
                                      progress=progress)
            cands = refine_candidates_task(store, bench, image_emb, o)
            rounds = [refine_validate_task(store, bench, cands, cfg.mllm, o, level=0, mllm=mllm, progress=progress)]
            regen = None
            if rounds[0].manifest.stats["states"].get("pending"):
                regen = refine_regenerate_task(store, bench, rounds[0], cfg.mllm, o, mllm=mllm, progress=progress)
                for level in range(1, o.levels + 1):
                    rounds.append(refine_validate_task(store, bench, cands, cfg.mllm, o, level=level,
                                                       previous=rounds[-1], texts=regen, mllm=mllm, progress=progress))
            built = refine_build_task(store, bench, cands, rounds, regen)
            builds[label] = (built, bench)
            arts = [bench, image_emb, cands, rounds[0], *([regen] if regen else []), *rounds[1:], built]
            stages += [_report(a, label) for a in arts]
    exported = rb.export({k: v for k, v in builds.items()}, cfg.out_dir(), link_images=o.link_images)
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
    create_markdown_artifact(markdown=rb.report_markdown(doc["counts"]), key=f"{key}-refinement",
                             description=f"refined {doc['benchmark']}: kept / revised / removed")


def run_refine(config: dict, progress: bool = True) -> dict:
    """The FLOWS entry: `FLOWS["refine"] = run_refine` (same signature as the other entries)."""
    return refine(config, progress=progress)
