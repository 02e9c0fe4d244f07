"""PEFUSE T→I with Prefect's RayTaskRunner on a local Ray cluster: the model stages run as shard partitions on
Ray workers, committing to the shared store, and the result equals a local run's artifact for artifact."""

from __future__ import annotations

import os

import pytest

from cirflow.cli.run import run_config
from cirflow.schemas.config import parse_config
from cirflow.storage import ArtifactStore

pytestmark = pytest.mark.slow


def _cfg(tmp_path, name, mini_bench, tiny_models, executor):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    return parse_config({
        "name": name, "store": str(tmp_path / name / "store"), "output_dir": str(tmp_path / name / "runs"),
        "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
        "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
        "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
        "compose": {"prompt": str(prompt), "shard_size": 8, "sampling": {"temperature": 0.0, "max_tokens": 6}},
        "embed": {"shard_size": 16},
        "executor": executor,
    })


def test_ray_partitions_equal_a_local_run(tmp_path, mini_bench, tiny_models, prefect_server):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster on loopback
    ray_doc = run_config(_cfg(tmp_path, "ray", mini_bench, tiny_models, {
        "kind": "ray", "workers": 2,
        "init_kwargs": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}}), progress=False)
    status = {s["stage"]: s["status"] for s in ray_doc["stages"]}
    assert status["compose_target_text"] == "distributed" and status["embed_images"] == "distributed"
    compose = next(s for s in ray_doc["stages"] if s["stage"] == "compose_target_text")
    assert compose["stats"]["partitions"] == 2 and compose["stats"]["items"] == 30

    local_doc = run_config(_cfg(tmp_path, "local", mini_bench, tiny_models, {"kind": "local"}), progress=False)
    assert [s["key"] for s in local_doc["stages"]] == [s["key"] for s in ray_doc["stages"]]
    assert local_doc["metrics"] == ray_doc["metrics"]
    ray_store, local_store = ArtifactStore(str(tmp_path / "ray" / "store")), ArtifactStore(str(tmp_path / "local" / "store"))
    for s in ray_doc["stages"]:
        a, b = ray_store.find(s["key"]), local_store.find(s["key"])
        for table in a.manifest.tables():
            ta, tb = a.read(table), b.read(table)
            drop = [c for c in ("seconds",) if c in ta.column_names]  # wall time is the one thing that differs
            assert ta.drop_columns(drop).equals(tb.drop_columns(drop)), (s["stage"], table)
    # the driver wrote each manifest once all partitions had committed: the store verifies clean
    assert ray_store.verify() == []
