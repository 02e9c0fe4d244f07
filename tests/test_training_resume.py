"""kill -9 in the middle of a training, rerun: the final weights (and every logged loss) equal an uninterrupted
run's bit for bit — model, AdamW moments, learning-rate step, data position and dropout RNG all resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cirflow.schemas.training import Ref, TrainConfig, TrainSpec

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import training_toy as toy  # noqa: E402


def _spec(tmp_path: Path, train: str, name: str) -> Path:
    cfg = TrainConfig(epochs=4, per_device_batch_size=8, effective_batch_size=16, lr=3e-3, checkpoint_every=6,
                      progress=False, schedule={"kind": "cosine", "warmup_steps": 5})
    spec = TrainSpec(model=Ref(target="training_toy:build", kwargs={"dropout": 0.1}),
                     dataset=Ref(target="training_toy:dataset", kwargs={"paths": [train]}),
                     loss=Ref(target="training_toy:infonce", kwargs={"sleep": 0.03}), train=cfg,
                     ckpt_dir=str(tmp_path / name))
    path = tmp_path / f"{name}.json"
    path.write_text(spec.model_dump_json())
    return path


def _worker(spec: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "cirflow.training.worker", "--spec", str(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_kill_9_then_rerun_equals_uninterrupted(tmp_path):
    train = toy.write_vectors(tmp_path / "train.parquet", 256, seed=1)  # 16 steps per epoch, 64 in all
    killed = _spec(tmp_path, train, "killed")
    proc = _worker(killed)
    pointer = tmp_path / "killed" / "latest"
    deadline = time.monotonic() + 60
    while not pointer.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pointer.exists(), proc.communicate()[0].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists(), "the run finished before it could be killed"

    rerun = _worker(killed)
    out = rerun.communicate(timeout=120)[0].decode()
    assert rerun.returncode == 0, out[-2000:]
    plain = _worker(_spec(tmp_path, train, "plain"))
    out = plain.communicate(timeout=120)[0].decode()
    assert plain.returncode == 0, out[-2000:]

    a, b = tmp_path / "killed" / "final", tmp_path / "plain" / "final"
    assert pq.read_table(a / "log.parquet").num_rows == 64
    resumed_from = json.loads((a / "result.json").read_text())["resumed_from"]
    assert 0 < resumed_from < 64
    assert _sha(a / "model.safetensors") == _sha(b / "model.safetensors")
    for term in ("loss", "loss_q2t", "loss_t2q", "lr"):
        assert pq.read_table(a / "log.parquet").column(term).to_pylist() == \
            pq.read_table(b / "log.parquet").column(term).to_pylist(), term
    # checkpoints hold no pickle: safetensors, JSON, Parquet and the pointer only
    suffixes = {p.suffix for p in (tmp_path / "killed").rglob("*") if p.is_file()}
    assert suffixes <= {".safetensors", ".json", ".parquet", ".png", ""}, suffixes
