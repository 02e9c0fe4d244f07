"""MVFT-JI-style build as a Prefect flow: per image a modification, then the target text for image +
modification, and a detailed caption; two training tables in the release; growth asks 3 requests per new image."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import datasets
import pytest

from cirflow.flows.builds import build_mvft
from cirflow.storage import ArtifactStore

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("builds_common", Path(__file__).with_name("test_builds_common.py"))
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)


def test_flow_tables_release_and_growth(tmp_path, prefect_server):
    root = bc.make_collection(tmp_path / "c")
    srv = bc.CannedLLM()
    try:
        config = {"store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"), "collection": {"kind": "folder", "uri": str(root)},
                  "mllm": {"backend": "http", "model": "m", "base_url": srv.url, "api_flavor": "openai"},
                  "texts": {"shard_size": 8}, "captions": {"shard_size": 8},
                  "release": {"out_dir": str(tmp_path / "rel"), "name": "mvft-test"}}
        out = build_mvft(config, progress=False)
        store = ArtifactStore(config["store"])
        rows = store.find(out["artifacts"]["texts"]).read().to_pylist()
        assert len(rows) == 28 and {r["status"] for r in rows} == {"ok"}
        for r in rows:  # the target text was asked about this image and this modification
            assert r["target_text"].endswith(r["modification"][:40]) and r["seed_modification"] != r["seed_target"]
        assert srv.counts == {"modification": 28, "target": 28, "caption": 28}
        trip = datasets.load_dataset("parquet", data_files={"train": str(tmp_path / "rel/data/triplets.parquet")})["train"]
        caps = datasets.load_dataset("parquet", data_files={"train": str(tmp_path / "rel/data/captions.parquet")})["train"]
        assert trip.num_rows == caps.num_rows == 28 and set(trip.column_names) == {"reference_id", "reference_path", "reference_image", "modification", "target_text"}

        bc.add_images(root, 2)
        grown = build_mvft(config, progress=False)
        assert srv.counts == {"modification": 30, "target": 30, "caption": 30}
        assert grown["llm_cache"]["misses"] == 6 and grown["llm_cache"]["hits"] == 3 * 28
    finally:
        srv.close()
