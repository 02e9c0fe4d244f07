"""What the training-free text-query baselines share (CIReVL, LDRE, and PEFUSE when IP-CIR builds on it): the
reference side of a query and its sections of the config.

    ingest ─► caption_images(references) ─► <edits> ─► embed_texts ─┬─► <query> ─► retrieve ─► evaluate
       └─► embed_images ─────────────────────────────────────────────┘

A method's `text_query` fills in <edits> (an LLM rewrite, PEFUSE's composed description) and <query> (the
edited features themselves, LDRE's ensemble) and returns a BaselineQuery: the text query features plus the
per-slot caption/edit features IP-CIR's semantic perturbation needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pydantic import Field

from cirflow.flows.models import ModelPool
from cirflow.flows.runs import ingest, retrieve_evaluate, text_llm
from cirflow.schemas.base import Strict
from cirflow.schemas.config import CaptionConfig, RunBase
from cirflow.schemas.mllm import SamplingParams
from cirflow.schemas.paths import TemplatePath
from cirflow.storage import Artifact
from cirflow.tasks.wrappers import caption_images_task, embed_images_task, embed_texts_task, rewrite_caption_task


class ReferenceCaptionConfig(CaptionConfig):
    """caption_images over the queries' reference images (CIReVL, LDRE, IP-CIR): a generic detailed caption
    by default (CIReVL's "describe the image in complete detail" structure)."""

    prompt: TemplatePath | None = "detailed"  # a built-in name (prompts/caption_images.<name>.txt) or a file path


class RewriteConfig(Strict):
    """rewrite_caption: a text LLM edits the reference caption by the instruction (CIReVL; LDRE per caption)."""

    prompt: TemplatePath | None = None  # default: prompts/rewrite_caption.<benchmark>.txt
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_tokens=128))
    shard_size: int = Field(256, ge=1)


class BaselineConfig(RunBase):
    """The sections of a caption → rewrite baseline."""

    reference_caption: ReferenceCaptionConfig = Field(default_factory=ReferenceCaptionConfig)
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)


@dataclass
class BaselineQuery:
    query: Artifact  # text query features, one per query
    edited: Artifact  # per-slot edited-caption (or composed-text) features, id = query_id, with `sample`
    originals: Artifact  # per-slot reference-caption features, id = image_id, with `sample`
    n: int  # slots
    gallery: Artifact  # gallery image features
    artifacts: list[Artifact]  # every stage of the baseline, for the run summary (reference captions first)


def reference_side(store, cfg: BaselineConfig, bench: Artifact, pool: ModelPool, progress: bool, *, n: int,
                   sampling: SamplingParams, edits: Callable[[Artifact], Artifact],
                   query: Callable[[Artifact, Artifact, Artifact], Artifact] | None = None) -> BaselineQuery:
    """n reference captions per query → `edits(captions)` → per-slot features; the query features are
    `query(edited, originals, gallery)`, or by default the features of the edits themselves."""
    enc = dict(encoder=pool["encoder"], progress=progress, shard_size=cfg.embed.shard_size)
    gallery = embed_images_task(store, bench, cfg.encoder, **enc)
    captions = caption_images_task(store, bench, cfg.mllm, sampling, which="references", n_samples=n,
                                   prompt=cfg.reference_caption.prompt, shard_size=cfg.reference_caption.shard_size,
                                   mllm=pool["mllm"], progress=progress)
    originals = embed_texts_task(store, cfg.encoder, bench=bench, texts=captions, kind="image", samples="each", **enc)
    texts = edits(captions)
    edited = embed_texts_task(store, cfg.encoder, bench=bench, texts=texts, samples="each",
                              fallback=cfg.compose.fallback, **enc)
    if query is not None:
        q = query(edited, originals, gallery)
    else:
        q = embed_texts_task(store, cfg.encoder, bench=bench, texts=texts, fallback=cfg.compose.fallback, **enc)
    return BaselineQuery(q, edited, originals, n, gallery, [captions, originals, texts, edited, q, gallery])


def rewrite(store, cfg: BaselineConfig, bench: Artifact, captions: Artifact, pool: ModelPool, progress: bool,
            style: str) -> Artifact:
    """rewrite_caption by the text LLM, in a method's `style` of edit."""
    return rewrite_caption_task(store, bench, captions, cfg.text_llm(), cfg.rewrite.sampling, style=style,
                                prompt=cfg.rewrite.prompt, shard_size=cfg.rewrite.shard_size, mllm=text_llm(pool),
                                progress=progress)


def baseline_group(text_query: Callable[..., BaselineQuery]):
    """The run_group of a text-query baseline: ingest → its text_query → retrieve → evaluate."""

    def run_group(store, cfg: BaselineConfig, group: dict, pool: ModelPool, progress: bool) -> list[Artifact]:
        bench = ingest(store, cfg, group)
        b = text_query(store, cfg, bench, pool, progress)
        return [bench, *b.artifacts, *retrieve_evaluate(store, cfg, bench, b.query, b.gallery)]

    return run_group


__all__ = ["baseline_group", "BaselineConfig", "BaselineQuery", "ReferenceCaptionConfig", "RewriteConfig", "reference_side", "rewrite"]
