"""InstructCIR (instructcir.txt §II-B, §II-C, §IV-A): the cross-attention reformulation network trained on the
stored InstructCIR build (stage one, EMA target encoder), then the λ combiner (stage two), evaluated as a CIR
encoder.

    [stored InstructCIR build: instructcir_texts + its collection]
        ─► train_instructcir (eq. 2; EMA target) ─► train_instructcir_combiner (eq. 3: λ, backbone frozen)
    ingest ─► embed_instructcir_gallery (e_t) ──────────────┐
       └───► embed_instructcir_queries (e_f, or e_r) ───────┴─► retrieve ─► evaluate

Table IV's scaling curve is a set of `variants` over `data.limit` (nested prefixes of one stored build: 16000,
32000, ...); table V's ablations are variants `model.ema: false` (w/o EMA) and `model.ema: false` +
`model.cross_attention: false` (w/o CrossAtt., plain CLIP); as one comparison table: `cirflow compare` with this
config as `base:` (examples/compare_instructcir_*.yaml). `combiner: null` evaluates stage one's e_r alone.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from cirflow.flows.method import Method
from cirflow.flows.runs import preflight
from cirflow.flows.trained_runs import (TrainedEncoderConfig, TrainedRunBase, check_ref, print_report,
                                        run_trained, run_variants, section_errors, stored, trained_groups,
                                        upstream)
from cirflow.schemas.base import Strict
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.instructcir import InstructCIRSettings  # not models.instructcir.model: no torch at `--plan`
from cirflow.schemas.names import Name
from cirflow.schemas.paths import LocalDirModel, ModelPath
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.instructcir import embed_instructcir_gallery, embed_instructcir_queries
from cirflow.tasks.stage import execute
from cirflow.tasks.training import TrainRuntime, find_trained
from cirflow.tasks.training.train_instructcir import TrainInstructCIR, instructcir_params, instructcir_train_config
from cirflow.tasks.training.train_instructcir_combiner import (TrainInstructCIRCombiner, combiner_params,
                                                              combiner_train_config)
from cirflow.tasks.wrappers import stage_task
from cirflow.tasks.lazy_prefect import flow  # Prefect on first real run: `--plan` never imports it


class InstructCIRModelSection(InstructCIRSettings):
    """InstructCIRSettings with its paths marked; only non-default values enter the training key."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    clip_model: LocalDirModel  # CLIP ViT-L/14 in the paper (§IV-A)
    clip_pretrained: ModelPath | None = None

    def settings(self) -> dict:
        return self.model_dump(mode="json", exclude_defaults=True)


class DataSection(Strict):
    texts: str = "stage:instructcir_texts"  # the build's instructcir_texts artifact (≤12-word reformulations)
    collection: str | None = None  # default: the collection the texts were built from
    limit: int | None = Field(None, ge=1)  # table IV: a prefix of the triplets (nested subsets of one build)

    @model_validator(mode="after")
    def _refs(self):
        check_ref(self.texts, "data.texts")
        check_ref(self.collection, "data.collection")
        return self


class ReformulationSection(Strict):
    """Stage one (§IV-A: AdamW lr 2e-6, weight decay 0.1, batch 32)."""

    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields over instructcir_train_config()
    # τ of eq. 2 is not printed: 100 (CLIP's learned logit scale, an assumption)
    tau: float = Field(100.0, gt=0)


class CombinerSection(Strict):
    """Stage two: λ of eq. 3 with the backbone frozen (lr 1e-3 and λ₀ = 0.5 are assumptions, not printed)."""

    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig fields over combiner_train_config()
    lambda_init: float = 0.5


class InstructCIRConfig(TrainedRunBase):
    name: Name = "instructcir"
    method: Literal["instructcir"] = "instructcir"
    encoder: TrainedEncoderConfig = Field(default_factory=TrainedEncoderConfig)  # type: ignore[assignment]
    model: InstructCIRModelSection | None = None  # needed when encoder.weights is "trained"
    data: DataSection = Field(default_factory=DataSection)
    reformulation: ReformulationSection = Field(default_factory=ReformulationSection)
    combiner: CombinerSection | None = Field(default_factory=CombinerSection)  # None: evaluate e_r of stage one

    @model_validator(mode="after")
    def _check(self):
        if self.encoder.weights == "trained" and self.model is None:
            raise ValueError("encoder.weights 'trained' needs a `model` section (clip_model, ...)")
        with section_errors():
            instructcir_train_config(**self.reformulation.train)
            if self.combiner is not None:
                combiner_train_config(**self.combiner.train)
        return self


