"""CoLLM's settings (collm.txt §3, supp. 7, 9) without torch: the model's architecture fields, the loss settings and
the paper's templates / LLEM instruction. Config classes and training keys are built from these at `--plan` time,
which must not import torch (issue 14), so they live here; cirflow.models.collm re-exports them.

    CoLLMSettings(vision_model="ViT-L-14", llm="/models/SFR-Embedding-2_R")   # all of it is in the training key
    PretrainSettings(alpha=0.5, text_ratio=0.75)                              # §3.2 loss (fig. 7, table 6)
    paper_data()["instruction"]                                                # models/collm/templates.json
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


@lru_cache(maxsize=1)
def paper_data() -> dict:
    """templates.json: the 15 modification templates, the LLEM instruction and its variants (with their source)."""
    # resolved through cirflow.models (an empty package): naming cirflow.models.collm would import its torch modules
    return json.loads(resources.files("cirflow.models").joinpath("collm", "templates.json").read_text())


class CoLLMSettings(BaseModel):
    """Everything that decides the architecture and what is trained (all of it is in the training key)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vision_model: str  # open_clip name ("ViT-L-14") or "local-dir:/path"; a local BLIP folder for vision_tower blip
    vision_tower: Literal["open_clip", "blip"] = "open_clip"  # BLIP-L through transformers (supp. 9.1)
    vision_pretrained: str | None = None  # open_clip pretrained tag or checkpoint file
    llm: str  # a local transformers decoder folder (SFR-Embedding-2_R in the paper)
    init: str | None = None  # a trained CoLLM folder to start from (MTCIR fine-tuning, supp. 9.2)
    adapter: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"
    lora_rank: int = Field(64, ge=1)  # 64 for CLIP-L / BLIP-L, 32 for CLIP-B (supp. 9.1); 16 for fine-tuning
    lora_alpha: float | None = None  # None = lora_rank (assumption for pre-training; = rank in fine-tuning)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    lora_llm_targets: str | list[str] = "all-linear"
    lora_vision: bool = True  # CLIP ViTs are LoRA-tuned in pre-training (table 14)
    # None: every ViT block of the tower (open_clip: attn, c_fc, c_proj; BLIP: qkv, projection, fc1, fc2)
    lora_vision_targets: list[str] | None = None
    train_adapter: bool = True
    train_projection: bool = True
    instruction: str = Field(default_factory=lambda: paper_data()["instruction"])
    append_eos: bool = True
    max_text_tokens: int = Field(96, ge=4)  # the [TEXT] part is truncated to this many tokens

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.lora_rank)


class ContrastiveSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hnnce", "infonce"] = "hnnce"
    temperature: float = Field(0.07, gt=0)
    hn_alpha: float = Field(1.0, ge=0)
    hn_beta: float = Field(0.5, ge=0)
    gather: bool = True


class PretrainSettings(ContrastiveSettings):
    alpha: float = Field(0.5, ge=0, le=1)  # Slerp α (eq. 2; fig. 7: 0.5)
    text_ratio: float = Field(0.75, ge=0, le=1)  # share of samples with a template text (fig. 7: 75 %)
    neighbour: Literal["nearest", "random"] = "nearest"  # table 6c
    image_query: bool = True  # eq. 3 term (table 6b)
    text_query: bool = True  # eq. 4 term (table 6b)
