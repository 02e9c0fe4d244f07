"""Training-data builds from an unlabeled image collection (issue 5): MTCIR- (CoLLM), InstructCIR- and
MVFT-JI-style. Each flow only wires stages:

    mtcir:        ingest_collection ─► embed_images ─► pair_groups ─┐
                         └──────────► caption_collection ───────────┴─► mtcir_texts ─► release
    instructcir:  ingest_collection ─► random_pairs ─┐
                         └──────────► caption_collection ─┴─► instructcir_texts ─► release
    mvft:         ingest_collection ─► mvft_texts ──────────┐
                         └──────────► caption_collection ───┴─► release

Every LLM/MLLM request goes through one CachedMLLM per model (cache root `cache`, default <store>/_llm_cache),
so a rebuild after the collection grew pays only for requests about new images or new pairs. Models come from
the flow's ModelPool: loaded lazily (a build whose requests are all cached loads none), through the GPU gate,
and released as soon as no later stage of the build needs them.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Literal

from pydantic import Field

from cirflow.flows.method import Method, basic_preflight
from cirflow.flows.models import ModelPool
from cirflow.models.mllm.cache import CachedMLLM
from cirflow.schemas.base import Strict
from cirflow.schemas.builds import (
    CaptionConfig,
    CollectionSource,
    InstructCIRTextConfig,
    MTCIRTextConfig,
    MVFTTextConfig,
    PairingConfig,
    RandomPairingConfig,
    ReleaseConfig,
)
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.mllm import MLLMConfig
from cirflow.schemas.names import Name
from cirflow.schemas.paths import LocalPath
from cirflow.schemas.progress import group as progress_group
from cirflow.storage import Artifact, ArtifactStore
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
from cirflow.tasks.lazy_prefect import flow  # Prefect on first real run: `--plan` never imports it


# ------------------------------------------------------------------------------------------------ configs


class _BuildBase(Strict):
    name: Name = "build"
    store: LocalPath
    storage_options: dict = Field(default_factory=dict)
    cache: LocalPath | None = None  # LLM answer cache root; default <store>/_llm_cache
    collection: CollectionSource
    mllm: MLLMConfig  # captions (and, unless `llm` is set, the text-only requests)
    llm: MLLMConfig | None = None  # text-only model for modification / reformulation texts
    check_shard_size: int = Field(256, ge=1)
    gpu_limit: str | None = None  # Prefect global concurrency limit gating local GPU model loads (flows/gpu.py)
    release: ReleaseConfig | None = None
    output_dir: LocalPath = ".cirflow/runs"  # the build's run folder: summary.json, report.html (as RunBase's)
    # failed captions / texts are data a build filters out (default 1.0: it never stops for them); below 1.0 the
    # share of failed items above which a captioning or text stage stops the build (exit 3, run folder written)
    max_failure_rate: float = Field(1.0, ge=0.0, le=1.0)

    def cache_root(self) -> str:
        return self.cache or self.store.rstrip("/") + "/_llm_cache"

    def text_llm(self) -> MLLMConfig:
        return self.llm or self.mllm


class MTCIRBuildConfig(_BuildBase):
    method: Literal["build_mtcir"] = "build_mtcir"  # lets `cirflow deploy` pick the flow
    encoder: EncoderConfig
    embed_shard_size: int = Field(4096, ge=1)
    pairing: PairingConfig = PairingConfig()
    captions: CaptionConfig = CaptionConfig()
    texts: MTCIRTextConfig = MTCIRTextConfig()


class InstructCIRBuildConfig(_BuildBase):
    method: Literal["build_instructcir"] = "build_instructcir"  # lets `cirflow deploy` pick the flow
    pairing: RandomPairingConfig = RandomPairingConfig()
    captions: CaptionConfig = CaptionConfig()
    texts: InstructCIRTextConfig = InstructCIRTextConfig()


class MVFTBuildConfig(_BuildBase):
    method: Literal["build_mvft"] = "build_mvft"  # lets `cirflow deploy` pick the flow
    captions: CaptionConfig = CaptionConfig()
    texts: MVFTTextConfig = MVFTTextConfig()


# ------------------------------------------------------------------------------------------------ flows


def _models(pool: ModelPool, cfg) -> tuple[CachedMLLM, CachedMLLM]:
    """(captioning MLLM, text LLM) from the pool, each behind the answer cache; the same object when no separate
    text LLM is configured."""
    root = cfg.cache_root()
    mllm = CachedMLLM(pool.add_mllm("mllm", cfg.mllm), root, cfg.mllm.key_fields(), cfg.storage_options)
    if cfg.llm is None:
        return mllm, mllm
    llm = CachedMLLM(pool.add_mllm("llm", cfg.llm), root, cfg.llm.key_fields(), cfg.storage_options)
    return mllm, llm


@contextmanager
def _folder_on_failure(cfg):
    """A build stopped by a stage over its failure threshold (StageFailed, exit 3) still writes its run folder:
    what it committed, and the failed stage's rows with their reasons (report.html); the error is raised again."""
    from cirflow.tasks.stage import StageFailed, record_artifacts

    with record_artifacts() as done:
        try:
            yield
        except StageFailed as e:
            from cirflow.flows.summary import failed_stage

            arts = {a.stage: a for a in done}  # labelled by stage: the build's own names come with its return
            doc = _summary(cfg, arts, [], None, failed=failed_stage(cfg.name, e))
            e.run_folder = doc.get("output_dir", "")
            raise


