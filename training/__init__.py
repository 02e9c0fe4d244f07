"""The training engine every trained model in cirflow uses (MVFT-JI; CoLLM and InstructCIR next).

    from cirflow.training import fit, launch
    result = fit(model, loss_fn, dataset, TrainConfig(...), ckpt_dir)          # in this process
    final_dir = launch(TrainSpec(model=Ref(...), dataset=Ref(...), loss=Ref(...), train=cfg, ckpt_dir=...))

Developer notes
- Interfaces: `model` a torch.nn.Module (trainable = requires_grad params; optional hooks `on_step_end(step)`
  after each optimizer step, e.g. an EMA target encoder kept as buffers, and `export_extras(dir)` to write
  configs/tokenizer files next to model.safetensors). `dataset` map-style (`__len__`, `__getitem__`);
  `collate(items) -> batch` (default_collate by default); `loss_fn(model, batch) -> {"loss": scalar, ...}`
  — every entry is logged, "loss" is optimised. Contrastive losses gather features with
  `all_gather_with_grad` so N processes equal one (cirflow.training.dist).
- Built on accelerate's Accelerator: `prepare(model, optimizer)`, `accumulate()` with
  gradient_accumulation_steps = effective / (per_device × processes), `autocast()` for bf16/fp16,
  `backward()`, `clip_grad_norm_()`, DDP/FSDP/DeepSpeed from `TrainConfig.accelerate`. The data loader and
  the scheduler are NOT prepared: the data order is our own (cirflow.training.data: a permutation per
  (seed, epoch), each step's global batch split into micro-steps then ranks), and the learning rate is a pure
  function of the step (cirflow.training.schedule), which makes resume and world-size equivalence exact.
  In-batch negatives come from one micro-step (per_device × processes samples), not the whole accumulated
  batch: with accumulation, a contrastive loss sees fewer negatives (GradCache would lift that; not done).
- Checkpoints (cirflow.training.checkpoint) at optimizer-step boundaries, no pickle: safetensors + JSON,
  atomic rename, a `latest` pointer written last. Resume restores model, optimizer, the step (data position
  and lr follow from it), grad scaler and every process's RNG states; on CPU a resumed run equals an
  uninterrupted one bit for bit.
- The last incomplete global batch of an epoch is dropped. fp16/bf16 and GPU kernels are not bit-exact.
"""

from cirflow.training.launch import launch  # eager: the function must shadow its submodule's name
from cirflow.training.seeds import over_seeds, seeds_summary

# The torch-heavy names load on first access (PEP 562): importing any cirflow.training module runs this file, and a
# flow that only needs `seeds_summary` must not import torch through the engine (`cirflow run --plan`).
_LAZY = {"all_gather_with_grad": "dist", "FitResult": "engine", "fit": "engine", "load_model": "export"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"cirflow.training.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FitResult", "all_gather_with_grad", "fit", "launch", "load_model", "over_seeds", "seeds_summary"]
