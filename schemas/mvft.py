"""Config sections of MVFT-JI runs (`method: mvft_ji`, cirflow.flows.mvft_ji).

Training defaults (mvft-ji.txt §4.1.3 gives AdamW, ×0.1 every 10 epochs and batch 128; the rest of its numbers
are lost from the text). The values marked ASSUMPTION come from BLIP-2's own retrieval fine-tuning (LAVIS
`blip2/train/retrieval_coco_ft.yaml`: init_lr 1e-5, weight_decay 0.05, ITC temperature initialised at 0.07)
and BLIP-2's checkpoint (32 query tokens); override them in the config:

    lr 1e-5 (ASSUMPTION)          temperature 0.07 (ASSUMPTION)      epochs 20 (ASSUMPTION: BLIP-2 fine-tunes 5
    weight_decay 0.05 (ASSUMPTION) num_query_tokens 32 (ASSUMPTION)   epochs, which would never reach the
    effective_batch_size 128 (§4.1.3)  schedule step ×0.1 / 10 epochs (§4.1.3)   paper's 10-epoch decay)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cirflow.schemas.base import Strict
from cirflow.schemas.builds import CollectionSource, MVFTTextConfig
from cirflow.schemas.config import CaptionConfig
from cirflow.schemas.mllm import MLLMConfig
from cirflow.schemas.paths import LocalPath
from cirflow.schemas.training import TrainConfig

MVFT_TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 1e-5, "weight_decay": 0.05, "epochs": 20, "effective_batch_size": 128, "per_device_batch_size": 32,
    "schedule": {"kind": "step", "gamma": 0.1, "step_epochs": 10},
}


class MVFTEncoderConfig(Strict):
    """The VLM that encodes images, composed queries and texts as k tokens (models/mvft)."""

    base: LocalPath  # a BLIP-2 ITM folder (Blip2ForImageTextRetrieval + processor): the untrained VLM
    # "trained": the model this run trains (train_mvft, found by its key); "base": the untrained folder (the
    # appendix C baselines); "stage:train_mvft@<key>" / "key:<key>": any stored trained model
    weights: str = "trained"
    # text tokens of the text-only features: "query" = the k query tokens (eq. 9/18), "cls" = BLIP-2's own [CLS]
    # text feature; "auto" = query with trained weights, cls with the base model (appendix C uses BLIP-2's text
    # encoder as is)
    text_tokens: Literal["auto", "query", "cls"] = "auto"
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"
    batch_size: int = Field(64, ge=1)

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        if v not in ("trained", "base") and not v.startswith(("stage:", "key:")):
            raise ValueError("weights must be 'trained', 'base', 'stage:train_mvft[@key]' or 'key:<key>'")
        return v

    # what run summaries print for an encoder
    @property
    def model(self) -> str:
        return f"mvft-qformer:{self.weights}"

    @property
    def pretrained(self) -> str:
        return self.base

    def tokens_for(self, trained: bool) -> str:
        return self.text_tokens if self.text_tokens != "auto" else ("query" if trained else "cls")


class MVFTBuildData(Strict):
    """The MVFT build's stages, run (or reused from the store) by the flow: `cirflow build mvft` in-line."""

    collection: CollectionSource
    mllm: MLLMConfig | None = None  # default: the run's mllm
    cache: LocalPath | None = None  # LLM answer cache root; default <store>/_llm_cache
    captions: CaptionConfig = Field(default_factory=CaptionConfig)
    texts: MVFTTextConfig = Field(default_factory=MVFTTextConfig)
    check_shard_size: int = Field(256, ge=1)


class MVFTDataConfig(Strict):
    """Where the training rows come from: the MVFT build, or a Parquet file of rows (columns of
    cirflow.models.mvft.training.TRAINING_ROWS, e.g. the demo's rows from the mini benchmark's labels)."""

    build: MVFTBuildData | None = None
    rows: LocalPath | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.build is None) == (self.rows is None):
            raise ValueError("data: give exactly one of `build` (an MVFT build) or `rows` (a Parquet file)")
        return self


class MVFTLossConfig(Strict):
    temperature: float = Field(0.07, gt=0)  # ASSUMPTION: BLIP-2's initial ITC temperature (kept fixed)
    use_Lt: bool = True  # table 4 "w/o L_t": False
    use_Lc: bool = True  # table 4 "w/o L_c": False


class MVFTTrainSection(Strict):
    """Training of the VLM: the engine's TrainConfig (every field; MVFT defaults above, a config overrides any
    one of them without resetting the others), the loss, and the expected k."""

    train: TrainConfig = Field(default_factory=lambda: TrainConfig(**MVFT_TRAIN_DEFAULTS))
    loss: MVFTLossConfig = Field(default_factory=MVFTLossConfig)
    num_query_tokens: int = Field(32, ge=1)  # k; ASSUMPTION (BLIP-2's 32); checked against the base model
    code_version: str = "1"

    @field_validator("train", mode="before")
    @classmethod
    def _merge(cls, v):
        if isinstance(v, dict):
            merged = {**MVFT_TRAIN_DEFAULTS, **v}
            if isinstance(v.get("schedule"), dict):
                merged["schedule"] = {**MVFT_TRAIN_DEFAULTS["schedule"], **v["schedule"]}
            return merged
        return v


class JointConfig(Strict):
    """Joint inference (§3.4) and the appendix C baselines, as modes of one run (retrieval/joint.py)."""

    mode: Literal["joint", "composed", "target_text", "image_only", "text_only", "image_text"] = "joint"
    lam: float = 1.0  # λ in ŝ + λ·s̃ (eq. 19 is lost from the text: our reading, λ = 1)
