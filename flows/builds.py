"""Training-data builds from an unlabeled image collection (issue 5): MTCIR- (CoLLM), InstructCIR- and
MVFT-JI-style. Each flow only wires stages:

    mtcir:        ingest_collection ─► embed_images ─► pair_groups ─┐
                         └──────────► caption_collection ───────────┴─► mtcir_texts ─► release
    instructcir:  ingest_collection ─► random_pairs ─┐
                         └──────────► caption_collection ─┴─► instructcir_texts ─► release
    mvft:         ingest_collection ─► mvft_texts ──────────┐
                         └──────────► caption_collection ───┴─► release

Every LLM/MLLM request goes through one CachedMLLM per model (cache root `cache`, default <store>/_llm_cache),
so a rebuild after the collection grew pays only for requests about new images or new pairs. Models load
lazily: a build whose requests are all cached loads none.
"""

from __future__ import annotations

from contextlib import ExitStack

from cirflow.models.encoder import OpenClipEncoder
from cirflow.models.mllm.cache import CachedMLLM
from cirflow.models.mllm.factory import load_mllm
from cirflow.schemas.builds import (
    InstructCIRBuildConfig,
    MTCIRBuildConfig,
    MVFTBuildConfig,
)
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.wrappers import (
    caption_collection_task,
    embed_images_task,
    ingest_collection_task,
    instructcir_texts_task,
    mtcir_texts_task,
    mvft_texts_task,
    pair_groups_task,
    random_pairs_task,
    release_task,
)
from prefect import flow


def _models(stack: ExitStack, cfg) -> tuple[CachedMLLM, CachedMLLM]:
    """(captioning MLLM, text LLM), each cached; the same object when no separate text LLM is configured."""
    root = cfg.cache_root()
    mllm = stack.enter_context(CachedMLLM(stack.enter_context(Lazy(lambda: load_mllm(cfg.mllm))), root,
                                          cfg.mllm.key_fields(), cfg.storage_options))
    if cfg.llm is None:
        return mllm, mllm
    llm = stack.enter_context(CachedMLLM(stack.enter_context(Lazy(lambda: load_mllm(cfg.llm))), root,
                                         cfg.llm.key_fields(), cfg.storage_options))
    return mllm, llm


def _summary(cfg, arts: dict[str, Artifact], models: list[CachedMLLM], release_dir: str | None) -> dict:
    seen, cache = set(), {"hits": 0, "misses": 0, "stored": 0}
    for m in models:
        if id(m) not in seen:
            seen.add(id(m))
            for k, v in m.stats().items():
                cache[k] += v
    return {"name": cfg.name, "store": cfg.store,
            "stages": [{**a.report.as_dict(), "label": name} for name, a in arts.items() if a.report is not None],
            "artifacts": {name: a.key for name, a in arts.items()}, "llm_cache": cache, "release": release_dir}


def _release(build: str, cfg, arts: dict[str, Artifact], params: dict) -> str | None:
    if cfg.release is None:
        return None
    models = {"mllm": cfg.mllm.key_fields(), "llm": cfg.text_llm().key_fields()}
    if getattr(cfg, "encoder", None) is not None:
        models["encoder"] = cfg.encoder.key_fields()
    return release_task(build, arts, cfg.release, models=models, params=params)


@flow(name="build-mtcir")
def build_mtcir(config: dict, progress: bool = True) -> dict:
    cfg = MTCIRBuildConfig.model_validate(config)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    with ExitStack() as stack:
        mllm, llm = _models(stack, cfg)
        encoder = stack.enter_context(Lazy(lambda: OpenClipEncoder(cfg.encoder)))
        coll = ingest_collection_task(store, cfg.collection, shard_size=cfg.check_shard_size, progress=progress)
        emb = embed_images_task(store, coll, cfg.encoder, shard_size=cfg.embed_shard_size, encoder=encoder,
                                progress=progress)
        pairs = pair_groups_task(store, coll, emb, cfg.pairing)
        caps = caption_collection_task(store, coll, cfg.mllm, cfg.captions, build="mtcir", cache_root=cfg.cache_root(),
                                       mllm=mllm, progress=progress)
        texts = mtcir_texts_task(store, pairs, caps, cfg.text_llm(), cfg.texts, cache_root=cfg.cache_root(), mllm=llm,
                                 progress=progress)
        arts = {"collection": coll, "embeddings": emb, "pairs": pairs, "captions": caps, "texts": texts}
        rel = _release("mtcir", cfg, arts, {"pairing": cfg.pairing.model_dump(), "texts": cfg.texts.model_dump()})
        return _summary(cfg, arts, [mllm, llm], rel)


@flow(name="build-instructcir")
def build_instructcir(config: dict, progress: bool = True) -> dict:
    cfg = InstructCIRBuildConfig.model_validate(config)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    with ExitStack() as stack:
        mllm, llm = _models(stack, cfg)
        coll = ingest_collection_task(store, cfg.collection, shard_size=cfg.check_shard_size, progress=progress)
        pairs = random_pairs_task(store, coll, cfg.pairing)
        caps = caption_collection_task(store, coll, cfg.mllm, cfg.captions, build="instructcir",
                                       cache_root=cfg.cache_root(), mllm=mllm, progress=progress)
        texts = instructcir_texts_task(store, pairs, caps, cfg.text_llm(), cfg.texts, cache_root=cfg.cache_root(),
                                       mllm=llm, progress=progress)
        arts = {"collection": coll, "pairs": pairs, "captions": caps, "texts": texts}
        rel = _release("instructcir", cfg, arts, {"pairing": cfg.pairing.model_dump(), "texts": cfg.texts.model_dump()})
        return _summary(cfg, arts, [mllm, llm], rel)


@flow(name="build-mvft")
def build_mvft(config: dict, progress: bool = True) -> dict:
    cfg = MVFTBuildConfig.model_validate(config)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    with ExitStack() as stack:
        mllm, _ = _models(stack, cfg)
        coll = ingest_collection_task(store, cfg.collection, shard_size=cfg.check_shard_size, progress=progress)
        texts = mvft_texts_task(store, coll, cfg.mllm, cfg.texts, cache_root=cfg.cache_root(), mllm=mllm,
                                progress=progress)
        caps = caption_collection_task(store, coll, cfg.mllm, cfg.captions, build="mvft", cache_root=cfg.cache_root(),
                                       mllm=mllm, progress=progress)
        arts = {"collection": coll, "texts": texts, "captions": caps}
        rel = _release("mvft", cfg, arts, {"texts": cfg.texts.model_dump()})
        return _summary(cfg, arts, [mllm], rel)


BUILD_FLOWS = {"build_mtcir": build_mtcir, "build_instructcir": build_instructcir, "build_mvft": build_mvft}