def _summary(cfg, arts: dict[str, Artifact], models: list[CachedMLLM], release_dir: str | None,
             failed: dict | None = None) -> dict:
    seen, cache = set(), {"hits": 0, "misses": 0, "stored": 0}
    for m in models:
        if id(m) not in seen:
            seen.add(id(m))
            for k, v in m.stats().items():
                cache[k] += v
    doc = {"name": cfg.name, "store": cfg.store,
           "stages": [{**a.report.as_dict(), "label": name} for name, a in arts.items() if a.report is not None],
           "artifacts": {name: a.key for name, a in arts.items()}, "llm_cache": cache, "release": release_dir}
    if failed is not None:  # summary.json `status: failed`, the failed stage in the stage table (flows/summary.py)
        from cirflow.flows.summary import mark_failed

        mark_failed(doc, {**failed, "report": {**failed["report"], "label": failed["stage"]}})
    from cirflow.tasks import plan_mode

    if plan_mode.active() is not None:  # `--plan` writes nothing (nor imports the report's modules)
        return doc
    from cirflow.flows.report_html.build import publish_build

    # the run folder (summary.json naming every key: `store gc` keeps them; report.html), as benchmark runs write
    return publish_build(cfg, doc)


def _release(build: str, cfg, arts: dict[str, Artifact], params: dict) -> str | None:
    from cirflow.tasks import plan_mode

    if cfg.release is None or plan_mode.active() is not None:  # `--plan` exports nothing
        return None
    models = {"mllm": cfg.mllm.key_fields(), "llm": cfg.text_llm().key_fields()}
    if getattr(cfg, "encoder", None) is not None:
        models["encoder"] = cfg.encoder.key_fields()
    return release_task(build, arts, cfg.release, models=models, params=params)


@flow(name="build-mtcir")
def build_mtcir(config: dict, progress: bool = True) -> dict:
    cfg = MTCIRBuildConfig.model_validate(config)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    # the build's name on its stage lines; a stage over its failure threshold still writes the run folder
    with ModelPool(cfg.gpu_limit) as pool, progress_group(cfg.name), _folder_on_failure(cfg):
        mllm, llm = _models(pool, cfg)
        encoder = pool.add_encoder("encoder", cfg.encoder)
        coll = ingest_collection_task(store, cfg.collection, shard_size=cfg.check_shard_size, progress=progress)
        emb = embed_images_task(store, coll, cfg.encoder, shard_size=cfg.embed_shard_size, encoder=encoder,
                                progress=progress)
        pool.release("encoder")  # only embed_images needs it
        pairs = pair_groups_task(store, coll, emb, cfg.pairing)
        caps = caption_collection_task(store, coll, cfg.mllm, cfg.captions, build="mtcir", cache_root=cfg.cache_root(),
                                       mllm=mllm, progress=progress, max_failure_rate=cfg.max_failure_rate)
        if llm is not mllm:
            pool.release("mllm")  # the texts go to the separate text LLM
        texts = mtcir_texts_task(store, pairs, caps, cfg.text_llm(), cfg.texts, cache_root=cfg.cache_root(), mllm=llm,
                                 progress=progress, max_failure_rate=cfg.max_failure_rate)
        arts = {"collection": coll, "embeddings": emb, "pairs": pairs, "captions": caps, "texts": texts}
        rel = _release("mtcir", cfg, arts, {"pairing": cfg.pairing.model_dump(), "texts": cfg.texts.model_dump()})
        return _summary(cfg, arts, [mllm, llm], rel)


