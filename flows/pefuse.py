"""PEFUSE (pefuse.txt §3): convert the composed query into one modality, then retrieve.

    ingest ─► compose_target_text ─┬──────────────────────► embed_texts ──────┐ (T→I, T→T queries)
       │                           └─► synthesize_images ─► embed_generated ─┤ (I→I, I→T queries)
       ├─► embed_images ───────────────────────────────────────────────────┤ (T→I, I→I gallery)
       └─► caption_images ─► embed_texts(kind=image) ───────────────────────┴─► retrieve ─► evaluate
                                                                              (T→T, I→T gallery)

Every box is a stored stage, so a second mode, encoder or sampler setting reuses whatever it shares with
runs before it. Fashion-IQ categories and GeneCIS tasks run as groups and are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

from cirflow.flows.summary import RunSummary, publish
from cirflow.schemas.config import RunConfig
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.distributed import partitions
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.wrappers import (
    caption_images_task,
    compose_target_text_task,
    embed_generated_task,
    embed_images_task,
    embed_texts_task,
    evaluate_task,
    ingest_task,
    retrieve_task,
    synthesize_images_task,
)
from prefect import flow


@dataclass
class Models:
    """One lazy handle per model for a whole flow: loaded on first use, shared by every group and variant."""

    mllm: Lazy
    encoder: Lazy
    diffusion: Lazy | None = None
    llm: Lazy | None = None  # the text LLM when it is not the MLLM (rewrite_caption, plan_layout)
    gligen: Lazy | None = None  # IP-CIR's layout-to-image pipeline
    gate: object = None  # the flow's GPU slot (flows/gpu.py), taken by the first local GPU model load

    def text(self) -> Lazy:
        return self.llm or self.mllm

    @classmethod
    def for_config(cls, cfg: RunConfig) -> "Models":
        from cirflow.flows.gpu import GpuGate, uses_gpu
        from cirflow.models.encoder import OpenClipEncoder
        from cirflow.models.mllm.factory import load_mllm

        # one slot per flow, so two builds never load models on one GPU at once (and a flow never waits on itself)
        gate = GpuGate(cfg.gpu_limit)
        diffusion = None
        if cfg.diffusion is not None:
            from cirflow.models.diffusion import load_pipeline

            diffusion = gate.lazy(lambda: load_pipeline(cfg.diffusion), when=uses_gpu(cfg.diffusion))
        llm = gate.lazy(lambda: load_mllm(cfg.llm), when=uses_gpu(cfg.llm)) if cfg.llm is not None else None
        gligen = None
        if cfg.method == "ip_cir":
            from cirflow.models.gligen import load_gligen

            gligen = gate.lazy(lambda: load_gligen(cfg.ip_cir.proxies), when=uses_gpu(cfg.ip_cir.proxies))
        return cls(gate.lazy(lambda: load_mllm(cfg.mllm), when=uses_gpu(cfg.mllm)),
                   gate.lazy(lambda: OpenClipEncoder(cfg.encoder), when=uses_gpu(cfg.encoder)), diffusion, llm,
                   gligen, gate)

    def close(self) -> None:
        for m in (self.mllm, self.encoder, self.diffusion, self.llm, self.gligen):
            if m is not None:
                m.close()
        if self.gate is not None:
            self.gate.release()


def ingest(store: ArtifactStore, cfg: RunConfig, group: dict) -> Artifact:
    b = cfg.benchmark
    return ingest_task(store, b.name, b.data_root, split=b.split, image_root=b.image_root, fiq_join=b.fiq_join,
                       check_images=b.check_images, **group)


def composed_texts(store, cfg: RunConfig, bench: Artifact, models: Models, progress: bool) -> Artifact:
    return compose_target_text_task(store, bench, cfg.mllm, cfg.compose.sampling, prompt=cfg.compose.prompt,
                                    shard_size=cfg.compose.shard_size, mllm=models.mllm, progress=progress)


def query_features(store, cfg: RunConfig, bench: Artifact, models: Models, progress: bool) -> list[Artifact]:
    """The query side of the mode: composed-text features (T→·) or generated-image features (I→·)."""
    needs_text = cfg.mode in ("t2i", "t2t") or (cfg.diffusion is not None and cfg.diffusion.conditioning == "composed")
    texts = composed_texts(store, cfg, bench, models, progress) if needs_text else None
    if cfg.mode in ("t2i", "t2t"):
        feats = embed_texts_task(store, cfg.encoder, bench=bench, texts=texts, fallback=cfg.compose.fallback,
                                 shard_size=cfg.embed.shard_size, encoder=models.encoder, progress=progress)
        return [a for a in (texts, feats) if a is not None]
    images = synthesize_images_task(store, bench, cfg.diffusion, texts=texts, fallback=cfg.compose.fallback,
                                    pipeline=models.diffusion, progress=progress)
    feats = embed_generated_task(store, images, cfg.encoder, encoder=models.encoder, progress=progress)
    return [a for a in (texts, images, feats) if a is not None]


def gallery_features(store, cfg: RunConfig, bench: Artifact, models: Models, progress: bool) -> list[Artifact]:
    """The gallery side: image features (·→I) or features of MLLM gallery captions (·→T)."""
    if cfg.mode in ("t2i", "i2i"):
        return [embed_images_task(store, bench, cfg.encoder, shard_size=cfg.embed.shard_size, encoder=models.encoder,
                                  progress=progress)]
    # "gallery" = the retrieval gallery, and for GeneCIS every per-sample candidate
    captions = caption_images_task(store, bench, cfg.mllm, cfg.caption.sampling, which="gallery",
                                   prompt=cfg.caption.prompt, shard_size=cfg.caption.shard_size, mllm=models.mllm,
                                   progress=progress)
    feats = embed_texts_task(store, cfg.encoder, bench=bench, texts=captions, kind="image",
                             shard_size=cfg.embed.shard_size, encoder=models.encoder, progress=progress)
    return [captions, feats]


def run_group(store, cfg: RunConfig, group: dict, models: Models, progress: bool) -> list[Artifact]:
    bench = ingest(store, cfg, group)
    queries = query_features(store, cfg, bench, models, progress)
    gallery = gallery_features(store, cfg, bench, models, progress)
    rankings = retrieve_task(store, bench, queries[-1], gallery[-1], k=cfg.retrieve.k, index=cfg.retrieve.index,
                             circo_exclude_reference=cfg.retrieve.circo_exclude_reference)
    return [bench, *queries, *gallery, rankings, evaluate_task(store, bench, rankings)]


def run_groups(cfg: RunConfig, run_group, progress: bool) -> dict:
    """The shape every method flow shares: one group per Fashion-IQ category / GeneCIS task (one for the
    others), models loaded once for all groups, one published summary. `run_group(store, cfg, group, models,
    progress)` returns the group's artifacts, evaluation last."""
    store = ArtifactStore(cfg.store, cfg.storage_options)
    summary = RunSummary.start(cfg)
    models = Models.for_config(cfg)
    try:
        with partitions(cfg.executor.world()):
            for group in cfg.benchmark.groups():
                label = "/".join(group.values()) or cfg.benchmark.name
                summary.add_group(label, run_group(store, cfg, group, models, progress))
    finally:
        models.close()
    return publish(summary, store)


@flow(name="pefuse")
def pefuse(config: dict, progress: bool = True) -> dict:
    return run_groups(RunConfig.model_validate(config), run_group, progress)
