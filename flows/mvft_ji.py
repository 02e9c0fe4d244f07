"""MVFT-JI (mvft-ji.txt): fine-tune a BLIP-2 Q-Former VLM on MLLM-generated data, token-level retrieval, joint
inference.

    [MVFT build: ingest_collection ─► mvft_texts, caption_collection]  or  a Parquet file of rows
        ─► mvft_training_data ─► train_mvft (per seed)
    ingest ─► embed_tokens_images ───────────────────────────────────────────┐
       ├───► embed_tokens_queries(composed) ─────────────────────────────────┤
       └───► compose_target_text ─► embed_tokens_queries(target_text) ───────┴─► joint_fusion (λ) ─► evaluate
                                               (one-term modes: retrieve_tokens ─► evaluate)

`joint.mode` picks the score: "joint" (ŝ + λ·s̃), "composed" / "target_text" (table 4 w/o s̃ / w/o ŝ) and the
appendix C baselines "image_only", "text_only", "image_text" (with `encoder.weights: base`, the untrained
BLIP-2). `seeds: [0, 1, 2]` trains and evaluates once per seed and reports mean ± std over them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cirflow.flows.method import Method
from cirflow.flows.models import ModelPool
from cirflow.flows.runs import ingest, preflight, run_groups
from cirflow.flows.summary import print_summary
from cirflow.schemas.config import RunBase
from cirflow.schemas.mvft import JointConfig, MVFTDataConfig, MVFTEncoderConfig, MVFTTrainSection
from cirflow.schemas.names import Name
from cirflow.schemas.progress import group as progress_group
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.mvft import (embed_tokens_images, embed_tokens_queries, joint_fusion, mvft_training_data,
                                retrieve_tokens)
from cirflow.tasks.training import train_mvft
from cirflow.tasks.wrappers import compose_target_text_task, evaluate_task, stage_task
from cirflow.tasks.lazy_prefect import flow  # Prefect on first real run: `--plan` never imports it

training_data_rows_task = stage_task(mvft_training_data.MVFTTrainingData, mvft_training_data.from_rows)
training_data_build_task = stage_task(mvft_training_data.MVFTTrainingData, mvft_training_data.from_build)
train_mvft_task = stage_task(train_mvft.TrainMVFT, train_mvft.run)
embed_tokens_images_task = stage_task(embed_tokens_images.EmbedTokensImages, embed_tokens_images.run)
embed_tokens_queries_task = stage_task(embed_tokens_queries.EmbedTokensQueries, embed_tokens_queries.run)
retrieve_tokens_task = stage_task(retrieve_tokens.RetrieveTokens, retrieve_tokens.run)
joint_fusion_task = stage_task(joint_fusion.JointFusion, joint_fusion.run)

class MVFTJIConfig(RunBase):
    name: Name = "mvft_ji"
    method: Literal["mvft_ji"] = "mvft_ji"
    encoder: MVFTEncoderConfig  # type: ignore[assignment] - the Q-Former VLM, not an open_clip encoder
    data: MVFTDataConfig | None = None  # training rows; needed when encoder.weights is "trained"
    train: MVFTTrainSection = Field(default_factory=MVFTTrainSection)
    joint: JointConfig = Field(default_factory=JointConfig)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # one training + evaluation per seed

    @model_validator(mode="after")
    def _data_when_training(self):
        if self.encoder.weights == "trained" and self.data is None:
            raise ValueError("encoder.weights 'trained' needs a `data` section (an MVFT build or a rows file)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds repeat: {self.seeds}")
        return self

    @property
    def trains(self) -> bool:
        return self.encoder.weights == "trained"


# ------------------------------------------------------------------------------------------------ stages


def training_data(store: ArtifactStore, cfg: MVFTJIConfig, pool: ModelPool, progress: bool) -> list[Artifact]:
    """The training-rows artifact, last; first the MVFT build's artifacts when the rows come from a build (each
    served from the store when it is there: `cirflow build mvft` and this flow share them)."""
    d = cfg.data
    if d.rows is not None:
        return [training_data_rows_task(store, d.rows, progress=progress)]
    from cirflow.models.mllm.cache import CachedMLLM
    from cirflow.tasks.wrappers import caption_collection_task, ingest_collection_task, mvft_texts_task

    b = d.build
    mllm_cfg = b.mllm or cfg.mllm
    root = b.cache or cfg.store.rstrip("/") + "/_llm_cache"
    mllm = CachedMLLM(pool.add_mllm("build_mllm", mllm_cfg), root, mllm_cfg.key_fields(), cfg.storage_options)
    coll = ingest_collection_task(store, b.collection, shard_size=b.check_shard_size, progress=progress)
    texts = mvft_texts_task(store, coll, mllm_cfg, b.texts, cache_root=root, mllm=mllm, progress=progress)
    caps = caption_collection_task(store, coll, mllm_cfg, b.captions, build="mvft", cache_root=root, mllm=mllm,
                                   progress=progress)
    pool.release("build_mllm")
    return [coll, texts, caps, training_data_build_task(store, coll, texts, caps, progress=progress)]


def encoder_folder(store: ArtifactStore, cfg: MVFTJIConfig, pool: ModelPool, seed: int, progress: bool
                   ) -> tuple[str, list[Artifact]]:
    """(model folder, artifacts that made it): the base folder, a stored trained model by reference, or this
    run's training for `seed`."""
    w = cfg.encoder.weights
    if w == "base":
        return cfg.encoder.base, []
    from cirflow.tasks.training import resolve_model_ref

    if w != "trained":
        return str(resolve_model_ref(store, w)), []
    data = training_data(store, cfg, pool, progress)
    model = train_mvft_task(store, data[-1], cfg.encoder.base, cfg.train, seed=seed, progress=progress)
    from cirflow.tasks.plan_mode import PlanBlocked, Planned

    if isinstance(model, Planned):  # `--plan` / the store shortcut: the features' keys need the trained weights
        raise PlanBlocked(f"train_mvft/{model.key[:12]} would be {model.status} first: the token features are "
                          "keyed on the trained weights, so what follows can only be planned after it ran")
    return str(resolve_model_ref(store, f"key:{model.key}")), [*data, model]


