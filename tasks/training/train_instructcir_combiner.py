"""InstructCIR stage two (instructcir.txt eq. 3): the combiner weight λ of e_f = λ·e_r + (1 − λ)·φ_t(t) trained
with the same contrastive loss, the stage-one backbone frozen — its own stored stage on top of the first.

    comb = execute(TrainInstructCIRCombiner, store, {"texts": texts, "collection": coll, "backbone": stage_one},
                   combiner_params(stage_one, combiner_train_config()))
    model = load_trained(resolve_model_ref(store, f"key:{comb.key}"))      # InstructCIRCombiner

The backbone input's artifact key is part of this stage's key; its folder is handed to the model factory at run
time. λ's learning rate is not printed: 1e-3 (assumption: a single scalar barely moves at the backbone's 2e-6),
no weight decay (it would pull λ to 0), λ starts at 0.5 (assumption). Multi-GPU as stage one (batch 32).
"""

from __future__ import annotations

from typing import Any

from cirflow.schemas.training import Ref, TrainConfig
from cirflow.storage import Artifact
from cirflow.tasks.training.train import TrainParams
from cirflow.tasks.training.train_collm import OnTrainedModel
from cirflow.tasks.training.train_instructcir import CODE_VERSION, DATASET, LOSS

MODEL = "cirflow.models.instructcir.model:build_instructcir_combiner"


class TrainInstructCIRCombiner(OnTrainedModel):
    name = "train_instructcir_combiner"
    inputs = ("texts", "collection", "backbone")
    model_input, model_kwarg = "backbone", "backbone_dir"


def combiner_train_config(**overrides: Any) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "lr": 1e-3, "weight_decay": 0.0, "effective_batch_size": 32,
                          "per_device_batch_size": 32, "schedule": {"kind": "constant"}, **overrides})


def combiner_params(backbone: Artifact, train: TrainConfig, *, lambda_init: float = 0.5,
                    limit: int | None = None) -> TrainParams:
    """Data and loss settings follow the backbone's own training (same preprocessing, same τ)."""
    bp = backbone.manifest.params
    return TrainParams(base={"backbone": backbone.key}, model=Ref(target=MODEL, kwargs={"lambda_init": lambda_init}),
                       dataset=Ref(target=DATASET, kwargs={**bp["dataset"]["kwargs"], "limit": limit}),
                       loss=Ref(target=LOSS, kwargs=dict(bp["loss"]["kwargs"])), train=train,
                       code_version=CODE_VERSION, tables={"collection": "images"})
