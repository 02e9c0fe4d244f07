"""MTCIR-style build: with the tiny real models (every JSON answer of a random model is malformed, and is
accounted for), and end to end as a Prefect flow against a stand-in LLM that answers valid JSON, malformed
JSON or refusals; categories, biometric filter, word limit, release, warm rerun."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import datasets
import pytest

from cirflow.flows.builds import build_mtcir
from cirflow.schemas.builds import CaptionConfig, CollectionSource, MTCIRTextConfig, PairingConfig
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.storage import ArtifactStore
from cirflow.tasks.runs import embed_images
from cirflow.tasks.builds import caption_collection, ingest_collection, mtcir_texts, pair_groups

_spec = importlib.util.spec_from_file_location("builds_common", Path(__file__).with_name("test_builds_common.py"))
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)

WIDE = {"min_similarity": -1.0, "max_similarity": 1.0, "spacing": 0.0}


def test_tiny_models_malformed_json_is_accounted(tmp_path, tiny_models):
    root = bc.make_collection(tmp_path / "c")
    lst = tmp_path / "few.txt"
    lst.write_text("\n".join(str(p) for p in sorted(root.rglob("food_0*.*"))[:7]))
    store = ArtifactStore(str(tmp_path / "store"))
    coll = ingest_collection.run(store, CollectionSource(kind="list", uri=str(lst)), progress=False)
    enc = EncoderConfig(model=f"local-dir:{tiny_models['encoder']}", device="cpu", num_workers=0)
    emb = embed_images.embed_images(store, coll, enc, progress=False)
    pairs = pair_groups.pair_groups(store, coll, emb, PairingConfig(group_size=3, exclusive=True, **WIDE))
    assert pairs.manifest.stats["groups"] == 2 and pairs.manifest.stats["pairs"] == 6
    mllm = MLLMConfig(backend="transformers", model=str(tiny_models["mllm"]), device="cpu")
    caps = caption_collection.run(store, coll, mllm, CaptionConfig(sampling=SamplingParams(max_tokens=6)), build="mtcir",
                           cache_root=str(tmp_path / "cache"), progress=False)
    assert caps.manifest.stats["ok"] == 7
    texts = mtcir_texts.run(store, pairs, caps, mllm, MTCIRTextConfig(sampling=SamplingParams(max_tokens=8)),
                            cache_root=str(tmp_path / "cache"), progress=False)
    st = texts.manifest.stats
    assert st["pairs"] == 6 and st["requests"] == {"malformed": 6} and texts.read().num_rows == 0
    assert all("raw text" in f["error"] for f in st["failures"])
    assert st["llm_cache"] == {"hits": 0, "misses": 6, "stored": 0}  # failures are not cached
    assert "| total | | 0 | |" in texts.read_file("categories.md").decode()


@pytest.mark.slow
def test_flow_end_to_end(tmp_path, tiny_models, prefect_server):
    root = bc.make_collection(tmp_path / "c")
    srv = bc.CannedLLM()
    try:
        config = {
            "name": "mtcir-test", "store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"),
            "collection": {"kind": "folder", "uri": str(root)},
            "mllm": {"backend": "http", "model": "m", "base_url": srv.url, "api_flavor": "openai"},
            "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
            "pairing": WIDE | {"exclusive": True}, "captions": {"shard_size": 8}, "texts": {"shard_size": 8},
            "release": {"out_dir": str(tmp_path / "release"), "name": "mtcir-test", "license": "cc-by-4.0"},
        }
        out = build_mtcir(config, progress=False)
        assert {s["status"] for s in out["stages"]} == {"computed"}
        store = ArtifactStore(config["store"])
        texts = store.find(out["artifacts"]["texts"])
        st = texts.manifest.stats
        # 28 images → 4 exclusive groups of six → 4 × (5 consecutive + 4 first-to-member) pairs
        assert st["pairs"] == 36 == srv.counts["json_ok"] + srv.counts["json_fenced"] + srv.counts["json_malformed"] + srv.counts["json_refused"]
        assert st["requests"] == {"ok": srv.counts["json_ok"] + srv.counts["json_fenced"],
                                  "malformed": srv.counts["json_malformed"], "refused": srv.counts["json_refused"]}
        rows = texts.read().to_pylist()
        assert {r["direction"] for r in rows} == {"forward", "backward"}
        assert all(r["status"] == "biometric" for r in rows if "hair" in r["text"])
        assert all(r["status"] == "too_long" for r in rows if r["words"] > 20)
        assert st["filtered_biometric"] == sum("hair" in r["text"] for r in rows) > 0
        ok = [r for r in rows if r["status"] == "ok"]
        assert st["categories"] == {c: sum(r["category"] == c for r in ok) for c in {r["category"] for r in ok}}
        table9 = texts.read_file("categories.md").decode()
        assert f"| attribute_change | Attribute Changed | {st['categories']['attribute_change']} (" in table9

        ds = datasets.load_dataset("parquet", data_files={"train": str(tmp_path / "release/data/triplets.parquet")})
        assert ds["train"].num_rows == len(ok) and set(ds["train"]["category"]) == set(st["categories"])
        card = (tmp_path / "release/README.md").read_text()
        assert card.startswith("---\nlicense: cc-by-4.0") and "mtcir_texts.template" in card

        asked = srv.total()
        warm = build_mtcir(config, progress=False)
        assert {s["status"] for s in warm["stages"]} == {"cached"} and srv.total() == asked
    finally:
        srv.close()
