"""The train_mvft stage under kill -9 and on two processes (tiny random-weight BLIP-2 Q-Former, mini benchmark rows).

* kill -9 the stage's process after its first checkpoint, rerun the stage: it resumes from the checkpoint and
  the stored model.safetensors is byte-identical to an uninterrupted run's (sha256).
* 1 process vs 2 processes (torchrun, gloo, the engine's launcher) at half the per-process batch: the same
  weights up to float noise (MVFTLoss gathers the negatives of every process), attention key biases aside (their
  exact gradient is zero: see the test).
"""

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
import torch
from safetensors.torch import load_file

from cirflow.demo.mvft import training_rows
from cirflow.models.mvft import build_tiny_mvft

pytestmark = pytest.mark.slow

# The stage as a user's run starts it: training rows -> mvft_training_data -> train_mvft, in a process of its own.
STAGE = """
import json, sys
from cirflow.schemas.mvft import MVFTTrainSection
from cirflow.storage import ArtifactStore
from cirflow.tasks.mvft.mvft_training_data import from_rows
from cirflow.tasks.training import resolve_model_ref
from cirflow.tasks.training.train_mvft import run
store_url, rows, base, section = sys.argv[1:5]
store = ArtifactStore(store_url)
art = run(store, from_rows(store, rows, progress=False), base, MVFTTrainSection.model_validate_json(section),
          seed=0, progress=False)
print("RESULT " + json.dumps({"key": art.key, "status": art.report.status, "stats": art.manifest.stats,
                              "model": str(resolve_model_ref(store, "key:" + art.key))}))
"""


def _section(processes: int = 1, checkpoint_every: int = 2) -> str:
    launcher = {"kind": "in_process" if processes == 1 else "torchrun", "num_processes": processes}
    return json.dumps({"num_query_tokens": 4, "train": {
        "epochs": 2, "lr": 1e-3, "effective_batch_size": 16, "per_device_batch_size": 16 // processes,
        "checkpoint_every": checkpoint_every, "progress": False, "launcher": launcher}})


def _start(store: Path, rows: Path, base: Path, section: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-c", STAGE, str(store), str(rows), str(base), section], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen) -> dict:
    out = proc.communicate(timeout=170)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def inputs(tmp_path, mini_bench) -> tuple[Path, Path]:
    rows = tmp_path / "rows.parquet"
    pq.write_table(training_rows(mini_bench, per_image=1).slice(0, 64), rows)  # 4 steps an epoch, 8 in all
    return rows, build_tiny_mvft(tmp_path / "tiny-mvft")


def test_kill_9_mid_training_then_rerun_equals_uninterrupted(tmp_path, inputs):
    rows, base = inputs
    killed = tmp_path / "killed-store"
    proc = _start(killed, rows, base, _section())
    deadline = time.monotonic() + 120
    pointers: list[Path] = []
    while not pointers and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
        pointers = list(killed.glob("train_mvft/**/_checkpoints/latest"))
    assert pointers, proc.communicate()[0].decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(killed.glob("train_mvft/**/_checkpoints/final/result.json")), "finished before the kill"

    resumed = _finish(_start(killed, rows, base, _section()))
    plain = _finish(_start(tmp_path / "plain-store", rows, base, _section()))
    assert resumed["key"] == plain["key"] and resumed["status"] == plain["status"] == "computed"
    assert 0 < resumed["stats"]["resumed_from"] < 8 and plain["stats"]["resumed_from"] == 0
    a, b = _sha(Path(resumed["model"]) / "model.safetensors"), _sha(Path(plain["model"]) / "model.safetensors")
    print(f"\nsha256 killed+resumed  {a}\nsha256 uninterrupted   {b}")
    assert a == b
    untrained = _sha(base / "model.safetensors")
    assert a != untrained  # it trained
    # a finished training is cached like any stage
    assert _finish(_start(killed, rows, base, _section()))["status"] == "cached"


def test_two_gloo_processes_equal_one(tmp_path, inputs):
    rows, base = inputs
    one = _finish(_start(tmp_path / "one", rows, base, _section(1, checkpoint_every=100)))
    two = _finish(_start(tmp_path / "two", rows, base, _section(2, checkpoint_every=100)))
    assert one["key"] == two["key"]  # the launcher and per-process batch are not in the key: same model
    w1, w2 = (load_file(str(Path(d["model"]) / "model.safetensors")) for d in (one, two))
    w0 = load_file(str(base / "model.safetensors"))
    assert w1.keys() == w2.keys() == w0.keys()
    # Attention key biases are left out: softmax(q·(k + b)) = softmax(q·k + q·b) shifts every score of a query by
    # the same q·b, so their exact gradient is 0 and what they receive is float noise, which AdamW (m / √v)
    # scales up to lr-sized steps in either run. Every other weight agrees to ~1e-7 after ~7e-3 updates.
    learned = [k for k in w1 if not k.endswith("attention.key.bias")]
    assert len(learned) > 0.9 * len(w1)
    assert max((w1[k] - w0[k]).abs().max().item() for k in learned) > 1e-3  # it trained
    worst = max((w1[k] - w2[k]).abs().max().item() for k in learned)
    print(f"\nmax |w(1 process) - w(2 processes)| = {worst:.2e} over {len(learned)} tensors")
    for k in learned:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), (k, (w1[k] - w2[k]).abs().max().item())
