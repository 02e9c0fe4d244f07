"""CoLLM (collm.txt §3, supp. 7, 9): an LLM embedder trained on triplets synthesized from image–caption pairs,
optionally fine-tuned on the MTCIR build, evaluated as a CIR encoder.

    [image–caption pairs: a user's Parquet / folder (ingest_collection) or a stored collection (+ captions)]
        ─► train_collm (§3.2: Slerp α, template ratio, nearest neighbour; 3 InfoNCE terms)
    [stored MTCIR build: mtcir_texts + its collection] ─► train_collm_triplets (§3.3 / supp. 9.2; optional)
    ingest ─► embed_collm_gallery ─────────────────┐
       └───► embed_collm_queries (composed) ───────┴─► retrieve ─► evaluate

Ablations (fig. 7 α / template ratio, table 6c nearest vs random, table 7 LLM backbone) are `variants`: dotted
fields of this config (`pretrain.loss.alpha`, `pretrain.loss.neighbour`, `model.llm`) whose training keys differ;
ingest and everything a variant shares come from the store; `cirflow compare` takes this config as `base:` and its
variants as one comparison table (examples/compare_collm_*.yaml, `compare_groups`). `model.vision_tower: blip` makes
f a transformers BLIP ViT (supp. 9.1). `encoder.weights: key:<prefix>` evaluates a stored
trained CoLLM without training (e.g. on the refined benchmarks `method: refine` writes).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from cirflow.flows.method import Method
from cirflow.flows.runs import preflight
from cirflow.flows.trained_runs import (TrainedEncoderConfig, TrainedRunBase, check_ref, print_report,
                                        run_trained, run_variants, section_errors, stored, trained_groups,
                                        upstream)
from cirflow.schemas.base import Strict
from cirflow.schemas.builds import CollectionSource
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.collm import CoLLMSettings  # not models.collm.model: no torch at `--plan`
from cirflow.schemas.names import Name
from cirflow.schemas.paths import LOCAL_DIR, LocalPath, ModelPath, PathField, looks_like_path
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.collm import embed_collm_gallery, embed_collm_queries
from cirflow.tasks.stage import execute
from cirflow.tasks.training import TrainRuntime, find_trained
from cirflow.tasks.training.train_collm import (TrainCoLLM, TrainCoLLMTriplets, collm_params, collm_train_config,
                                                finetune_settings)
from cirflow.tasks.wrappers import ingest_collection_task, stage_task
from cirflow.tasks.lazy_prefect import flow  # Prefect on first real run: `--plan` never imports it


def _tower_path(value: str) -> bool:
    """A vision_model that is a folder (a BLIP checkpoint): open_clip names have no "/", hub ids and "local-dir:"
    a colon."""
    return looks_like_path(value) or ("/" in value and ":" not in value)


class CoLLMModelSection(CoLLMSettings):
    """CoLLMSettings with its paths marked (deploy makes them absolute); only values that differ from the
    defaults enter the training key (`settings()`), so spelling a default out changes nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # an open_clip name / "local-dir:<folder>", or (vision_tower: blip) a BLIP checkpoint folder
    vision_model: Annotated[str, PathField(prefix=LOCAL_DIR), PathField(when=_tower_path)]
    vision_pretrained: ModelPath | None = None
    llm: LocalPath

    def settings(self) -> dict:
        return self.model_dump(mode="json", exclude_defaults=True)


class CoLLMEncoderConfig(TrainedEncoderConfig):
    # the query layout embedded (eqs. 3–5): the CIR query is "composed"; "text" / "image" are the one-modality
    # queries of table 6b's analysis
    query: Literal["composed", "text", "image"] = "composed"


class PretrainSection(Strict):
    """§3.2 pre-training on image–caption pairs (supp. 9.1: 1 epoch, constant lr 1e-4, batch 1024)."""

    # a user's image–caption Parquet / folder (ingested here), or a stored ingest_collection artifact
    collection: CollectionSource | str
    captions: str | None = None  # a stored caption artifact (e.g. the MTCIR build's captions); None: the collection's
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields over collm_train_config()
    loss: dict[str, Any] = Field(default_factory=dict)  # PretrainSettings: alpha, text_ratio, neighbour, ...
    limit: int | None = Field(None, ge=1)  # a prefix of the pairs
    check_shard_size: int = Field(256, ge=1)

    @field_validator("collection")
    @classmethod
    def _collection(cls, v):
        return check_ref(v, "pretrain.collection") if isinstance(v, str) else v

    @field_validator("captions")
    @classmethod
    def _captions(cls, v):
        return check_ref(v, "pretrain.captions")


class FinetuneSection(Strict):
    """§3.3 / supp. 9.2 fine-tuning on the stored MTCIR build (LoRA rank = alpha = 16, the LLM only)."""

    texts: str = "stage:mtcir_texts"  # the build's mtcir_texts artifact
    collection: str | None = None  # default: the collection the texts were built from
    train: dict[str, Any] = Field(default_factory=dict)
    loss: dict[str, Any] = Field(default_factory=dict)  # ContrastiveSettings
    settings: dict[str, Any] = Field(default_factory=dict)  # CoLLMSettings over finetune_settings(model)
    limit: int | None = Field(None, ge=1)

    @field_validator("texts", "collection")
    @classmethod
    def _refs(cls, v):
        return check_ref(v, "finetune")