@flow(name="build-instructcir")
def build_instructcir(config: dict, progress: bool = True) -> dict:
    cfg = InstructCIRBuildConfig.model_validate(config)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    # the build's name on its stage lines; a stage over its failure threshold still writes the run folder
    with ModelPool(cfg.gpu_limit) as pool, progress_group(cfg.name), _folder_on_failure(cfg):
        mllm, llm = _models(pool, cfg)
        coll = ingest_collection_task(store, cfg.collection, shard_size=cfg.check_shard_size, progress=progress)
        pairs = random_pairs_task(store, coll, cfg.pairing)
        caps = caption_collection_task(store, coll, cfg.mllm, cfg.captions, build="instructcir",
                                       cache_root=cfg.cache_root(), mllm=mllm, progress=progress,
                                       max_failure_rate=cfg.max_failure_rate)
        if llm is not mllm:
            pool.release("mllm")  # the texts go to the separate text LLM
        texts = instructcir_texts_task(store, pairs, caps, cfg.text_llm(), cfg.texts, cache_root=cfg.cache_root(),
                                       mllm=llm, progress=progress, max_failure_rate=cfg.max_failure_rate)
        arts = {"collection": coll, "pairs": pairs, "captions": caps, "texts": texts}
        rel = _release("instructcir", cfg, arts, {"pairing": cfg.pairing.model_dump(), "texts": cfg.texts.model_dump()})
        return _summary(cfg, arts, [mllm, llm], rel)


@flow(name="build-mvft")
def build_mvft(config: dict, progress: bool = True) -> dict:
    cfg = MVFTBuildConfig.model_validate(config)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    # the build's name on its stage lines; a stage over its failure threshold still writes the run folder
    with ModelPool(cfg.gpu_limit) as pool, progress_group(cfg.name), _folder_on_failure(cfg):
        mllm, _ = _models(pool, cfg)
        coll = ingest_collection_task(store, cfg.collection, shard_size=cfg.check_shard_size, progress=progress)
        texts = mvft_texts_task(store, coll, cfg.mllm, cfg.texts, cache_root=cfg.cache_root(), mllm=mllm,
                                progress=progress, max_failure_rate=cfg.max_failure_rate)
        caps = caption_collection_task(store, coll, cfg.mllm, cfg.captions, build="mvft", cache_root=cfg.cache_root(),
                                       mllm=mllm, progress=progress, max_failure_rate=cfg.max_failure_rate)
        arts = {"collection": coll, "texts": texts, "captions": caps}
        rel = _release("mvft", cfg, arts, {"texts": cfg.texts.model_dump()})
        return _summary(cfg, arts, [mllm], rel)


def print_build(doc: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
        return
    print(f"{'stage':<22} {'status':<9} {'ok':>5} {'failed':>6}  key")
    for s in doc.get("stages", []):
        st = s.get("stats") or {}  # ok / failed: stages with per-item status (blank for the others)
        print(f"{s.get('stage', ''):<22} {s.get('status', ''):<9} {st.get('ok', ''):>5} {st.get('failed', ''):>6}  "
              f"{str(s.get('key', ''))[:12]}")
    if doc.get("release"):
        print(f"release: {doc['release']}")
    if doc.get("output_dir"):
        print(f"run folder: {doc['output_dir']} (report.html)")
    if doc.get("llm_cache"):  # human-readable, not a Python dict (--json has the dict)
        print("llm cache: " + ", ".join(f"{v} {k}" for k, v in doc["llm_cache"].items()))


MTCIR = Method("build_mtcir", MTCIRBuildConfig, build_mtcir, basic_preflight, print_build)
INSTRUCTCIR = Method("build_instructcir", InstructCIRBuildConfig, build_instructcir, basic_preflight, print_build)
MVFT = Method("build_mvft", MVFTBuildConfig, build_mvft, basic_preflight, print_build)
