"""CoLLM training stages (collm.txt §3.2–3.3, supp. 9): pre-training on image–caption pairs, fine-tuning on triplets.

    art = execute(TrainCoLLM, store, {"collection": coll, "captions": caps_or_None},
                  collm_params(settings, collm_train_config()))                     # §3.2: synthesized triplets
    ft = execute(TrainCoLLMTriplets, store, {"texts": mtcir_texts, "collection": coll, "init": art},
                 collm_params(finetune_settings(settings), collm_train_config(), triplets=True))   # §3.3, supp. 9.2
    model = CoLLMModel.from_trained(resolve_model_ref(store, f"key:{ft.key}"))

Inputs: `collection` (a build's ingest_collection artifact: image paths, and captions when the source brought
them — a user's CC3M / LAION / LLaVA-558K Parquet shards ingested as a collection) and optionally `captions` (a
caption stage's TEXTS artifact, e.g. the build's captions). Triplets: `texts` (the stored `mtcir_texts` artifact,
every ok direction/text a triplet) + its `collection`; `init` (optional) a stored `train_collm` artifact to start
from — its key is part of the fine-tuning key, its folder is handed to the model factory at run time.

Ablations are trainings whose key differs, everything downstream reused: fig. 7 `alpha` / `text_ratio`, table 6c
`neighbour="random"`, 6b `image_query` / `text_query` (loss kwargs); table 7 the `llm` folder; table 14
`lora_vision` (settings).

Multi-GPU (HF accelerate, `TrainConfig.launcher` / `accelerate`), the paper's settings (supp. 9.1: 8 × A100 40GB,
batch 1024, 1 epoch, constant lr 1e-4):
    train: {effective_batch_size: 1024, per_device_batch_size: 16, mixed_precision: bf16, lr: 1.0e-4,
            launcher: {kind: accelerate, num_processes: 8}}      # 16 × 8 = 128 per micro-step, 8 accumulation steps
With accumulation the contrastive negatives are the 128 samples of one micro-step (gathered over the 8 GPUs), and
the nearest-neighbour search of eq. 1 runs within each GPU's 16 (see cirflow.models.collm.losses); with memory to
spare raise per_device_batch_size (64 × 8 = 512, 2 accumulation steps). FSDP / DeepSpeed settings pass through
`train.accelerate` for the 7B LLM. Fine-tuning (supp. 9.2) keeps the same settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# torch-free modules only: `--plan` computes these keys without importing torch (issue 14); the model code is
# named by the Ref targets below and imported by the training engine
from cirflow.models.tower_preprocess import tower_preprocess
from cirflow.models.weights import weights_revision
from cirflow.schemas.collm import CoLLMSettings
from cirflow.schemas.training import Ref, TrainConfig
from cirflow.tasks.stage import Context
from cirflow.tasks.training.model_ref import resolve_model_ref
from cirflow.tasks.training.train import TrainParams, TrainStage

CODE_VERSION = "1"  # bump when cirflow.models.collm changes what a training computes
MODEL = "cirflow.models.collm.model:build_collm"
PAIRS = "cirflow.models.collm.data:caption_pairs"
TRIPLETS = "cirflow.models.collm.data:triplets"
PRETRAIN_LOSS = "cirflow.models.collm.losses:pretrain_loss"
TRIPLET_LOSS = "cirflow.models.collm.losses:triplet_loss"


class TrainCoLLM(TrainStage):
    name = "train_collm"
    inputs = ("collection", "captions")


class OnTrainedModel(TrainStage):
    """A training stage that starts from a stored trained model given as the input `model_input`: its artifact key
    is part of this stage's key (an input), and its local folder is handed to the model factory as `model_kwarg`
    at run time (a path never enters the key)."""

    model_input: str = ""
    model_kwarg: str = ""

    def produce(self, ctx: Context) -> None:
        art = ctx.inputs.pop(self.model_input, None)  # a model, not a table the dataset reads
        if art is not None:
            p: TrainParams = ctx.params
            folder = str(resolve_model_ref(ctx.store, f"key:{art.key}"))
            ctx.params = p.model_copy(update={"model": Ref(target=p.model.target,
                                                           kwargs={**p.model.kwargs, self.model_kwarg: folder})})
        super().produce(ctx)


class TrainCoLLMTriplets(OnTrainedModel):
    """Fine-tuning on real triplets, from `init` (a train_collm artifact, or None: from the base models)."""

    name = "train_collm_triplets"
    inputs = ("texts", "collection", "init")
    model_input, model_kwarg = "init", "init"


def collm_train_config(**overrides: Any) -> TrainConfig:
    """Supp. 9.1: one epoch, constant lr 1e-4, batch 1024. Weight decay is not printed: 0.0, the LLaVA codebase's
    default (assumption)."""
    return TrainConfig(**{"epochs": 1, "lr": 1e-4, "effective_batch_size": 1024, "per_device_batch_size": 16,
                          "weight_decay": 0.0, "schedule": {"kind": "constant"}, **overrides})


def finetune_settings(settings: dict) -> dict:
    """Supp. 9.2 on top of pre-training settings: LoRA rank = alpha = 16, the LLM only."""
    return {**settings, "lora_rank": 16, "lora_alpha": 16, "lora_vision": False, "train_adapter": False,
            "train_projection": False}


def base_identity(settings: dict) -> dict:
    """Which base weights a training starts from (the key's `base`): the vision tower's revision and the LLM
    folder's safetensors sha256."""
    from cirflow.models.mvft.identity import weights_sha256  # not model.py: no torch at `--plan`

    s = CoLLMSettings(**settings)
    if s.vision_tower == "blip":  # a local transformers folder, identified like the LLM
        vision = {"vision": Path(s.vision_model).name, "vision_revision": weights_sha256(s.vision_model)}
    else:
        vision = {"vision": s.vision_model, "vision_pretrained": s.vision_pretrained,
                  "vision_revision": weights_revision(s.vision_model, s.vision_pretrained)}
    return {**vision,
            "llm": Path(s.llm).name, "llm_revision": weights_sha256(s.llm)}


def collm_params(settings: dict, train: TrainConfig, *, triplets: bool = False, loss: dict | None = None,
                 limit: int | None = None) -> TrainParams:
    """The TrainParams of either stage: `settings` are CoLLMSettings fields (without `init`: the triplet stage's
    `init` input sets it), `loss` the PretrainSettings / ContrastiveSettings fields, `limit` a prefix of the data."""
    s = CoLLMSettings(**settings)  # validates now: a bad field is a config error before any training starts
    if s.init is not None:
        raise ValueError("pass the pre-trained CoLLM as the stage's `init` input, not as a settings path")
    dataset_kwargs = {"preprocess": tower_preprocess(s.vision_tower, s.vision_model, s.vision_pretrained),
                      "limit": limit}
    return TrainParams(base=base_identity(settings), model=Ref(target=MODEL, kwargs=dict(settings)),
                       dataset=Ref(target=TRIPLETS if triplets else PAIRS, kwargs=dataset_kwargs),
                       loss=Ref(target=TRIPLET_LOSS if triplets else PRETRAIN_LOSS, kwargs=dict(loss or {})),
                       train=train, code_version=CODE_VERSION, tables={"collection": "images"})
