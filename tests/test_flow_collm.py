"""`method: collm` end to end on the mini benchmark (tiny random open_clip ViT + a Qwen2-shaped tiny decoder, Prefect
server): pre-training on a user's image–caption Parquet, fine-tuning on stored MTCIR-shaped texts, embed → retrieve
→ evaluate; a rerun computes nothing; an evaluation-side change (retrieve.index) keeps training and features cached; an
ablation variant retrains only what its key changes; a stored model evaluates by reference."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cirflow.cli.run import run_config
from cirflow.demo.mini_benchmark import ATTRIBUTES, Scene, describe_change
from cirflow.flows.registry import parse_config
from cirflow.models.collm.tiny import build_tiny_llm
from cirflow.schemas.builds import MTCIR_TEXTS, CollectionSource
from cirflow.schemas.errors import ConfigError
from cirflow.storage import ArtifactStore, begin
from cirflow.tasks.builds import ingest_collection

TRAIN = {"epochs": 1, "lr": 3e-3, "effective_batch_size": 16, "per_device_batch_size": 16, "checkpoint_every": 100,
         "progress": False}


def _status(doc: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in doc["stages"]:
        out.setdefault(s["stage"], set()).add(s["status"])
    return out


def caption_parquet(root, out):
    """A user's image–caption table: the mini benchmark's images with what the generator drew as captions."""
    attrs = json.loads((root / ATTRIBUTES).read_text())
    rows = [{"path": str(root / "dev" / f"{name}.png"),
             "caption": f"a {a['color']} {a['shape']} on a {a['background']} background"}
            for name, a in sorted(attrs.items())]
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out, attrs


def changes(coll, attrs, n: int, seed: int) -> list[tuple[str, str, str]]:
    """n (reference id, target id, modification) over the collection: pairs of different scenes, the text saying
    what changes (the generator's own labels)."""
    images = coll.read("images").to_pylist()
    scene = {r["image_id"]: Scene(**attrs[r["path"].rsplit("/", 1)[1][:-4]]) for r in images}
    rng, out = random.Random(seed), []
    while len(out) < n:
        a, b = (r["image_id"] for r in rng.sample(images, 2))
        if scene[a] != scene[b]:
            out.append((a, b, describe_change(scene[a], scene[b])))
    return out


def mtcir_texts(store, coll, attrs, n=32):
    """MTCIR-shaped texts over the collection (what `cirflow build mtcir` stores): a modification per pair."""
    rows = [{"pair_id": f"p{i}", "direction": "forward", "ref_id": a, "tgt_id": b, "index": 0,
             "category": "attribute_change", "text": text, "words": len(text.split()), "status": "ok"}
            for i, (a, b, text) in enumerate(changes(coll, attrs, n, seed=1))]
    run = begin(store, "mtcir_texts", "test", {"rows": n}, inputs={"collection": coll})
    run.write_table("data", pa.Table.from_pylist(rows, schema=MTCIR_TEXTS))
    return run.finish()


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return str(build_tiny_llm(tmp_path_factory.mktemp("collm-llm") / "llm"))


def config(tmp_path, mini_bench, tiny_models, llm, **extra):
    table, attrs = caption_parquet(mini_bench["cirr"], tmp_path / "pairs.parquet")
    raw = {"method": "collm", "name": "collm-test", "store": str(tmp_path / "store"),
           "output_dir": str(tmp_path / "runs"),
           "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
           "encoder": {"batch_size": 16},
           "model": {"vision_model": f"local-dir:{tiny_models['encoder']}", "llm": llm, "lora_rank": 8},
           "pretrain": {"collection": {"kind": "parquet", "uri": str(table)}, "train": TRAIN},
           **extra}
    return raw, attrs


def _features_are_the_models(store, doc, model_key):
    """The stored features are the trained model's own: p(Φ(f(v_ref), text)) and f(v), L2-normalised."""
    import numpy as np
    import torch

    from cirflow.models.collm import CoLLMModel
    from cirflow.tasks.collm.embed_collm_gallery import EmbedCoLLMGallery
    from cirflow.tasks.collm.trained_encoder import load_pixels, query_items
    from cirflow.tasks.training import resolve_model_ref

    folder = resolve_model_ref(store, f"key:{model_key}")
    model = CoLLMModel.from_trained(folder)
    arts = {s["stage"]: store.find(s["key"]) for s in doc["stages"]}
    rows = query_items(arts["ingest"])[:4]
    px = load_pixels([r["path"] for r in rows], [r["crop_box"] for r in rows], EmbedCoLLMGallery().preprocess(folder))
    with torch.no_grad():
        want_q = model.encode_query(model.encode_image(px), [r["modification"] for r in rows]).numpy()
        want_g = torch.nn.functional.normalize(model.encode_image(px), dim=-1).numpy()
    ids, q = arts["embed_collm_queries"].embeddings()
    np.testing.assert_allclose(q[[ids.index(r["query_id"]) for r in rows]], want_q, atol=1e-4)
    ids, g = arts["embed_collm_gallery"].embeddings()
    np.testing.assert_allclose(g[[ids.index(r["reference_id"]) for r in rows]], want_g, atol=1e-4)


@pytest.mark.slow
def test_collm_flow_end_to_end_cached_and_variants(tmp_path, mini_bench, tiny_models, llm, prefect_server):
    raw, attrs = config(tmp_path, mini_bench, tiny_models, llm)
    store = ArtifactStore(raw["store"])
    coll = ingest_collection.run(store, CollectionSource(**raw["pretrain"]["collection"]), progress=False)
    texts = mtcir_texts(store, coll, attrs)
    raw["finetune"] = {"texts": f"key:{texts.key}", "train": TRAIN}  # its collection: found through the texts

    doc = run_config(parse_config(raw), progress=False)
    st = _status(doc)
    for stage in ("train_collm", "train_collm_triplets", "embed_collm_gallery", "embed_collm_queries", "retrieve",
                  "evaluate"):
        assert st[stage] == {"computed"}, (stage, st)
    assert st["ingest_collection"] == {"cached"}  # the same collection the texts were built from
    assert {"recall@1", "recall@5", "recall_subset@1"} <= set(doc["metrics"])
    assert all(0.0 <= v <= 100.0 for v in doc["metrics"].values())
    ft = next(s for s in doc["stages"] if s["stage"] == "train_collm_triplets")
    assert doc["collm"]["model"]["key"] == ft["key"]

    _features_are_the_models(store, doc, ft["key"])

    again = run_config(parse_config(raw), progress=False)
    assert {s["status"] for s in again["stages"]} == {"cached"}
    assert again["metrics"] == doc["metrics"]

    flat = run_config(parse_config({**raw, "retrieve": {"index": {"kind": "flat"}}}), progress=False)
    computed = {s["stage"] for s in flat["stages"] if s["status"] != "cached"}
    assert computed == {"retrieve", "evaluate"}, flat["stages"]

    # fig. 7 / table 6c ablations: a variant retrains from its changed key on; ingest and the base are reused
    grid = run_config(parse_config({**raw, "variants": [{"name": "random", "set": {"pretrain.loss.neighbour":
                                                                                  "random"}}]}), progress=False)
    assert set(grid["variants"]) == {"collm-test", "random"}
    base_stages = [s for s in grid["stages"] if not s["label"].startswith("random/")]
    assert {s["status"] for s in base_stages} == {"cached"}
    var = {s["stage"]: s for s in grid["stages"] if s["label"].startswith("random/")}
    assert var["train_collm"]["status"] == "computed" and var["ingest"]["status"] == "cached"
    trains = {s["key"] for s in grid["stages"] if s["stage"] == "train_collm"}
    assert len(trains) == 2
    assert set(grid["variants"]["random"]["metrics"]) == set(doc["metrics"])

    # a stored model by reference: no training, the same features (same model identity)
    by_ref = run_config(parse_config({**{k: v for k, v in raw.items() if k not in ("pretrain", "finetune")},
                                      "encoder": {"weights": f"key:{ft['key'][:12]}", "batch_size": 16}}),
                        progress=False)
    assert {s["status"] for s in by_ref["stages"]} == {"cached"} and by_ref["metrics"] == doc["metrics"]
    assert not {"train_collm", "train_collm_triplets"} & {s["stage"] for s in by_ref["stages"]}


def test_collm_config_errors(tmp_path, mini_bench, tiny_models, llm):
    raw, _ = config(tmp_path, mini_bench, tiny_models, llm)
    with pytest.raises(ConfigError, match="alpha"):
        parse_config({**raw, "pretrain": {**raw["pretrain"], "loss": {"alpha": 2.0}}})
    with pytest.raises(ConfigError, match="pretrain"):
        parse_config({k: v for k, v in raw.items() if k != "pretrain"})
    with pytest.raises(ConfigError, match="key:"):
        parse_config({**raw, "finetune": {"texts": "mtcir_texts"}})
    from cirflow.flows.trained_runs import stored, with_fields

    with pytest.raises(ConfigError, match="no stored mtcir_texts"):
        stored(ArtifactStore(str(tmp_path / "empty")), "stage:mtcir_texts", "finetune.texts")
    cfg = parse_config(raw)
    assert with_fields(cfg, {"pretrain.loss.alpha": 0.3}, "v").pretrain.loss == {"alpha": 0.3}
    with pytest.raises(ConfigError, match="text_ratoi: Extra inputs"):
        with_fields(cfg, {"pretrain.loss.text_ratoi": 0.3}, "v")
