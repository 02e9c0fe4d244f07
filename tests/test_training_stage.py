"""A train_* stage stores a model like any artifact: cached on a second call, a new key for a new
hyper-parameter (not for runtime knobs), no pickle anywhere, and usable by reference as a local model folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from cirflow.schemas.errors import StoreError
from cirflow.schemas.training import Ref, TrainConfig
from cirflow.storage import ArtifactStore, begin
from cirflow.storage.keys import canonical, stage_key
from cirflow.tasks.stage import execute, key_params
from cirflow.tasks.training import TrainParams, TrainRuntime, TrainStage, resolve_model_ref
from cirflow.training import load_model

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import training_toy as toy  # noqa: E402

PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}


class TrainToy(TrainStage):
    name = "train_toy"
    inputs = ("vectors",)


def _params(**train) -> TrainParams:
    cfg = TrainConfig(**{"epochs": 6, "per_device_batch_size": 32, "effective_batch_size": 64, "lr": 3e-3,
                         "checkpoint_every": 4, "progress": False, **train})
    return TrainParams(base={"name": "toy-dual-mlp", "revision": "random-init-seed0"},
                       model=Ref(target="training_toy:build", kwargs={"hidden": 64}),
                       dataset=Ref(target="training_toy:dataset"), loss=Ref(target="training_toy:infonce"),
                       train=cfg)


def _key(params: TrainParams, vectors_key: str) -> str:
    return stage_key(TrainToy.name, TrainToy.version, canonical(key_params(params)), {"vectors": vectors_key})


def test_train_stage_cached_keyed_pickle_free_and_resolvable(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    store = ArtifactStore(str(tmp_path / "store"))
    run = begin(store, "toy_vectors", "1", {"n": 384, "seed": 1}, inputs={})
    run.write_table("data", toy.vectors(384, seed=1))
    vectors = run.finish()

    art = execute(TrainToy, store, {"vectors": vectors}, _params(), TrainRuntime(progress=False))
    assert art.report.status == "computed"
    files = {f.name for f in art.manifest.files}
    assert {"model/model.safetensors", "model/factory.json", "loss.png"} <= files
    log = art.read("log")
    assert log.num_rows == art.manifest.stats["steps"] == 6 * (384 // 64)
    assert "loss_q2t" in log.column_names
    folder = Path(store.artifact_dir("train_toy", art.key))
    assert not (folder / "_checkpoints").exists()
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.suffix not in PICKLE_SUFFIXES, path
            assert not path.read_bytes()[:2].startswith(b"\x80"), f"{path} looks like a pickle"

    again = execute(TrainToy, store, {"vectors": vectors}, _params(), TrainRuntime(progress=False))
    assert again.report.status == "cached" and again.key == art.key
    knobs = execute(TrainToy, store, {"vectors": vectors}, _params(checkpoint_every=100, num_workers=1),
                    TrainRuntime(progress=False))
    assert knobs.report.status == "cached" and knobs.key == art.key

    local = resolve_model_ref(store, "stage:train_toy")
    model = load_model(local)
    held_out = toy.vectors(256, seed=99)
    assert toy.recall_at_1(model, held_out) > toy.recall_at_1(toy.build(hidden=64), held_out) + 0.3
    assert resolve_model_ref(store, f"key:{art.key[:10]}") == local

    other = execute(TrainToy, store, {"vectors": vectors}, _params(lr=1e-3, epochs=1), TrainRuntime(progress=False))
    assert other.report.status == "computed" and other.key != art.key
    keys = {name: _key(p, vectors.key) for name, p in {
        "base": _params(), "seed": _params(seed=1), "schedule": _params(schedule={"kind": "cosine"}),
        "precision": _params(mixed_precision="bf16"), "micro-batch": _params(per_device_batch_size=16)}.items()}
    assert keys["base"] == art.key and len(set(keys.values())) == len(keys)
    assert _key(_params(per_device_batch_size=16, launcher={"kind": "torchrun", "num_processes": 2}),
                vectors.key) == art.key  # 2 processes × 16 = the same micro-batch as 1 × 32
    with pytest.raises(StoreError, match="matches 2 trained models"):
        resolve_model_ref(store, "stage:train_toy")
    assert resolve_model_ref(store, f"stage:train_toy@{other.key[:12]}") != local
    weights = dict(load_model(resolve_model_ref(store, other.key[:12])).state_dict())
    assert any(not torch.equal(weights[k], v) for k, v in model.state_dict().items())
    with pytest.raises(StoreError, match="not a trained model"):
        resolve_model_ref(store, vectors.key[:12])
