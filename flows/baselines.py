"""Training-free baselines on the same stages: CIReVL (caption → LLM rewrite → text→image retrieval) and LDRE
(n divergent captions → one rewrite each → weighted ensemble of the edited-caption features).

    ingest ─► caption_images(references) ─► rewrite_caption ─► embed_texts ─┬─► [ldre_query] ─► retrieve ─► evaluate
       └─► embed_images ─────────────────────────────────────────────────────┘

`baseline_query` is also what IP-CIR builds on: it returns the baseline's text query features plus the
per-slot caption/edit features IP-CIR's semantic perturbation needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from cirflow.flows.pefuse import Models, composed_texts, ingest, run_groups
from cirflow.schemas.config import RunConfig
from cirflow.storage import Artifact
from cirflow.tasks.wrappers import (
    caption_images_task,
    embed_images_task,
    embed_texts_task,
    evaluate_task,
    ldre_query_task,
    retrieve_task,
    rewrite_caption_task,
)
from prefect import flow


@dataclass
class BaselineQuery:
    query: Artifact  # text query features, one per query
    edited: Artifact  # per-slot edited-caption (or composed-text) features, id = query_id, with `sample`
    originals: Artifact  # per-slot reference-caption features, id = image_id, with `sample`
    n: int  # slots
    gallery: Artifact  # gallery image features
    artifacts: list[Artifact]  # every stage of the baseline, for the run summary


def baseline_query(store, cfg: RunConfig, bench: Artifact, models: Models, progress: bool,
                   method: str | None = None) -> BaselineQuery:
    method = method or cfg.method
    enc = dict(encoder=models.encoder, progress=progress, shard_size=cfg.embed.shard_size)
    gallery = embed_images_task(store, bench, cfg.encoder, **enc)
    if method == "ldre":
        n, sampling = cfg.ldre.n_captions, cfg.ldre.caption_sampling
    else:
        n, sampling = 1, cfg.reference_caption.sampling
    captions = caption_images_task(store, bench, cfg.mllm, sampling, which="references", n_samples=n,
                                   prompt=cfg.reference_caption.prompt, shard_size=cfg.reference_caption.shard_size,
                                   mllm=models.mllm, progress=progress)
    originals = embed_texts_task(store, cfg.encoder, bench=bench, texts=captions, kind="image", samples="each", **enc)
    if method == "pefuse":
        # PEFUSE's composed description plays the edited caption (one slot) against the reference caption
        edits = composed_texts(store, cfg, bench, models, progress)
    else:
        edits = rewrite_caption_task(store, bench, captions, cfg.text_llm(), cfg.rewrite.sampling,
                                     style="ldre" if method == "ldre" else "cirevl", prompt=cfg.rewrite.prompt,
                                     shard_size=cfg.rewrite.shard_size, mllm=models.text(), progress=progress)
    edited = embed_texts_task(store, cfg.encoder, bench=bench, texts=edits, samples="each",
                              fallback=cfg.compose.fallback, **enc)
    arts = [captions, originals, edits, edited]
    if method == "ldre":
        query = ldre_query_task(store, bench, edited, originals, gallery, cfg.ldre)
        arts.append(query)
    else:
        query = embed_texts_task(store, cfg.encoder, bench=bench, texts=edits, fallback=cfg.compose.fallback, **enc)
        arts.append(query)
    return BaselineQuery(query, edited, originals, n, gallery, [*arts, gallery])


def run_group(store, cfg: RunConfig, group: dict, models: Models, progress: bool) -> list[Artifact]:
    bench = ingest(store, cfg, group)
    b = baseline_query(store, cfg, bench, models, progress)
    rankings = retrieve_task(store, bench, b.query, b.gallery, k=cfg.retrieve.k, index=cfg.retrieve.index,
                             circo_exclude_reference=cfg.retrieve.circo_exclude_reference)
    return [bench, *b.artifacts, rankings, evaluate_task(store, bench, rankings)]


def _run(config: dict, progress: bool) -> dict:
    return run_groups(RunConfig.model_validate(config), run_group, progress)


@flow(name="cirevl")
def cirevl(config: dict, progress: bool = True) -> dict:
    return _run(config | {"method": "cirevl"}, progress)


@flow(name="ldre")
def ldre(config: dict, progress: bool = True) -> dict:
    return _run(config | {"method": "ldre"}, progress)
