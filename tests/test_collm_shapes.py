"""Procedural training data for the CoLLM / InstructCIR tests (one coloured shape per image, captions and
modification texts that say what is drawn), stored through the real ingest_collection stage; and the data module's
own checks (captions input, ok rows only, nested prefixes). The helpers are imported by the other model tests."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cirflow.demo.mini_benchmark import BACKGROUNDS, COLORS, SHAPES, Scene, describe_change, draw
from cirflow.models.collm.data import CaptionPairs, Triplets
from cirflow.schemas.builds import MTCIR_TEXTS, CollectionSource
from cirflow.schemas.tables import TEXTS
from cirflow.storage import ArtifactStore, begin
from cirflow.tasks.builds import ingest_collection

SCENES = [Scene(s, c, b) for s, c, b in itertools.product(SHAPES, COLORS, list(BACKGROUNDS)[:2])]  # 48 scenes
PRE = {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
       "interpolation": "bicubic", "resize_mode": "shortest"}


def caption(s: Scene) -> str:
    return f"a {s.color} {s.shape} on a {s.background} background"


def make_images(root: Path, copies: int = 2, seed: int = 0) -> list[dict]:
    """`copies` jittered drawings of every scene: rows {image_id, path, caption, scene}."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, s in itertools.product(range(copies), SCENES):
        name = f"{s.shape}_{s.color}_{s.background}_{k}.png"
        draw(s, rng).save(root / name)
        rows.append({"image_id": name, "path": str(root / name), "caption": caption(s), "scene": s})
    return rows


def ingest(store: ArtifactStore, root: Path, rows: list[dict]):
    table = root / "pairs.parquet"
    pq.write_table(pa.table({"path": [Path(r["path"]).name for r in rows], "caption": [r["caption"] for r in rows]}),
                   table)
    return ingest_collection.run(store, CollectionSource(kind="parquet", uri=str(table)), shard_size=64, progress=False)


def triplet_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """MTCIR-shaped texts: one modification per (reference, target) pair of different scenes."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.sample(rows, 2)
        while a["scene"] == b["scene"]:
            a, b = rng.sample(rows, 2)
        text = describe_change(a["scene"], b["scene"])
        out.append({"pair_id": f"p{seed}-{i:04d}", "direction": "forward", "ref_id": a["image_id"],
                    "tgt_id": b["image_id"], "index": 0, "category": "object", "text": text,
                    "words": len(text.split()), "status": "ok"})
    return out


def texts_artifact(store: ArtifactStore, rows: list[dict], name: str = "mtcir_texts"):
    run = begin(store, name, "test", {"rows": [r["pair_id"] for r in rows]}, inputs={})
    run.write_table("data", pa.Table.from_pylist(rows, schema=MTCIR_TEXTS))
    return run.finish()


def recall_at_1(queries: torch.Tensor, gallery: torch.Tensor, target: list[int]) -> float:
    q = torch.nn.functional.normalize(queries.float(), dim=-1)
    g = torch.nn.functional.normalize(gallery.float(), dim=-1)
    return float(((q @ g.T).argmax(1) == torch.tensor(target)).float().mean())


def _paths(art, table: str) -> list[str]:
    return [art.file_path(s.name) for s in art.manifest.shards if s.table == table]


def test_datasets_read_stored_tables(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    rows = make_images(tmp_path / "img", copies=1)
    coll = ingest(store, tmp_path / "img", rows)
    pairs = CaptionPairs({"collection": _paths(coll, "images")}, PRE)
    assert len(pairs) == len(SCENES) and pairs[0]["pixel_values"].shape == (3, 224, 224)
    assert {r["caption"] for r in pairs.rows} == {caption(s) for s in SCENES}

    run = begin(store, "caption_collection", "test", {"n": 1}, inputs={})  # a caption stage's TEXTS table
    first = coll.read("images").to_pylist()[0]["image_id"]
    run.write_table("data", pa.Table.from_pylist(
        [{"id": first, "sample": 1, "text": "second", "raw": "", "status": "ok", "error": None, "seed": 0,
          "seconds": 0.0},
         {"id": first, "sample": 0, "text": "a new caption", "raw": "", "status": "ok", "error": None, "seed": 0,
          "seconds": 0.0}], schema=TEXTS))
    caps = run.finish()
    relabelled = CaptionPairs({"collection": _paths(coll, "images"), "captions": _paths(caps, "data")}, PRE)
    assert [r["caption"] for r in relabelled.rows] == ["a new caption"]  # sample 0, images without one dropped

    trip = triplet_rows(rows, 12, seed=3)
    trip[0]["status"] = "too_long"
    texts = texts_artifact(store, trip)
    ds = Triplets({"texts": _paths(texts, "data"), "collection": _paths(coll, "images")}, PRE)
    assert len(ds) == 11 and "too_long" not in {r["modification"] for r in ds.rows}
    item = ds[0]
    assert item["reference_pixels"].shape == item["target_pixels"].shape == (3, 224, 224)
    small = Triplets({"texts": _paths(texts, "data"), "collection": _paths(coll, "images")}, PRE, limit=5)
    assert small.rows == ds.rows[:5]  # nested prefixes of one order (InstructCIR table IV's scaling)
