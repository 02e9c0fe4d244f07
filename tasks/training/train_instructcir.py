"""InstructCIR stage one (instructcir.txt §II-C, §IV-A): the reformulation network trained on the stored
InstructCIR build with the batch contrastive loss of eq. 2.

    art = execute(TrainInstructCIR, store, {"texts": instructcir_texts, "collection": coll},
                  instructcir_params(settings, instructcir_train_config(), limit=32_000))
    model = InstructCIRModel.from_trained(resolve_model_ref(store, f"key:{art.key}"))

Inputs: `texts` (the build's `instructcir_texts` artifact: ref_id, tgt_id, ≤12-word reformulation, status) and
its `collection`. Table IV's scaling curve is a sweep over `limit` (16k → 500k): nested prefixes of one fixed
order of the same stored build, one training key each. Table V: `settings={"ema": False}` (w/o EMA) and
`{"ema": False, "cross_attention": False}` (w/o CrossAtt. = plain CLIP). Stage two is train_instructcir_combiner.

Multi-GPU (HF accelerate), the paper's settings (§IV-A: 8 × A100, AdamW lr 2e-6, weight decay 0.1, batch 32):
    train: {effective_batch_size: 32, per_device_batch_size: 4, lr: 2.0e-6, weight_decay: 0.1,
            launcher: {kind: accelerate, num_processes: 8}}       # 4 × 8 = 32, no accumulation
The loss gathers features over the 8 processes, so the 32 in-batch negatives equal one-GPU training at batch 32.
Epochs are not printed (1 here, an assumption; set `epochs`).
"""

from __future__ import annotations

from typing import Any

# torch-free modules only: `--plan` computes these keys without importing torch (issue 14)
from cirflow.models.tower_preprocess import preprocess_config
from cirflow.models.weights import weights_revision
from cirflow.schemas.instructcir import InstructCIRSettings
from cirflow.schemas.training import Ref, TrainConfig
from cirflow.tasks.training.train import TrainParams, TrainStage

CODE_VERSION = "1"  # bump when cirflow.models.instructcir changes what a training computes
MODEL = "cirflow.models.instructcir.model:build_instructcir"
DATASET = "cirflow.models.collm.data:triplets"
LOSS = "cirflow.models.instructcir.losses:loss"


class TrainInstructCIR(TrainStage):
    name = "train_instructcir"
    inputs = ("texts", "collection")


def instructcir_train_config(**overrides: Any) -> TrainConfig:
    """§IV-A: AdamW, lr 2e-6, weight decay 0.1, batch 32 (constant lr and 1 epoch: not printed, assumptions)."""
    return TrainConfig(**{"epochs": 1, "lr": 2e-6, "weight_decay": 0.1, "effective_batch_size": 32,
                          "per_device_batch_size": 32, "schedule": {"kind": "constant"}, **overrides})


def instructcir_params(settings: dict, train: TrainConfig, *, tau: float = 100.0,
                       limit: int | None = None) -> TrainParams:
    s = InstructCIRSettings(**settings)
    base = {"clip": s.clip_model, "clip_pretrained": s.clip_pretrained,
            "clip_revision": weights_revision(s.clip_model, s.clip_pretrained)}
    return TrainParams(base=base, model=Ref(target=MODEL, kwargs=dict(settings)),
                       dataset=Ref(target=DATASET, kwargs={"preprocess": preprocess_config(s.clip_model,
                                                                                           s.clip_pretrained),
                                                           "limit": limit}),
                       loss=Ref(target=LOSS, kwargs={"tau": tau}), train=train, code_version=CODE_VERSION,
                       tables={"collection": "images"})
