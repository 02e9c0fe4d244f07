"""Comparisons from the store: a grid of PEFUSE modes × encoders × fusion settings (PEFUSE tables 1–3, 7) and
hyper-parameter sweeps with several seeds (figures 2–3). Each variant is the same stage DAG as `pefuse`, so
whatever two variants share (ingest, composed texts, gallery captions, gallery features, generated images) is
computed once and read from the store afterwards; only what a variant really changes is computed.
"""

from __future__ import annotations

import time

from cirflow.flows.gpu import uses_gpu
from cirflow.flows.pefuse import Models, gallery_features, ingest, query_features
from cirflow.flows.report import ComparisonReport
from cirflow.schemas.compare import CompareConfig, with_override
from cirflow.schemas.config import RunConfig
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.distributed import partitions
from cirflow.tasks.retrieve import ScoreTerm
from cirflow.tasks.wrappers import evaluate_task, fuse_scores_task, retrieve_task
from prefect import flow


def _encoder_label(cfg: RunConfig) -> str:
    e = cfg.encoder
    name = e.model.rsplit("/", 1)[-1] if e.model.startswith("local-dir:") else e.model
    return f"{name}/{e.pretrained}" if e.pretrained else name


def _variant(store, cfg: RunConfig, group: dict, models: Models, progress: bool) -> tuple[list[Artifact], ScoreTerm]:
    bench = ingest(store, cfg, group)
    queries = query_features(store, cfg, bench, models, progress)
    gallery = gallery_features(store, cfg, bench, models, progress)
    rankings = retrieve_task(store, bench, queries[-1], gallery[-1], k=cfg.retrieve.k, index=cfg.retrieve.index,
                             circo_exclude_reference=cfg.retrieve.circo_exclude_reference)
    return [bench, *queries, *gallery, rankings, evaluate_task(store, bench, rankings)], ScoreTerm(queries[-1],
                                                                                                 gallery[-1])


@flow(name="compare")
def compare(config: dict, progress: bool = True) -> dict:
    cc = CompareConfig.model_validate(config)
    with partitions(cc.base.executor.world()):
        return _compare(cc, progress)


def _compare(cc: CompareConfig, progress: bool) -> dict:
    base = cc.base
    store = ArtifactStore(base.store, base.storage_options)
    report = ComparisonReport(cc.name, base, started=time.perf_counter())
    encoders = cc.encoders or [base.encoder]
    shared = Models.for_config(base)  # MLLM and diffusion shared by every variant
    try:
        for enc in encoders:
            cfg_e = base.model_copy(update={"encoder": enc})
            models = Models(shared.mllm, shared.gate.lazy(lambda enc=enc: _open_encoder(enc), when=uses_gpu(enc)),
                            shared.diffusion, shared.llm,
                            shared.gligen, shared.gate)
            try:
                for group in base.benchmark.groups():
                    label = "/".join(group.values()) or base.benchmark.name
                    terms: dict[str, ScoreTerm] = {}
                    for mode in cc.modes:
                        cfg = cfg_e.model_copy(update={"mode": mode})
                        arts, terms[mode] = _variant(store, cfg, group, models, progress)
                        report.add(_encoder_label(cfg), mode.upper().replace("2", "→"), label, arts)
                    for f in cc.fusions:
                        bench = ingest(store, cfg_e, group)
                        fused = fuse_scores_task(
                            store, bench, [ScoreTerm(terms[m].queries, terms[m].gallery, w) for m, w in f.terms.items()],
                            rule=f.rule, rule_params={"normalize": f.normalize} if f.rule == "weighted_sum" else {},
                            k=base.retrieve.k, circo_exclude_reference=base.retrieve.circo_exclude_reference)
                        report.add(_encoder_label(cfg_e), f.name, label, [bench, fused, evaluate_task(store, bench, fused)])
            finally:
                models.encoder.close()
    finally:
        shared.close()
    return report.publish(store)


def _open_encoder(enc):
    from cirflow.models.encoder import OpenClipEncoder

    return OpenClipEncoder(enc)


@flow(name="sweep")
def sweep(config: dict, progress: bool = True) -> dict:
    """One parameter over values × seeds; every other stage comes from the store."""
    cc = CompareConfig.model_validate(config)
    with partitions(cc.base.executor.world()):
        return _sweep(cc, progress)


def _sweep(cc: CompareConfig, progress: bool) -> dict:
    if cc.sweep is None:
        raise ValueError("a sweep config needs a `sweep` section")
    sw, base = cc.sweep, cc.base
    store = ArtifactStore(base.store, base.storage_options)
    report = ComparisonReport(cc.name, base, started=time.perf_counter(), sweep=sw)
    variants = [(v, s, with_override(with_override(base, sw.param, v), sw.seed_path(), s))
                for v in sw.values for s in sw.seeds]
    handles: dict[str, Models] = {}  # one set of loaded models per distinct load signature
    try:
        for value, seed, cfg in variants:
            sig = _load_signature(cfg)
            if sig not in handles:
                handles[sig] = Models.for_config(cfg)
            models = handles[sig]
            for group in base.benchmark.groups():
                label = "/".join(group.values()) or base.benchmark.name
                arts, _ = _variant(store, cfg, group, models, progress)
                report.add(f"{sw.param}={value}", f"seed={seed}", label, arts, value=value, seed=seed)
    finally:
        for m in handles.values():
            m.close()
    return report.publish(store)


def _load_signature(cfg: RunConfig) -> str:
    """What the loaded models depend on. Sampler settings (MLLM temperature, diffusion guidance, steps) are
    per request, so a sweep over them shares one set of loaded models; a swept model id does not."""
    from cirflow.models.diffusion import load_fields
    from cirflow.storage.keys import canonical_json

    diffusion = load_fields(cfg.diffusion) if cfg.diffusion is not None else None
    return canonical_json([cfg.mllm, cfg.llm, cfg.encoder, diffusion])
