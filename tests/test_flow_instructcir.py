"""`method: instructcir` end to end on the mini benchmark (tiny random open_clip, Prefect server): stage one
(reformulation network, EMA) and stage two (λ combiner) on stored InstructCIR-shaped texts, embed → retrieve →
evaluate; a rerun computes nothing; an evaluation-side change keeps both trainings and the features cached;
table IV's scaling as a `data.limit` variant, and stage one alone (`combiner: null`) from the stored stage one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pytest

from cirflow.cli.run import run_config
from cirflow.flows.registry import parse_config
from cirflow.schemas.builds import REFORMULATIONS, CollectionSource
from cirflow.schemas.errors import ConfigError
from cirflow.storage import ArtifactStore, begin
from cirflow.tasks.builds import ingest_collection

_spec = importlib.util.spec_from_file_location("flow_collm", Path(__file__).with_name("test_flow_collm.py"))
flow_collm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flow_collm)

TRAIN = {"epochs": 1, "lr": 3e-3, "effective_batch_size": 16, "per_device_batch_size": 16, "checkpoint_every": 100,
         "progress": False}


def instructcir_texts(store, coll, attrs, n=48):
    """InstructCIR-shaped reformulations over the collection (what `cirflow build instructcir` stores)."""
    rows = [{"pair_id": f"q{i}", "ref_id": a, "tgt_id": b, "text": text, "words": len(text.split()), "raw": text,
             "status": "ok", "error": None, "seed": 0, "seconds": 0.0}
            for i, (a, b, text) in enumerate(flow_collm.changes(coll, attrs, n, seed=2))]
    run = begin(store, "instructcir_texts", "test", {"rows": n}, inputs={"collection": coll})
    run.write_table("data", pa.Table.from_pylist(rows, schema=REFORMULATIONS))
    return run.finish()


def _status(doc: dict) -> dict[str, set[str]]:
    return flow_collm._status(doc)


@pytest.fixture()
def raw(tmp_path, mini_bench, tiny_models):
    table, attrs = flow_collm.caption_parquet(mini_bench["cirr"], tmp_path / "pairs.parquet")
    store = ArtifactStore(str(tmp_path / "store"))
    coll = ingest_collection.run(store, CollectionSource(kind="parquet", uri=str(table)), progress=False)
    texts = instructcir_texts(store, coll, attrs)
    return {"method": "instructcir", "name": "icir-test", "store": str(tmp_path / "store"),
            "output_dir": str(tmp_path / "runs"),
            "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
            "encoder": {"batch_size": 16},
            "model": {"clip_model": f"local-dir:{tiny_models['encoder']}"},
            "data": {"texts": "stage:instructcir_texts"},
            "reformulation": {"train": TRAIN, "tau": 30.0},
            "combiner": {"train": {**TRAIN, "lr": 5e-2}}}


def _features_are_the_models(store, doc, model_key):
    """The stored features are the combiner's own: e_f = λ·e_r + (1 − λ)·φ_t(t) for queries, e_t for images."""
    import numpy as np
    import torch

    from cirflow.models.instructcir import load_trained
    from cirflow.tasks.collm.trained_encoder import load_pixels, query_items
    from cirflow.tasks.instructcir.embed_instructcir_gallery import EmbedInstructCIRGallery
    from cirflow.tasks.training import resolve_model_ref

    folder = resolve_model_ref(store, f"key:{model_key}")
    model = load_trained(folder).eval()
    arts = {s["stage"]: store.find(s["key"]) for s in doc["stages"]}
    rows = query_items(arts["ingest"])[:4]
    pre = EmbedInstructCIRGallery().preprocess(str(folder))
    px = load_pixels([r["path"] for r in rows], [r["crop_box"] for r in rows], pre)
    with torch.no_grad():
        e_r, phi = model.backbone.query_parts(px, [r["modification"] for r in rows])
        want_q = torch.nn.functional.normalize(model.lam * e_r + (1 - model.lam) * phi, dim=-1).numpy()
        want_g = model.encode_target(px).numpy()
    ids, q = arts["embed_instructcir_queries"].embeddings()
    np.testing.assert_allclose(q[[ids.index(r["query_id"]) for r in rows]], want_q, atol=1e-4)
    ids, g = arts["embed_instructcir_gallery"].embeddings()
    np.testing.assert_allclose(g[[ids.index(r["reference_id"]) for r in rows]], want_g, atol=1e-4)


@pytest.mark.slow
def test_instructcir_flow_end_to_end_cached_and_variants(raw, prefect_server):
    doc = run_config(parse_config(raw), progress=False)
    st = _status(doc)
    for stage in ("train_instructcir", "train_instructcir_combiner", "embed_instructcir_gallery",
                  "embed_instructcir_queries", "retrieve", "evaluate"):
        assert st[stage] == {"computed"}, (stage, st)
    assert {"recall@1", "recall@5", "recall_subset@1"} <= set(doc["metrics"])
    comb = next(s for s in doc["stages"] if s["stage"] == "train_instructcir_combiner")
    assert doc["instructcir"]["model"]["key"] == comb["key"] and doc["instructcir"]["lambda"] != pytest.approx(0.5)

    _features_are_the_models(ArtifactStore(raw["store"]), doc, comb["key"])

    again = run_config(parse_config(raw), progress=False)
    assert {s["status"] for s in again["stages"]} == {"cached"} and again["metrics"] == doc["metrics"]

    flat = run_config(parse_config({**raw, "retrieve": {"index": {"kind": "flat"}}}), progress=False)
    assert {s["stage"] for s in flat["stages"] if s["status"] != "cached"} == {"retrieve", "evaluate"}

    # stage one alone: its stored training reused, its own features (e_r, another model identity)
    one = run_config(parse_config({**raw, "combiner": None}), progress=False)
    st1 = _status(one)
    assert st1["train_instructcir"] == {"cached"} and "train_instructcir_combiner" not in st1
    assert st1["embed_instructcir_queries"] == {"computed"} and "lambda" not in one["instructcir"]

    # table IV: a nested subset of the same stored build retrains both stages; ingest is reused
    grid = run_config(parse_config({**raw, "variants": [{"name": "n16", "set": {"data.limit": 16}}]}), progress=False)
    var = {s["stage"]: s["status"] for s in grid["stages"] if s["label"].startswith("n16/")}
    assert var["train_instructcir"] == var["train_instructcir_combiner"] == "computed" and var["ingest"] == "cached"
    assert {s["status"] for s in grid["stages"] if not s["label"].startswith("n16/")} == {"cached"}
    assert set(grid["variants"]) == {"icir-test", "n16"}


def test_instructcir_config_errors(raw):
    with pytest.raises(ConfigError, match="ema_momentum"):
        parse_config({**raw, "model": {**raw["model"], "ema_momentum": 2.0}})
    with pytest.raises(ConfigError, match="data.texts"):
        parse_config({**raw, "data": {"texts": "instructcir_texts"}})
    table_v = parse_config({**raw, "variants": [{"name": "plain", "set": {"model.ema": False,
                                                                          "model.cross_attention": False}}]})
    from cirflow.flows.trained_runs import with_fields

    plain = with_fields(table_v, table_v.variants[0].set, "plain")
    assert plain.model.ema is False and plain.model.cross_attention is False and plain.variants == []
