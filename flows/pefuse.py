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

from typing import Literal

from pydantic import Field, model_validator

from cirflow.flows.baselines import BaselineQuery, reference_side
from cirflow.flows.method import Method
from cirflow.flows.models import ModelPool
from cirflow.flows.runs import ingest, preflight, retrieve_evaluate, run_groups
from cirflow.flows.summary import print_summary
from cirflow.schemas.config import CaptionConfig, Mode, RunBase
from cirflow.schemas.diffusion import DiffusionConfig
from cirflow.schemas.names import Name
from cirflow.storage import Artifact
from cirflow.tasks.wrappers import (
    caption_images_task,
    compose_target_text_task,
    embed_generated_task,
    embed_images_task,
    embed_texts_task,
    synthesize_images_task,
)
from cirflow.tasks.lazy_prefect import flow  # Prefect on first real run: `--plan` never imports it


class PefuseConfig(RunBase):
    # pefuse_t2i is kept as the name of the text→image-only method; it is pefuse with mode t2i
    name: Name = "pefuse"
    method: Literal["pefuse", "pefuse_t2i"] = "pefuse"
    mode: Mode = "t2i"  # PEFUSE §3: text→image, image→image, text→text, image→text
    caption: CaptionConfig = Field(default_factory=CaptionConfig)  # gallery captions of the ·→T modes
    diffusion: DiffusionConfig | None = None  # required by the image-query modes i2i and i2t

    @model_validator(mode="after")
    def _mode_needs(self) -> "PefuseConfig":
        if self.method == "pefuse_t2i" and self.mode != "t2i":
            raise ValueError("method pefuse_t2i runs mode t2i only; use method: pefuse for other modes")
        if self.mode in ("i2i", "i2t") and self.diffusion is None:
            raise ValueError(f"mode {self.mode} generates query images: add a diffusion section")
        return self


def composed_texts(store, cfg: RunBase, bench: Artifact, pool: ModelPool, progress: bool) -> Artifact:
    return compose_target_text_task(store, bench, cfg.mllm, cfg.compose.sampling, prompt=cfg.compose.prompt,
                                    shard_size=cfg.compose.shard_size, mllm=pool["mllm"], progress=progress)


def query_features(store, cfg: PefuseConfig, bench: Artifact, pool: ModelPool, progress: bool) -> list[Artifact]:
    """The query side of the mode: composed-text features (T→·) or generated-image features (I→·)."""
    needs_text = cfg.mode in ("t2i", "t2t") or (cfg.diffusion is not None and cfg.diffusion.conditioning == "composed")
    texts = composed_texts(store, cfg, bench, pool, progress) if needs_text else None
    if cfg.mode in ("t2i", "t2t"):
        feats = embed_texts_task(store, cfg.encoder, bench=bench, texts=texts, fallback=cfg.compose.fallback,
                                 shard_size=cfg.embed.shard_size, encoder=pool["encoder"], progress=progress)
        return [a for a in (texts, feats) if a is not None]
    images = synthesize_images_task(store, bench, cfg.diffusion, texts=texts, fallback=cfg.compose.fallback,
                                    pipeline=pool["diffusion"], progress=progress)
    feats = embed_generated_task(store, images, cfg.encoder, encoder=pool["encoder"], progress=progress)
    return [a for a in (texts, images, feats) if a is not None]


def gallery_features(store, cfg: PefuseConfig, bench: Artifact, pool: ModelPool, progress: bool) -> list[Artifact]:
    """The gallery side: image features (·→I) or features of MLLM gallery captions (·→T)."""
    if cfg.mode in ("t2i", "i2i"):
        return [embed_images_task(store, bench, cfg.encoder, shard_size=cfg.embed.shard_size,
                                  encoder=pool["encoder"], progress=progress)]
    # "gallery" = the retrieval gallery, and for GeneCIS every per-sample candidate
    captions = caption_images_task(store, bench, cfg.mllm, cfg.caption.sampling, which="gallery",
                                   prompt=cfg.caption.prompt, shard_size=cfg.caption.shard_size, mllm=pool["mllm"],
                                   progress=progress)
    feats = embed_texts_task(store, cfg.encoder, bench=bench, texts=captions, kind="image",
                             shard_size=cfg.embed.shard_size, encoder=pool["encoder"], progress=progress)
    return [captions, feats]


def run_group(store, cfg: PefuseConfig, group: dict, pool: ModelPool, progress: bool) -> list[Artifact]:
    bench = ingest(store, cfg, group)
    queries = query_features(store, cfg, bench, pool, progress)
    gallery = gallery_features(store, cfg, bench, pool, progress)
    return [bench, *queries, *gallery, *retrieve_evaluate(store, cfg, bench, queries[-1], gallery[-1])]


def text_query(store, cfg, bench: Artifact, pool: ModelPool, progress: bool) -> BaselineQuery:
    """PEFUSE as a text-query baseline (IP-CIR): the composed description plays the edited caption (one slot)
    against the reference caption."""
    return reference_side(store, cfg, bench, pool, progress, n=1, sampling=cfg.reference_caption.sampling,
                          edits=lambda captions: composed_texts(store, cfg, bench, pool, progress))


@flow(name="pefuse")
def pefuse(config: dict, progress: bool = True) -> dict:
    return run_groups(PefuseConfig.model_validate(config), run_group, progress)


def _preflight(cfg: PefuseConfig, source: str) -> None:
    templates = [("compose_target_text", cfg.compose.prompt)]
    preflight(cfg, source, templates)


PEFUSE = Method("pefuse", PefuseConfig, pefuse, _preflight, print_summary, text_query)
PEFUSE_T2I = Method("pefuse_t2i", PefuseConfig, pefuse, _preflight, print_summary)
