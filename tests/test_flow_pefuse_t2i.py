"""PEFUSE T→I end to end under a real (temporary) Prefect server, on the generated mini benchmark with tiny
random-weight models: cold store computes, warm store computes nothing, an encoder change recomputes only
what depends on the encoder."""

from __future__ import annotations

import json

import pytest

from cirflow.cli.run import run_config
from cirflow.evaluation.submission import read_submission, validate_submission
from cirflow.flows.registry import parse_config
from cirflow.storage import ArtifactStore

pytestmark = pytest.mark.slow


def config(tmp_path, mini_bench, tiny_models, benchmark="cirr", encoder="encoder", **compose):
    prompt = tmp_path / "short_prompt.txt"
    # a short template keeps the tiny byte-level model's prompts (and the test) short
    prompt.write_text("Describe the target image after this change: {modification}")
    return parse_config({
        "name": f"test-{benchmark}", "store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": benchmark, "data_root": str(mini_bench[benchmark]), "split": "val"},
        "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
        "encoder": {"model": f"local-dir:{tiny_models[encoder]}", "device": "cpu", "num_workers": 0},
        "compose": {"prompt": str(prompt), "shard_size": 8,
                    "sampling": {"temperature": 0.0, "max_tokens": 8, "seed": 0} | compose},
        "embed": {"shard_size": 16},
    })


def statuses(doc):
    return {s["stage"]: s["status"] for s in doc["stages"]}


def test_cold_warm_and_encoder_variant(tmp_path, mini_bench, tiny_models, prefect_server):
    cold = run_config(config(tmp_path, mini_bench, tiny_models), progress=False)
    assert set(statuses(cold).values()) == {"computed"}
    assert set(cold["metrics"]) >= {"recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1",
                                    "recall_subset@2", "recall_subset@3"}
    assert all(0.0 <= v <= 100.0 for v in cold["metrics"].values())
    compose = next(s for s in cold["stages"] if s["stage"] == "compose_target_text")
    assert compose["shards_computed"] == 4 and compose["stats"]["items"] == 30

    # the written test-server files are valid submissions in the official format
    files = {p.rsplit("/", 1)[-1]: p for p in cold["submission_files"]}
    assert set(files) == {"recall_val.json", "recall_subset_val.json"}
    recall = read_submission(files["recall_val.json"])
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    from cirflow.tasks.benchmarks import load_benchmark
    queries = load_benchmark("cirr", str(mini_bench["cirr"])).queries
    assert validate_submission("cirr", queries, recall, read_submission(files["recall_subset_val.json"])) == []

    warm = run_config(config(tmp_path, mini_bench, tiny_models), progress=False)
    assert set(statuses(warm).values()) == {"cached"}
    assert warm["metrics"] == cold["metrics"]
    assert [s["key"] for s in warm["stages"]] == [s["key"] for s in cold["stages"]]

    variant = run_config(config(tmp_path, mini_bench, tiny_models, encoder="encoder_b"), progress=False)
    assert statuses(variant) == {"ingest": "cached", "compose_target_text": "cached", "embed_texts": "computed",
                                 "embed_images": "computed", "retrieve": "computed", "evaluate": "computed"}

    summary = json.loads((tmp_path / "runs").joinpath(*variant["output_dir"].split("/runs/")[1].split("/"),
                                                       "summary.json").read_text())
    assert summary["metrics"] == variant["metrics"]
    assert ArtifactStore(str(tmp_path / "store")).verify() == []


def test_circo_run_and_sampling_change(tmp_path, mini_bench, tiny_models, prefect_server):
    doc = run_config(config(tmp_path, mini_bench, tiny_models, benchmark="circo"), progress=False)
    assert set(doc["metrics"]) >= {"map@5", "map@10", "map@25", "map@50"}
    sub = read_submission(next(p for p in doc["submission_files"] if p.endswith("circo_val.json")))
    assert all(len(v) == 50 and all(isinstance(x, int) for x in v) for v in sub.values())
    # a sampler change recomputes composition and everything after it, never ingest or the gallery features
    again = run_config(config(tmp_path, mini_bench, tiny_models, benchmark="circo", temperature=0.7, top_p=0.9),
                       progress=False)
    assert statuses(again) == {"ingest": "cached", "compose_target_text": "computed", "embed_texts": "computed",
                               "embed_images": "cached", "retrieve": "computed", "evaluate": "computed"}
