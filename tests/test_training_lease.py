"""Two identical trainings (same key) started at once on one store: the training stage's whole-stage lease
(tasks/training/lease.py) makes the second wait for the first instead of writing the same checkpoint folder.

* both processes end with the same stored model: the first computed it, the second waited and returned it as
  "cached" (without the lease both would train into one `_checkpoints/` and both report "computed");
* the holder renews its lease from a heartbeat while it trains (the lease time here is far shorter than the
  training), so a live training is never taken over;
* when the holder dies (kill -9), the waiting process takes the lease over and resumes from its checkpoints, and
  the stored weights equal an uninterrupted training's bit for bit.

The model is the engine tests' toy dual encoder (tests/training_toy.py), trained through a real TrainStage.
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

import pytest

from cirflow.storage import ArtifactStore, begin
from cirflow.storage.manifest import MANIFEST

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import training_toy as toy  # noqa: E402

pytestmark = pytest.mark.slow

# A user's stage run, in a process of its own: the toy training as a TrainStage over a stored vectors artifact.
STAGE = """
import json, sys
from cirflow.schemas.training import Ref, TrainConfig
from cirflow.storage import ArtifactStore
from cirflow.tasks.stage import execute
from cirflow.tasks.training import TrainParams, TrainRuntime, TrainStage, resolve_model_ref

class TrainToy(TrainStage):
    name = "train_toy"
    inputs = ("vectors",)

store_url, vectors_key, sleep = sys.argv[1:4]
store = ArtifactStore(store_url)
train = TrainConfig(epochs=2, per_device_batch_size=16, effective_batch_size=16, lr=3e-3, checkpoint_every=3,
                    progress=False)
params = TrainParams(base={"model": "toy"}, model=Ref(target="training_toy:build"),
                     dataset=Ref(target="training_toy:dataset"),
                     loss=Ref(target="training_toy:infonce", kwargs={"sleep": float(sleep)}), train=train)
art = execute(TrainToy, store, {"vectors": store.find(vectors_key)}, params, TrainRuntime(progress=False))
print("RESULT " + json.dumps({"key": art.key, "status": art.report.status, "stats": art.manifest.stats,
                              "model": str(resolve_model_ref(store, "key:" + art.key))}), flush=True)
"""
SLEEP = 0.25  # seconds per step: 32 steps, ~8 s of training, longer than the 5 s lease below


def _vectors(store: ArtifactStore) -> str:
    run = begin(store, "toy_vectors", "1", {"n": 256, "seed": 1}, inputs={})
    run.write_table("data", toy.vectors(256, seed=1))
    return run.finish().key


def _start(store: Path, vectors: str) -> subprocess.Popen:
    # a 5 s lease: without the heartbeat (every 1 s) the second process would take it over while the first still
    # trains. (Shorter leases flake on a loaded box: a C call holding the GIL for seconds delays the heartbeat.)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CIRFLOW_LEASE_SECONDS": "5", "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-c", STAGE, str(store), vectors, str(SLEEP)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen) -> dict:
    out = proc.communicate(timeout=150)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not list(root.glob(pattern)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(root.glob(pattern)), f"{pattern} never appeared: " + proc.communicate()[0].decode()[-3000:]


def _sha(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_second_identical_training_waits_and_reuses_the_first(tmp_path):
    store = tmp_path / "store"
    vectors = _vectors(ArtifactStore(str(store)))
    first = _start(store, vectors)
    _wait_for("train_toy/*/_leases/training.*.json", store, first)  # the first holds the lease: it trains
    assert not list(store.glob(f"train_toy/*/{MANIFEST}"))
    second = _start(store, vectors)
    a, b = _finish(first), _finish(second)
    assert a["key"] == b["key"]
    assert a["status"] == "computed" and a["stats"]["resumed_from"] == 0
    assert b["status"] == "cached", b  # it waited for the first one's manifest and trained nothing
    assert a["model"] == b["model"] and _sha(Path(a["model"])) == _sha(Path(b["model"]))
    folder = next(store.glob("train_toy/*"))
    assert not (folder / "_checkpoints").exists() and not list(folder.glob("_leases/training.*"))


def test_waiting_training_takes_over_a_killed_one_and_resumes(tmp_path):
    store = tmp_path / "store"
    vectors = _vectors(ArtifactStore(str(store)))
    first = _start(store, vectors)
    _wait_for("train_toy/*/_checkpoints/latest", store, first)
    second = _start(store, vectors)
    time.sleep(1.0)  # the second is waiting on the lease (its interpreter start alone takes longer than this)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert not list(store.glob("train_toy/*/_checkpoints/final/result.json")), "finished before the kill"
    taken = _finish(second)
    assert taken["status"] == "computed" and 0 < taken["stats"]["resumed_from"] < 32, taken

    plain_store = tmp_path / "plain"
    plain = _finish(_start(plain_store, _vectors(ArtifactStore(str(plain_store)))))
    assert plain["key"] == taken["key"] and plain["stats"]["resumed_from"] == 0
    assert _sha(Path(taken["model"])) == _sha(Path(plain["model"]))
