"""Config of a training run (`TrainConfig`) and the JSON spec a training worker is started with (`TrainSpec`).

Defaults and where they come from (the papers state few of them; the rest are assumptions a config overrides):
- `effective_batch_size` 128: MVFT-JI §4.1.3 (batch 128). CoLLM uses 1024, InstructCIR 32: set per method.
- `schedule.kind` "constant": CoLLM pre-training (constant lr 1e-4, supp. 9.1). MVFT-JI uses
  `{kind: step, gamma: 0.1, step_epochs: 10}` (§4.1.3: ×0.1 every 10 epochs).
- `lr` 1e-4: CoLLM pre-training. MVFT-JI's learning rate is lost from the text (assumption: BLIP-2's own
  fine-tuning value is set in the MVFT example). InstructCIR: 2e-6 (§IV-A).
- `weight_decay` 0.05: assumption (BLIP-2's fine-tuning value); InstructCIR uses 0.1 (§IV-A).
- `beta1/beta2/eps` 0.9/0.999/1e-8: torch's AdamW defaults (assumption; no paper prints them).
- `decay_norm_and_bias` False: assumption, the common practice of exempting biases and norms (1-d params) from
  weight decay (BLIP-2, open_clip do the same).
- `epochs` 1, `warmup_steps` 0, `grad_clip` None, `mixed_precision` "no", `seed` 0: assumptions.
- Runtime knobs (`checkpoint_every`, `num_workers`, `launcher`, `progress`) change speed or resilience, not the
  trained weights, so `key_fields()` leaves them out. `per_device_batch_size` is left out too, but the micro-batch
  (`per_device_batch_size × num_processes`) is kept: it decides the in-batch negatives of a contrastive loss.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(extra="forbid", strict=True)


class Schedule(BaseModel):
    """Learning rate as a pure function of the optimizer step (so a resumed run needs no scheduler object)."""

    model_config = _STRICT

    kind: Literal["constant", "step", "cosine"] = "constant"
    warmup_steps: int = Field(0, ge=0)  # linear ramp from lr/warmup_steps to lr over the first steps
    gamma: float = Field(0.1, gt=0)  # kind=step: lr × gamma every `step_epochs` epochs (MVFT-JI: 0.1 every 10)
    step_epochs: int = Field(10, ge=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # kind=cosine: the floor, as a fraction of lr


class Launcher(BaseModel):
    """How the training processes are started. `accelerate` runs `accelerate launch --multi_gpu` on a GPU
    machine; on CPU (where `accelerate launch --cpu` starts a single process) it falls back to torchrun with gloo."""

    model_config = _STRICT

    kind: Literal["in_process", "accelerate", "torchrun"] = "in_process"
    num_processes: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _one_process_in_process(self):
        if self.kind == "in_process" and self.num_processes != 1:
            raise ValueError("launcher.kind in_process runs one process; use accelerate or torchrun for more")
        return self


class AccelerateSettings(BaseModel):
    """Passed through to HF accelerate as is: `fsdp` → FullyShardedDataParallelPlugin(**fsdp), `deepspeed` →
    DeepSpeedPlugin(**deepspeed), `ddp` → DistributedDataParallelKwargs(**ddp), `launch_args` appended to
    `accelerate launch`. Only DDP is exercised by the tests."""

    model_config = _STRICT

    fsdp: dict[str, Any] | None = None
    deepspeed: dict[str, Any] | None = None
    ddp: dict[str, Any] | None = None
    launch_args: list[str] = Field(default_factory=list)


class TrainConfig(BaseModel):
    model_config = _STRICT

    seed: int = 0
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; stops early when reached
    per_device_batch_size: int = Field(32, ge=1)
    effective_batch_size: int = Field(128, ge=1)  # the global batch of one optimizer step (MVFT-JI: 128)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    optimizer: Literal["adamw"] = "adamw"
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    decay_norm_and_bias: bool = False
    schedule: Schedule = Field(default_factory=Schedule)
    grad_clip: float | None = Field(None, gt=0)  # max global grad norm
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # runtime knobs (not in the key)
    checkpoint_every: int = Field(500, ge=1)  # optimizer steps between checkpoints
    num_workers: int = Field(0, ge=0)  # DataLoader workers
    progress: bool = True
    launcher: Launcher = Field(default_factory=Launcher)
    accelerate: AccelerateSettings = Field(default_factory=AccelerateSettings)

    @model_validator(mode="after")
    def _accumulation_divides(self):
        micro = self.per_device_batch_size * self.launcher.num_processes
        if self.effective_batch_size % micro:
            raise ValueError(f"effective_batch_size {self.effective_batch_size} is not a multiple of "
                             f"per_device_batch_size × num_processes = {micro}")
        return self

    @property
    def world_size(self) -> int:
        return self.launcher.num_processes

    @property
    def micro_batch_size(self) -> int:
        """Samples in one forward pass over all processes."""
        return self.per_device_batch_size * self.world_size

    @property
    def grad_accumulation_steps(self) -> int:
        return self.effective_batch_size // self.micro_batch_size

    def key_fields(self) -> dict:
        """Everything that changes the trained weights (beyond float noise)."""
        runtime = {"checkpoint_every", "num_workers", "progress", "launcher", "accelerate", "per_device_batch_size"}
        fields = self.model_dump(mode="json", exclude=runtime)
        fields["micro_batch_size"] = self.micro_batch_size
        # sharding strategies change numerics (and what is trainable with DeepSpeed offload), keep them
        fields["sharding"] = {"fsdp": self.accelerate.fsdp, "deepspeed": self.accelerate.deepspeed}
        return fields


class Ref(BaseModel):
    """An importable callable `package.module:attr` and its keyword arguments (JSON, never pickled).
    Model and dataset refs are constructors; loss and collate refs are functions whose kwargs are bound."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TrainSpec(BaseModel):
    """What a training worker needs, as JSON: `python -m cirflow.training.worker --spec spec.json`.

    model:   target(**kwargs) -> torch.nn.Module (called after seeding, so its init is reproducible)
    dataset: target(**kwargs) -> a map-style dataset (`__len__`, `__getitem__`); the train stage adds
             `tables={input name: [local Parquet paths]}` to kwargs
    loss:    target(model, batch, **kwargs) -> {"loss": scalar, other terms...} (or a scalar tensor)
    collate: target(items, **kwargs) -> batch; default torch's default_collate
    """

    model_config = ConfigDict(extra="forbid")

    model: Ref
    dataset: Ref
    loss: Ref
    collate: Ref | None = None
    train: TrainConfig
    ckpt_dir: str  # checkpoints and the `final/` folder (model.safetensors, log.parquet, loss.png, result.json)
