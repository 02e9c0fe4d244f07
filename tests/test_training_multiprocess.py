"""Data-parallel equivalence on CPU: 2 processes (torchrun, gloo) at half the per-process batch reach the weights
one process reaches, up to float noise — the data order is sharded, not re-drawn, and InfoNCE gathers the
negatives of every process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cirflow.schemas.training import Ref, TrainConfig, TrainSpec
from cirflow.training import launch
from cirflow.training.launch import command

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import training_toy as toy  # noqa: E402


def _spec(tmp_path: Path, train: str, processes: int, effective: int = 32) -> TrainSpec:
    kind = "in_process" if processes == 1 else "torchrun"
    cfg = TrainConfig(epochs=2, per_device_batch_size=32 // processes, effective_batch_size=effective, lr=3e-3,
                      checkpoint_every=5, progress=False, launcher={"kind": kind, "num_processes": processes},
                      schedule={"kind": "step", "gamma": 0.5, "step_epochs": 1})
    return TrainSpec(model=Ref(target="training_toy:build"),
                     dataset=Ref(target="training_toy:dataset", kwargs={"paths": [train]}),
                     loss=Ref(target="training_toy:infonce"), train=cfg,
                     ckpt_dir=str(tmp_path / f"p{processes}-e{effective}"))


@pytest.mark.slow
def test_two_gloo_processes_equal_one(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    train = toy.write_vectors(tmp_path / "train.parquet", 256, seed=1)
    one = load_file(str(launch(_spec(tmp_path, train, 1)) / "model.safetensors"))
    two = load_file(str(launch(_spec(tmp_path, train, 2)) / "model.safetensors"))
    init = toy.build().state_dict()
    assert one.keys() == two.keys()
    assert max((one[k] - init[k]).abs().max().item() for k in one) > 1e-2  # it trained
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), (k, (one[k] - two[k]).abs().max().item())
    # the comparison can fail: another effective batch (other micro-batches, other lr steps) lands elsewhere
    other = load_file(str(launch(_spec(tmp_path, train, 1, effective=64)) / "model.safetensors"))
    assert any(not torch.allclose(one[k], other[k], atol=1e-4) for k in one)


def test_launch_commands(tmp_path):
    spec = _spec(tmp_path, "x.parquet", 2)
    cmd = command(spec, tmp_path / "spec.json")
    if not torch.cuda.is_available():
        assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert cmd[-4:] == ["-m", "cirflow.training.worker", "--spec", str(tmp_path / "spec.json")]
    assert os.path.basename(cmd[0]).startswith("python")