def _train(stage, store, inputs: dict, params, progress: bool = True) -> Artifact:
    return execute(stage, store, inputs, params, TrainRuntime(progress=progress))


def _train_one(store, texts, collection, params, progress: bool = True) -> Artifact:
    return _train(TrainInstructCIR, store, {"texts": texts, "collection": collection}, params, progress)


def _train_two(store, texts, collection, backbone, params, progress: bool = True) -> Artifact:
    return _train(TrainInstructCIRCombiner, store, {"texts": texts, "collection": collection, "backbone": backbone},
                  params, progress)


train_instructcir_task = stage_task(TrainInstructCIR, _train_one)
train_combiner_task = stage_task(TrainInstructCIRCombiner, _train_two)
embed_gallery_task = stage_task(embed_instructcir_gallery.EmbedInstructCIRGallery, embed_instructcir_gallery.run)
embed_queries_task = stage_task(embed_instructcir_queries.EmbedInstructCIRQueries, embed_instructcir_queries.run)


def trained_model(store: ArtifactStore, cfg: InstructCIRConfig, progress: bool) -> tuple[Artifact, list[Artifact]]:
    """(the encoder's trained artifact, what this run trained): a stored model by reference, or stage one and
    (unless `combiner: null`) stage two on the stored build."""
    if cfg.encoder.weights != "trained":
        try:
            return find_trained(store, cfg.encoder.weights), []
        except Exception as e:  # noqa: BLE001 - a wrong reference is the user's: one line
            raise ConfigError(f"encoder.weights: {str(e).splitlines()[0]}") from None
    d = cfg.data
    texts = stored(store, d.texts, "data.texts")
    coll = (stored(store, d.collection, "data.collection") if d.collection
            else upstream(store, texts, "ingest_collection", "data.collection"))
    r = cfg.reformulation
    one = train_instructcir_task(store, texts, coll, instructcir_params(
        cfg.model.settings(), instructcir_train_config(**r.train), tau=r.tau, limit=d.limit), progress=progress)
    if cfg.combiner is None:
        return one, [one]
    c = cfg.combiner
    two = train_combiner_task(store, texts, coll, one, combiner_params(
        one, combiner_train_config(**c.train), lambda_init=c.lambda_init, limit=d.limit), progress=progress)
    return two, [one, two]


def compare_groups(store: ArtifactStore, cfg: InstructCIRConfig, pool, progress: bool) -> list:
    """A `cirflow compare` row (tables IV, V): this config's two trainings and evaluation per group."""
    return trained_groups(store, cfg, pool, progress, trained_model, embed_instructcir_gallery.EmbedInstructCIRGallery,
                          embed_gallery_task, embed_queries_task)


def run_one(cfg: InstructCIRConfig, progress: bool) -> dict:
    doc, model = run_trained(cfg, progress, trained_model, embed_instructcir_gallery.EmbedInstructCIRGallery,
                             embed_gallery_task, embed_queries_task)
    doc["instructcir"] = {"model": {"stage": model.stage, "key": model.key}}
    if model.stage == TrainInstructCIRCombiner.name:
        lam = model.read("log").column("lambda").to_pylist()
        doc["instructcir"]["lambda"] = lam[-1] if lam else None
    return doc


@flow(name="instructcir")
def instructcir(config: dict, progress: bool = True) -> dict:
    cfg = InstructCIRConfig.model_validate(config | {"method": "instructcir"})
    return run_variants(cfg, lambda c: run_one(c, progress))


INSTRUCTCIR = Method("instructcir", InstructCIRConfig, instructcir, preflight, print_report,
                     compare_groups=compare_groups)

__all__ = ["INSTRUCTCIR", "InstructCIRConfig", "instructcir", "run_one", "trained_model"]
