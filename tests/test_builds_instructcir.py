"""InstructCIR-style build as a Prefect flow against a stand-in LLM: pairs within meta-classes, the 12-word
limit (too long → status too_long, never truncated), and growth: a rebuild after adding images asks only about
the new images and the pairs that changed (request cache hits for everything else)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cirflow.flows.builds import build_instructcir
from cirflow.storage import ArtifactStore

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("builds_common", Path(__file__).with_name("test_builds_common.py"))
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)


def test_flow_word_limit_and_growth(tmp_path, prefect_server):
    root = bc.make_collection(tmp_path / "c")
    srv = bc.CannedLLM()
    try:
        config = {"store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"), "collection": {"kind": "folder", "uri": str(root)},
                  "mllm": {"backend": "http", "model": "m", "base_url": srv.url, "api_flavor": "openai"},
                  "captions": {"shard_size": 8}, "texts": {"shard_size": 8},
                  "release": {"out_dir": str(tmp_path / "rel")}}
        first = build_instructcir(config, progress=False)
        store = ArtifactStore(config["store"])
        pairs = store.find(first["artifacts"]["pairs"]).read("pairs").to_pylist()
        coll = {r["image_id"]: r["meta_class"] for r in store.find(first["artifacts"]["collection"]).read("images").to_pylist()}
        assert len(pairs) == 27  # one partner per image; top.png has no meta-class and no pool
        assert all(coll[p["ref_id"]] == coll[p["tgt_id"]] == p["group_id"] and p["ref_id"] != p["tgt_id"] for p in pairs)
        texts = store.find(first["artifacts"]["texts"]).read().to_pylist()
        assert {r["status"] for r in texts} == {"ok", "too_long"}
        assert sum(r["status"] == "too_long" for r in texts) == srv.counts["reform_long"]
        assert all(r["text"] is None and r["raw"] and r["words"] is None for r in texts if r["status"] == "too_long")
        assert all(r["words"] <= 12 and not r["text"].startswith("Difference") for r in texts if r["status"] == "ok")
        assert first["llm_cache"]["misses"] == 28 + 27 and first["llm_cache"]["hits"] == 0

        bc.add_images(root, 3)
        before = dict(srv.counts)
        grown = build_instructcir(config, progress=False)
        new_pairs = store.find(grown["artifacts"]["pairs"]).read("pairs").to_pylist()
        old_ids = {p["pair_id"] for p in pairs}
        changed = [p for p in new_pairs if p["pair_id"] not in old_ids]
        assert 3 <= len(changed) < len(new_pairs) // 2  # the new images' pairs, and few others
        asked = {k: srv.counts.get(k, 0) - before.get(k, 0) for k in srv.counts}
        assert asked["caption"] == 3  # only the new images are captioned
        assert asked.get("reform_ok", 0) + asked.get("reform_long", 0) == len(changed)
        assert grown["llm_cache"] == {"hits": 28 + len(new_pairs) - len(changed), "misses": 3 + len(changed),
                                      "stored": 3 + len(changed)}
    finally:
        srv.close()
