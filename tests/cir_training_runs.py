"""CoLLM / InstructCIR training stages as a user's run starts them, each in a process of its own, for the resume
(kill -9) and multi-process tests: the procedural drawings of test_collm_shapes.py are ingested through the real
ingest_collection stage, MTCIR-shaped texts stored as an artifact, then one training stage runs into the store.

    inputs = write_inputs(tmp / "data", copies=1, triplets=64)          # drawings, pairs.parquet, texts.json
    proc = start(store_dir, inputs, {"stage": "collm", "settings": {...}, "train": {...}})
    kill_after_first_checkpoint(proc, store_dir, "train_collm")
    result = finish(start(...))     # {"key", "status", "stats", "model"}
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

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import test_collm_shapes as shapes  # noqa: E402

SCRIPT = """
import json, sys
from pathlib import Path
import pyarrow as pa
from cirflow.schemas.builds import MTCIR_TEXTS, CollectionSource
from cirflow.storage import ArtifactStore, begin
from cirflow.tasks.builds import ingest_collection
from cirflow.tasks.stage import execute
from cirflow.tasks.training import TrainRuntime, resolve_model_ref

store_url, data, spec = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
store = ArtifactStore(store_url)
coll = ingest_collection.run(store, CollectionSource(kind="parquet", uri=str(data / "pairs.parquet")),
                             shard_size=64, progress=False)
rows = json.loads((data / "texts.json").read_text())
run = begin(store, "mtcir_texts", "test", {"rows": [r["pair_id"] for r in rows]}, inputs={})
if run.cached:  # a rerun into the same store
    texts = run.artifact
else:
    run.write_table("data", pa.Table.from_pylist(rows, schema=MTCIR_TEXTS))
    texts = run.finish()
rt = TrainRuntime(progress=False)
stage = spec["stage"]
if stage in ("collm", "collm_triplets"):
    from cirflow.tasks.training.train_collm import TrainCoLLM, TrainCoLLMTriplets, collm_params, collm_train_config
    train = collm_train_config(**spec["train"])
    if stage == "collm":
        art = execute(TrainCoLLM, store, {"collection": coll, "captions": None},
                      collm_params(spec["settings"], train, loss=spec.get("loss")), rt)
    else:
        art = execute(TrainCoLLMTriplets, store, {"texts": texts, "collection": coll, "init": None},
                      collm_params(spec["settings"], train, triplets=True, loss=spec.get("loss")), rt)
else:
    from cirflow.tasks.training.train_instructcir import TrainInstructCIR, instructcir_params, instructcir_train_config
    inputs = {"texts": texts, "collection": coll}
    art = execute(TrainInstructCIR, store, inputs, instructcir_params(
        spec["settings"], instructcir_train_config(**spec["train"]), tau=spec.get("tau", 30.0)), rt)
    if stage == "combiner":
        from cirflow.tasks.training.train_instructcir_combiner import (TrainInstructCIRCombiner, combiner_params,
                                                                      combiner_train_config)
        art = execute(TrainInstructCIRCombiner, store, {**inputs, "backbone": art},
                      combiner_params(art, combiner_train_config(**spec["combiner"])), rt)
print("RESULT " + json.dumps({"key": art.key, "status": art.report.status, "stats": art.manifest.stats,
                              "model": str(resolve_model_ref(store, "key:" + art.key))}), flush=True)
"""


def write_inputs(root: Path, copies: int = 1, triplets: int = 64) -> Path:
    """Drawings of the 48 scenes, their pairs.parquet (path, caption) and MTCIR-shaped texts (texts.json)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = shapes.make_images(root, copies=copies)
    pq.write_table(pa.table({"path": [Path(r["path"]).name for r in rows],
                             "caption": [r["caption"] for r in rows]}), root / "pairs.parquet")
    (root / "texts.json").write_text(json.dumps(shapes.triplet_rows(rows, triplets, seed=1)))
    return root


def start(store: Path, data: Path, spec: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(store), str(data), json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out = proc.communicate(timeout=timeout)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])


def kill_after_first_checkpoint(proc: subprocess.Popen, store: Path, stage: str, seconds: float = 240) -> None:
    """kill -9 the stage's process as soon as its training's first checkpoint is committed (`latest` written)."""
    deadline = time.monotonic() + seconds
    pointers: list[Path] = []
    while not pointers and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
        pointers = list(store.glob(f"{stage}/*/_checkpoints/latest"))
    assert pointers, proc.communicate()[0].decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(store.glob(f"{stage}/*/_checkpoints/final/result.json")), "finished before the kill"


def sha256(folder: str | Path) -> str:
    return hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()


def launcher(processes: int) -> dict:
    return {"kind": "in_process" if processes == 1 else "torchrun", "num_processes": processes}
