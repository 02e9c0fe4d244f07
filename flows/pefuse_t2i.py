"""PEFUSE text→image (pefuse.txt §3): an MLLM composes a target description from the reference image and the
modification; an encoder retrieves gallery images with it.

    ingest ─► compose_target_text ─► embed_texts ─┐
       └───────────────────────────► embed_images ─┴─► retrieve ─► evaluate

Fashion-IQ categories and GeneCIS tasks run as groups of one run and are averaged, as the benchmarks report.
"""

from __future__ import annotations

from prefect import flow

from cirflow.flows.summary import RunSummary, publish
from cirflow.models.encoder import OpenClipEncoder
from cirflow.models.mllm.factory import load_mllm
from cirflow.schemas.config import RunConfig
from cirflow.storage import ArtifactStore
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.wrappers import (compose_target_text_task, embed_images_task, embed_texts_task, evaluate_task,
                                    ingest_task, retrieve_task)


@flow(name="pefuse-t2i")
def pefuse_t2i(config: dict, progress: bool = True) -> dict:
    cfg = RunConfig.model_validate(config)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    summary = RunSummary.start(cfg)
    # one model handle per flow: loaded on first use, shared by every group, never loaded if all is cached
    with Lazy(lambda: load_mllm(cfg.mllm)) as mllm, Lazy(lambda: OpenClipEncoder(cfg.encoder)) as encoder:
        for group in cfg.benchmark.groups():
            label = "/".join(group.values()) or cfg.benchmark.name
            b = cfg.benchmark
            bench = ingest_task(store, b.name, b.data_root, split=b.split, image_root=b.image_root,
                                fiq_join=b.fiq_join, check_images=b.check_images, **group)
            texts = compose_target_text_task(store, bench, cfg.mllm, cfg.compose.sampling, prompt=cfg.compose.prompt,
                                             shard_size=cfg.compose.shard_size, mllm=mllm, progress=progress)
            query_emb = embed_texts_task(store, cfg.encoder, bench=bench, texts=texts, fallback=cfg.compose.fallback,
                                         shard_size=cfg.embed.shard_size, encoder=encoder, progress=progress)
            image_emb = embed_images_task(store, bench, cfg.encoder, shard_size=cfg.embed.shard_size,
                                          encoder=encoder, progress=progress)
            rankings = retrieve_task(store, bench, query_emb, image_emb, k=cfg.retrieve.k, index=cfg.retrieve.index,
                                     circo_exclude_reference=cfg.retrieve.circo_exclude_reference)
            result = evaluate_task(store, bench, rankings)
            summary.add_group(label, [bench, texts, query_emb, image_emb, rankings, result])
    return publish(summary, store)