class CoLLMConfig(TrainedRunBase):
    name: Name = "collm"
    method: Literal["collm"] = "collm"
    encoder: CoLLMEncoderConfig = Field(default_factory=CoLLMEncoderConfig)  # type: ignore[assignment]
    model: CoLLMModelSection | None = None  # f, Φ and LoRA; needed when encoder.weights is "trained"
    pretrain: PretrainSection | None = None
    finetune: FinetuneSection | None = None

    @model_validator(mode="after")
    def _check(self):
        from cirflow.schemas.collm import ContrastiveSettings, PretrainSettings

        trains = self.encoder.weights == "trained"
        if trains and (self.model is None or (self.pretrain is None and self.finetune is None)):
            raise ValueError("encoder.weights 'trained' needs a `model` section and a `pretrain` and/or `finetune` one")
        with section_errors():
            if self.pretrain is not None:
                collm_train_config(**self.pretrain.train)
                PretrainSettings(**self.pretrain.loss)
            if self.finetune is not None and self.encoder.weights == "trained":
                collm_train_config(**self.finetune.train)
                ContrastiveSettings(**self.finetune.loss)
                CoLLMSettings(**{**finetune_settings(self.model.settings()), **self.finetune.settings})
        return self


def _train(stage, store, inputs: dict, params, progress: bool) -> Artifact:
    return execute(stage, store, inputs, params, TrainRuntime(progress=progress))


def _train_collm(store, collection, captions, params, progress: bool = True) -> Artifact:
    return _train(TrainCoLLM, store, {"collection": collection, "captions": captions}, params, progress)


def _train_triplets(store, texts, collection, init, params, progress: bool = True) -> Artifact:
    return _train(TrainCoLLMTriplets, store, {"texts": texts, "collection": collection, "init": init}, params,
                  progress)


train_collm_task = stage_task(TrainCoLLM, _train_collm)
train_collm_triplets_task = stage_task(TrainCoLLMTriplets, _train_triplets)
embed_collm_gallery_task = stage_task(embed_collm_gallery.EmbedCoLLMGallery, embed_collm_gallery.run)
embed_collm_queries_task = stage_task(embed_collm_queries.EmbedCoLLMQueries, embed_collm_queries.run)


def trained_model(store: ArtifactStore, cfg: CoLLMConfig, progress: bool) -> tuple[Artifact, list[Artifact]]:
    """(the trained model's artifact, the artifacts this run made for it): a stored model by reference, or the
    pre-training and / or fine-tuning this config describes."""
    if cfg.encoder.weights != "trained":
        try:
            return find_trained(store, cfg.encoder.weights), []
        except Exception as e:  # noqa: BLE001 - a wrong reference is the user's: one line
            raise ConfigError(f"encoder.weights: {str(e).splitlines()[0]}") from None
    made: list[Artifact] = []
    model = init = None
    if (p := cfg.pretrain) is not None:
        if isinstance(p.collection, str):
            coll = stored(store, p.collection, "pretrain.collection")
        else:
            coll = ingest_collection_task(store, p.collection, shard_size=p.check_shard_size, progress=progress)
            made.append(coll)
        caps = stored(store, p.captions, "pretrain.captions") if p.captions else None
        params = collm_params(cfg.model.settings(), collm_train_config(**p.train), loss=p.loss, limit=p.limit)
        model = init = train_collm_task(store, coll, caps, params, progress=progress)
        made.append(model)
    if (f := cfg.finetune) is not None:
        texts = stored(store, f.texts, "finetune.texts")
        coll = (stored(store, f.collection, "finetune.collection") if f.collection
                else upstream(store, texts, "ingest_collection", "finetune.collection"))
        settings = {**finetune_settings(cfg.model.settings()), **f.settings}
        params = collm_params(settings, collm_train_config(**f.train), triplets=True, loss=f.loss, limit=f.limit)
        model = train_collm_triplets_task(store, texts, coll, init, params, progress=progress)
        made.append(model)
    return model, made


def compare_groups(store: ArtifactStore, cfg: CoLLMConfig, pool, progress: bool) -> list:
    """A `cirflow compare` row (fig. 7, tables 6c, 7): this config's training and evaluation per group."""
    return trained_groups(store, cfg, pool, progress, trained_model, embed_collm_gallery.EmbedCoLLMGallery,
                          embed_collm_gallery_task, embed_collm_queries_task, query=cfg.encoder.query)


def run_one(cfg: CoLLMConfig, progress: bool) -> dict:
    doc, model = run_trained(cfg, progress, trained_model, embed_collm_gallery.EmbedCoLLMGallery,
                             embed_collm_gallery_task, embed_collm_queries_task, query=cfg.encoder.query)
    doc["collm"] = {"model": {"stage": model.stage, "key": model.key}, "query": cfg.encoder.query}
    return doc


@flow(name="collm")
def collm(config: dict, progress: bool = True) -> dict:
    cfg = CoLLMConfig.model_validate(config | {"method": "collm"})
    return run_variants(cfg, lambda c: run_one(c, progress))


def collm_preflight(cfg: CoLLMConfig, source: str) -> None:
    from pathlib import Path

    preflight(cfg, source)
    if cfg.encoder.weights == "trained" and not (Path(cfg.model.llm) / "config.json").is_file():
        raise ConfigError(f"{source}: model.llm {cfg.model.llm} is not a local transformers model folder")
    m = cfg.model
    blip = cfg.encoder.weights == "trained" and m.vision_tower == "blip"
    if blip and not (Path(m.vision_model) / "config.json").is_file():
        raise ConfigError(f"{source}: model.vision_model {m.vision_model} is not a local BLIP checkpoint folder "
                          "(vision_tower: blip)")


COLLM = Method("collm", CoLLMConfig, collm, collm_preflight, print_report, compare_groups=compare_groups)

__all__ = ["COLLM", "CoLLMConfig", "collm", "run_one", "trained_model"]