def run_group(store: ArtifactStore, cfg: MVFTJIConfig, group: dict, pool: ModelPool, progress: bool,
              folder: str, made: list[Artifact]) -> list[Artifact]:
    from cirflow.flows.gpu import uses_gpu
    from cirflow.retrieval.joint import required_features

    bench = ingest(store, cfg, group)
    enc, trained = cfg.encoder, cfg.encoder.weights != "base"
    ident = train_mvft.base_identity(folder)
    handle = pool.add("mvft", lambda: embed_tokens_images.load_encoder(
        embed_tokens_images.TokenRuntime(model_dir=folder, device=enc.device)), gpu=lambda: uses_gpu(enc), key=ident)
    common = dict(precision=enc.precision, device=enc.device, batch_size=enc.batch_size,
                  shard_size=cfg.embed.shard_size, encoder=handle, progress=progress)
    images = embed_tokens_images_task(store, bench, folder, ident, **common)
    feats, arts = {}, []
    for name in required_features(cfg.joint.mode):
        texts = None
        if name == "target_text":
            texts = compose_target_text_task(store, bench, cfg.mllm, cfg.compose.sampling, prompt=cfg.compose.prompt,
                                              shard_size=cfg.compose.shard_size, mllm=pool["mllm"], progress=progress)
            arts.append(texts)
        feats[name] = embed_tokens_queries_task(store, bench, folder, ident, name, texts=texts,
                                                tokens=enc.tokens_for(trained), fallback=cfg.compose.fallback,
                                                **common)
    r = cfg.retrieve
    if cfg.joint.mode == "joint":
        rankings = joint_fusion_task(store, bench, images, feats["composed"], feats["target_text"], lam=cfg.joint.lam,
                                     k=r.k, circo_exclude_reference=r.circo_exclude_reference)
    else:
        rankings = retrieve_tokens_task(store, bench, images, feats, cfg.joint.mode, k=r.k,
                                        circo_exclude_reference=r.circo_exclude_reference)
    return [bench, *made, images, *arts, *feats.values(), rankings, evaluate_task(store, bench, rankings)]


