"""`fit`: one training run on HF accelerate, resumable from its own checkpoints (see cirflow.training)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_model, save_model

from cirflow.schemas.errors import ConfigError
from cirflow.schemas.progress import step_progress
from cirflow.schemas.training import TrainConfig
from cirflow.training.checkpoint import Checkpointer
from cirflow.training.data import epoch_permutation, rank_batches, steps_per_epoch, to_device
from cirflow.training.plot import loss_curve_png
from cirflow.training.schedule import lr_at

FINAL = "final"
LossFn = Callable[[torch.nn.Module, Any], "Mapping[str, torch.Tensor] | torch.Tensor"]


@dataclass
class FitResult:
    model: torch.nn.Module  # unwrapped, with the final weights
    log: pa.Table  # one row per optimizer step, the resumed run's earlier rows included
    final_dir: Path  # model.safetensors (+ the model's export_extras), log.parquet, loss.png, result.json
    stats: dict  # steps, epochs, samples, resumed_from, world_size, seconds


def fit(model: torch.nn.Module, loss_fn: LossFn, dataset: Sequence, cfg: TrainConfig, ckpt_dir: str | Path, *,
        collate: Callable[[list], Any] | None = None, log: Callable[[dict], None] | None = None) -> FitResult:
    """Train `model` on `dataset` with `loss_fn(model, batch)`, checkpointing into `ckpt_dir` and resuming from
    its latest checkpoint. A finished run leaves `ckpt_dir/final/`; calling fit again returns it as is."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed

    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / FINAL
    if (final / "result.json").is_file():
        load_model(model, str(final / "model.safetensors"))
        return FitResult(model, pq.read_table(final / "log.parquet"), final,
                         json.loads((final / "result.json").read_text()))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.grad_accumulation_steps, **_plugins(cfg))
    try:
        with contextlib.ExitStack() as bars:  # the progress line ends with the run, also when it raises
            return _fit(accelerator, model, loss_fn, dataset, cfg, ckpt_dir, collate, log, set_seed, bars)
    finally:
        if accelerator.num_processes > 1:
            accelerator.wait_for_everyone()
        # accelerate keeps process-wide singletons; a second fit in this process may use other settings
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def _fit(accelerator, model, loss_fn, dataset, cfg: TrainConfig, ckpt_dir: Path, collate, log, set_seed,
         bars: contextlib.ExitStack):
    rank, world = accelerator.process_index, accelerator.num_processes
    if world != cfg.world_size:
        raise ConfigError(f"training started with {world} processes but launcher.num_processes is "
                          f"{cfg.world_size}: the per-process batch would not add up to the effective batch")
    n, E = len(dataset), cfg.effective_batch_size
    per_epoch = steps_per_epoch(n, E)
    if per_epoch == 0:
        raise ConfigError(f"the training set has {n} samples, fewer than one effective batch ({E})")
    total = cfg.epochs * per_epoch if cfg.max_steps is None else min(cfg.epochs * per_epoch, cfg.max_steps)
    set_seed(cfg.seed, device_specific=True)  # seed + rank: dropout differs between data shards

    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)
    ckpt = Checkpointer(ckpt_dir, rank, accelerator.wait_for_everyone)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt.clean_partial()
    step, rows = 0, []
    latest = ckpt.latest()
    if latest is not None:
        state, rows = ckpt.load(latest, raw, optimizer)
        step = state["step"]
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
    resumed_from = step
    collate = collate or torch.utils.data.default_collate
    # the training stage's line shows "step i/total loss ..."; run outside a stage, a "train" line of its own
    bar = bars.enter_context(step_progress(total, "step", done=step, enabled=cfg.progress and rank == 0,
                                           standalone="train"))
    t_start = time.perf_counter()
    while step < total:
        epoch, in_epoch = divmod(step, per_epoch)
        last = min(per_epoch, total - epoch * per_epoch)  # steps of this epoch this run will take
        perm = epoch_permutation(n, cfg.seed, epoch)
        batches = [b for s in range(in_epoch, last)
                   for b in rank_batches(perm, s, E, cfg.per_device_batch_size, world, rank)]
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, collate_fn=collate, num_workers=cfg.num_workers,
            # its own generator: creating the iterator must not draw from the global RNG (dropout's)
            generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch),
            persistent_workers=False, pin_memory=accelerator.device.type == "cuda")
        micro = iter(loader)
        for _ in range(in_epoch, last):
            t0 = time.perf_counter()
            lr = lr_at(step, cfg, per_epoch, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            sums: dict[str, torch.Tensor] = {}
            for _ in range(cfg.grad_accumulation_steps):
                batch = to_device(next(micro), accelerator.device)
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        terms = _terms(loss_fn(model, batch))
                    accelerator.backward(terms["loss"])
                    if accelerator.sync_gradients and cfg.grad_clip is not None:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
            step += 1
            if hasattr(raw, "on_step_end"):  # e.g. an EMA target encoder's update (InstructCIR)
                raw.on_step_end(step)
            names = sorted(sums)
            means = accelerator.reduce(torch.stack([sums[k] for k in names]) / cfg.grad_accumulation_steps,
                                       reduction="mean").tolist()
            seconds = time.perf_counter() - t0
            row = {"step": step, "epoch": epoch, **dict(zip(names, means)), "lr": lr,
                   "samples_per_s": E / seconds if seconds > 0 else math.inf, "seconds": seconds}
            rows.append(row)
            if log is not None and rank == 0:
                log(row)
            bar.update(1)
            bar.postfix(f"loss {row['loss']:.4f} · {row['samples_per_s']:.0f} samples/s")
            if step % cfg.checkpoint_every == 0 and step < total:
                scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
                ckpt.save(step, raw, optimizer, {"step": step, "epoch": epoch, "in_epoch": step - epoch * per_epoch,
                                                 "world_size": world, "scaler": scaler}, rows)
        del micro, loader
    stats = {"steps": total, "epochs": math.ceil(total / per_epoch), "samples": total * E,
             "resumed_from": resumed_from, "world_size": world, "steps_per_epoch": per_epoch,
             "seconds": round(time.perf_counter() - t_start, 3)}
    log_table = pa.Table.from_pylist(rows)
    final = ckpt_dir / FINAL
    if rank == 0:
        _write_final(final, raw, log_table, stats)
    accelerator.wait_for_everyone()
    return FitResult(raw, log_table, final, stats)


def _write_final(final: Path, model: torch.nn.Module, log: pa.Table, stats: dict) -> None:
    """model.safetensors (+ the model's own files), log, plot and result.json, renamed into place at once."""
    tmp = final.parent / f".tmp-{FINAL}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    if hasattr(model, "export_extras"):  # configs, tokenizer files (HF save_pretrained without weights)
        model.export_extras(tmp)
    pq.write_table(log, tmp / "log.parquet")
    (tmp / "loss.png").write_bytes(loss_curve_png(log))
    (tmp / "result.json").write_text(json.dumps(stats, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def _terms(out: Mapping[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {"loss": out}
    if "loss" not in out:
        raise ValueError(f"loss_fn must return a 'loss' entry to optimise (got {sorted(out)})")
    return dict(out)


def _param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """Trainable parameters only (frozen towers and LoRA bases stay out of the optimizer)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters")
    if cfg.decay_norm_and_bias:
        return [{"params": [p for _, p in params], "weight_decay": cfg.weight_decay}]
    decay = [p for _, p in params if p.ndim >= 2]
    rest = [p for _, p in params if p.ndim < 2]
    return [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                        {"params": rest, "weight_decay": 0.0}) if g["params"]]


def _plugins(cfg: TrainConfig) -> dict:
    a, out = cfg.accelerate, {}
    if a.fsdp is not None:
        from accelerate import FullyShardedDataParallelPlugin

        out["fsdp_plugin"] = FullyShardedDataParallelPlugin(**a.fsdp)
    if a.deepspeed is not None:
        from accelerate import DeepSpeedPlugin

        out["deepspeed_plugin"] = DeepSpeedPlugin(**a.deepspeed)
    if a.ddp is not None:
        from accelerate import DistributedDataParallelKwargs

        out["kwargs_handlers"] = [DistributedDataParallelKwargs(**a.ddp)]
    return out
