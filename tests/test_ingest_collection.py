"""ingest_collection on a generated collection: folder, list and Parquet sources, corrupt and non-image files,
stable ids, and growth (old rows unchanged, new key)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cirflow.schemas.builds import CollectionSource
from cirflow.schemas.errors import ConfigError
from cirflow.storage import ArtifactStore
from cirflow.tasks.builds import ingest_collection

_spec = importlib.util.spec_from_file_location("builds_common", Path(__file__).with_name("test_builds_common.py"))
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)


def _ingest(store, root, **kw):
    return ingest_collection.run(store, CollectionSource(kind="folder", uri=str(root), **kw), shard_size=5, progress=False)


def test_folder_source_records_failures_and_meta_classes(tmp_path):
    root = bc.make_collection(tmp_path / "c")
    store = ArtifactStore(str(tmp_path / "store"))
    art = _ingest(store, root)
    st = art.manifest.stats
    assert st["listed"] == 29 and st["images"] == 28 and st["failed"] == 1 and st["skipped_not_image"] == 1
    assert st["skipped_examples"] == ["notes.txt"]
    fail = art.read("failures").to_pylist()
    assert fail[0]["path"].endswith("vehicles/broken.jpg") and "not a decodable image" in fail[0]["reason"]
    images = art.read("images").to_pylist()
    assert st["meta_classes"] == {"animals": 10, "vehicles": 9, "food": 8, "None": 1}
    by_id = {r["image_id"]: r for r in images}
    assert by_id["animals/deep/animals_00.jpg"]["meta_class"] == "animals"
    assert by_id["top.png"]["meta_class"] is None and by_id["top.png"]["width"] == 30
    assert all(len(r["sha256"]) == 64 and Path(r["path"]).is_file() for r in images)
    assert art.report.shards_computed == 6 + 2  # 29 files in shards of 5, then the images and failures tables

    again = _ingest(store, root)
    assert again.report.status == "cached" and again.key == art.key


def test_growth_keeps_ids_and_rows(tmp_path):
    root = bc.make_collection(tmp_path / "c")
    store = ArtifactStore(str(tmp_path / "store"))
    before = _ingest(store, root).read("images").to_pylist()
    bc.add_images(root, 4)
    grown = _ingest(store, root)
    after = {r["image_id"]: r for r in grown.read("images").to_pylist()}
    assert grown.report.status == "computed" and len(after) == len(before) + 4
    assert all(after[r["image_id"]] == r for r in before)  # same id, same row for every old image


def test_list_and_parquet_sources_and_sha_ids(tmp_path):
    root = bc.make_collection(tmp_path / "c")
    store = ArtifactStore(str(tmp_path / "store"))
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    lst = root / "list.txt"
    lst.write_text("# images\n" + "\n".join(files) + "\n\nmissing.png\n")
    art = ingest_collection.run(store, CollectionSource(kind="list", uri=str(lst)), progress=False)
    assert art.manifest.stats["images"] == len(files)
    assert [f["path"].endswith("missing.png") and "unreadable" in f["reason"] for f in art.read("failures").to_pylist()] == [True]

    table = pa.table({"path": files[:5], "caption": [f"cap {i}" for i in range(5)], "meta_class": ["x", "y"] * 2 + ["x"]})
    pq.write_table(table, root / "index.parquet")
    art = ingest_collection.run(store, CollectionSource(kind="parquet", uri=str(root / "index.parquet")), progress=False)
    rows = art.read("images").to_pylist()
    assert [(r["image_id"], r["caption"], r["meta_class"]) for r in rows] == list(zip(files[:5], table["caption"].to_pylist(), table["meta_class"].to_pylist()))

    (root / "food" / "copy.png").write_bytes((root / files[0]).read_bytes())
    art = ingest_collection.run(store, CollectionSource(kind="folder", uri=str(root), id_scheme="sha256"), progress=False)
    ids = art.read("images", columns=["image_id", "sha256"]).to_pylist()
    assert all(r["image_id"] == r["sha256"] for r in ids)
    assert any("duplicate of" in f["reason"] for f in art.read("failures").to_pylist())

    with pytest.raises(ConfigError):
        ingest_collection.run(store, CollectionSource(kind="folder", uri=str(tmp_path / "nowhere")), progress=False)
