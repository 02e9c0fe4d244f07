"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

    <ckpt_dir>/step-00000120/   model.safetensors, optimizer.safetensors + optimizer.json (the flattened
                                optimizer.state_dict()), state.json (data position, schedule step, grad scaler),
                                rng-rank<r>.safetensors + rng-rank<r>.json (per process), log.parquet
    <ckpt_dir>/latest           the name of the newest complete checkpoint, written last

A checkpoint is written under `.tmp-step-…` and renamed once every process has written its part; `latest` is
replaced after the rename, and older checkpoints are removed after that, so a kill -9 at any moment leaves
`latest` naming a complete folder.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

LATEST = "latest"
FORMAT = 1


# --------------------------------------------------------------------------- state dicts as JSON + tensors
def flatten_state(obj: Any, path: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """A nested state (dicts with int or str keys, lists, tuples, tensors, numbers) as a JSON document whose
    tensors are replaced by references into a flat {name: tensor} dict. Dict keys keep their type."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x: Any, where: str) -> Any:
        if isinstance(x, torch.Tensor):
            name = where or "value"
            tensors[name] = x.detach().cpu().contiguous()
            return {"__tensor__": name}
        if isinstance(x, dict):
            return {"__dict__": [[k, walk(v, f"{where}/{k}" if where else str(k))] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v, f"{where}/{i}") for i, v in enumerate(x)]}
        if isinstance(x, list):
            return [walk(v, f"{where}/{i}") for i, v in enumerate(x)]
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot checkpoint a {type(x).__name__} at {where!r} without pickle")

    return walk(obj, path), tensors


def unflatten_state(doc: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(doc, list):
        return [unflatten_state(v, tensors) for v in doc]
    if isinstance(doc, dict):
        if "__tensor__" in doc:
            return tensors[doc["__tensor__"]]
        if "__tuple__" in doc:
            return tuple(unflatten_state(v, tensors) for v in doc["__tuple__"])
        return {k: unflatten_state(v, tensors) for k, v in doc["__dict__"]}
    return doc


def _write_state(folder: Path, stem: str, state: Any) -> None:
    doc, tensors = flatten_state(state)
    save_file(tensors, str(folder / f"{stem}.safetensors"))
    (folder / f"{stem}.json").write_text(json.dumps(doc))


def _read_state(folder: Path, stem: str) -> Any:
    tensors = load_file(str(folder / f"{stem}.safetensors"))
    return unflatten_state(json.loads((folder / f"{stem}.json").read_text()), tensors)


# --------------------------------------------------------------------------- RNG states
def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": _np_state_json(np.random.get_state(legacy=False))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = dict(state["numpy"])
    np_state["state"] = {**np_state["state"], "key": np.asarray(np_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(np_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _np_state_json(s: dict) -> dict:
    return {**s, "state": {**s["state"], "key": s["state"]["key"].tolist()}}


# --------------------------------------------------------------------------- checkpoint folders
class Checkpointer:
    def __init__(self, ckpt_dir: str | Path, rank: int, barrier: Callable[[], None]):
        self.dir, self.rank, self.barrier = Path(ckpt_dir), rank, barrier

    def latest(self) -> Path | None:
        pointer = self.dir / LATEST
        if not pointer.is_file():
            return None
        folder = self.dir / pointer.read_text().strip()
        return folder if (folder / "state.json").is_file() else None

    def clean_partial(self) -> None:
        """Remove what a killed run left half-written (rank 0, before training starts)."""
        if self.rank == 0 and self.dir.is_dir():
            for p in self.dir.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        self.barrier()

    def save(self, step: int, model: torch.nn.Module, optimizer: Any, state: dict, log_rows: list[dict]) -> Path:
        name = f"step-{step:08d}"
        tmp = self.dir / f".tmp-{name}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        rng = capture_rng()
        _write_state(tmp, f"rng-rank{self.rank}", {k: v for k, v in rng.items() if k != "numpy" and k != "python"})
        (tmp / f"rng-rank{self.rank}-host.json").write_text(json.dumps({"python": rng["python"],
                                                                         "numpy": rng["numpy"]}))
        if self.rank == 0:
            save_model(model, str(tmp / "model.safetensors"))
            _write_state(tmp, "optimizer", optimizer.state_dict())
            pq.write_table(pa.Table.from_pylist(log_rows), tmp / "log.parquet")
            (tmp / "state.json").write_text(json.dumps({"format": FORMAT, **state}))
        self.barrier()
        if self.rank == 0:
            final = self.dir / name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer_tmp = self.dir / f".tmp-{LATEST}"
            pointer_tmp.write_text(name)
            os.replace(pointer_tmp, self.dir / LATEST)  # the commit point
            for old in self.dir.glob("step-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return self.dir / name

    def load(self, folder: Path, model: torch.nn.Module, optimizer: Any) -> tuple[dict, list[dict]]:
        """Restore model, optimizer and this rank's RNG; returns (state, log rows)."""
        load_model(model, str(folder / "model.safetensors"))
        optimizer.load_state_dict(_read_state(folder, "optimizer"))
        state = json.loads((folder / "state.json").read_text())
        rng_file = folder / f"rng-rank{self.rank}.safetensors"
        if rng_file.is_file():  # absent when resuming with more processes than the checkpoint had
            rng = _read_state(folder, f"rng-rank{self.rank}")
            rng.update(json.loads((folder / f"rng-rank{self.rank}-host.json").read_text()))
            restore_rng(rng)
        rows = pq.read_table(folder / "log.parquet").to_pylist() if state["step"] else []
        return state, rows
