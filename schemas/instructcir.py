"""InstructCIR's settings (instructcir.txt §II-B, §IV-A) without torch: config classes and training keys are built
from them at `--plan` time, which must not import torch (issue 14); cirflow.models.instructcir re-exports them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class InstructCIRSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    clip_model: str  # open_clip name ("ViT-L-14") or "local-dir:/path"
    clip_pretrained: str | None = None
    cross_attention: bool = True
    ema: bool = True
    ema_momentum: float = Field(0.996, ge=0, le=1)  # not printed in the paper (I-JEPA's start value; assumption)
    predictor_hidden: int | None = Field(None, ge=1)  # None = 2·D (assumption)
    train_text: bool = True