def add_slots(pool: ModelPool, cfg: MVFTJIConfig) -> ModelPool:
    pool.add_mllm("mllm", cfg.mllm)  # loads only if a stage really asks it (compose, build)
    return pool


# ------------------------------------------------------------------------------------------------ flow


def run_seed(cfg: MVFTJIConfig, seed: int, progress: bool) -> dict:
    store = ArtifactStore(cfg.store, cfg.storage_options)
    state: dict = {}

    def group(store_, cfg_, grp, pool, progress_):
        if "folder" not in state:  # train once per seed, before the first group
            state["folder"], state["made"] = encoder_folder(store_, cfg_, pool, seed, progress_)
        return run_group(store_, cfg_, grp, pool, progress_, state["folder"], state["made"])

    return run_groups(cfg, group, progress, add_slots=add_slots)


@flow(name="mvft_ji")
def mvft_ji(config: dict, progress: bool = True) -> dict:
    from cirflow.training.seeds import seeds_summary

    cfg = MVFTJIConfig.model_validate(config | {"method": "mvft_ji"})
    seeds = cfg.seeds if cfg.trains else cfg.seeds[:1]  # no training: every seed would evaluate the same model
    docs = {}
    for seed in seeds:
        named = cfg.model_copy(update={"name": f"{cfg.name}-seed{seed}" if len(seeds) > 1 else cfg.name})
        with progress_group(f"seed {seed}" if len(seeds) > 1 else ""):  # "seed 1 · cirr · train_mvft"
            docs[seed] = run_seed(named, seed, progress)
    doc = dict(docs[seeds[0]])
    if len(seeds) > 1:
        doc["seeds"] = {"seeds": seeds, "metrics": seeds_summary({s: d["metrics"] for s, d in docs.items()}),
                        "runs": {s: d["output_dir"] for s, d in docs.items()}}
        doc["stages"] = [st for d in docs.values() for st in d["stages"]]
    doc["mvft"] = {"mode": cfg.joint.mode, "lam": cfg.joint.lam, "weights": cfg.encoder.weights}
    return doc


def mvft_preflight(cfg: MVFTJIConfig, source: str) -> None:
    templates = [("compose_target_text", cfg.compose.prompt)] if cfg.joint.mode in ("joint", "target_text") else []
    preflight(cfg, source, templates)
    from cirflow.schemas.errors import ConfigError

    base = Path(cfg.encoder.base)
    if not (base / "config.json").is_file():
        raise ConfigError(f"{source}: encoder.base {base} is not a BLIP-2 model folder (no config.json)")
    if cfg.trains and cfg.data.rows is not None and not Path(cfg.data.rows).is_file():
        raise ConfigError(f"{source}: data.rows {cfg.data.rows} does not exist")


def print_report(doc: dict, as_json: bool) -> None:
    print_summary(doc, as_json)
    if as_json or "seeds" not in doc:
        return
    print(f"\nmean ± std over seeds {doc['seeds']['seeds']}\n")
    for name, s in doc["seeds"]["metrics"].items():
        print(f"{name:<20} {s['mean']:8.2f} ± {s['std']:.2f}")


MVFT_JI = Method("mvft_ji", MVFTJIConfig, mvft_ji, mvft_preflight, print_report)

__all__ = ["MVFT_JI", "MVFTJIConfig", "mvft_ji", "run_group"]
