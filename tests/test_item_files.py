"""Per-item files in Parquet side-table shards (storage/item_files.py): read back through `ItemFiles` in both
layouts (one object per image, written before issue 14, and side tables), a run resumed across the change, and
a corrupt side-table shard, which no read passes and the next run recomputes with the shard that indexes it."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from cirflow.schemas.errors import StoreError
from cirflow.schemas.tables import GENERATED_IMAGES
from cirflow.storage import ArtifactStore, begin
from cirflow.storage.item_files import ITEM_TABLE, ItemFiles, item_table
from cirflow.storage.stage_run import Shard
from cirflow.storage.store import sha256_bytes

N, SHARD = 6, 2


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 40 % 256, 10, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _row(i: int, file: str | None) -> dict:
    return {"id": f"q{i}", "sample": 0, "file": file, "sha256": sha256_bytes(_png(i)), "width": 8, "height": 8,
            "seed": i, "prompt": "p", "status": "ok", "error": None, "seconds": 0.0}


def _stage(store: ArtifactStore, layout, stop_after: int | None = None):
    """A generating stage as synthesize_images writes one; `layout(shard index)` -> "objects" (one file per
    image, as before issue 14) or "side" (an images side-table shard committed first)."""
    run = begin(store, "toy_images", "1", {"a": 1}, inputs={}, schemas={"data": GENERATED_IMAGES})
    for s in run.pending(N, SHARD):
        if stop_after is not None and s.index >= stop_after:
            return run, None
        if layout(s.index) == "objects":
            for i in range(s.start, s.stop):
                run.write_blob(f"images/{i}.png", _png(i))
            rows = [_row(i, f"images/{i}.png") for i in range(s.start, s.stop)]
        else:
            run.commit(Shard(ITEM_TABLE, s.index, s.start, s.stop),
                       item_table([(f"q{i}", 0, _png(i)) for i in range(s.start, s.stop)]))
            rows = [_row(i, None) for i in range(s.start, s.stop)]
        run.commit(s, pa.Table.from_pylist(rows, schema=GENERATED_IMAGES))
    return run, run.finish()


def _images(art) -> list[bytes]:
    files = ItemFiles(art)
    return [files.read(r) for r in art.read().to_pylist()]


@pytest.mark.parametrize("layout", ["objects", "side"])
def test_both_layouts_read_back_the_same_images(tmp_path, layout):
    store = ArtifactStore(str(tmp_path))
    _, art = _stage(store, lambda i: layout)
    assert _images(art) == [_png(i) for i in range(N)]
    names = {p.name for p in Path(art.file_path("_manifest.json")).parent.iterdir()}
    if layout == "side":  # two objects per shard, whatever its number of images
        assert not (Path(art.file_path("_manifest.json")).parent / "images").exists()
        assert {f"images-{k:05d}.parquet" for k in range(N // SHARD)} <= names
        assert ItemFiles(art).batched and art.read().column("file").null_count == N
    else:
        assert not ItemFiles(art).batched
    assert store.verify() == []


def test_a_run_resumed_across_the_change_reads_both(tmp_path):
    store = ArtifactStore(str(tmp_path))
    _stage(store, lambda i: "objects", stop_after=2)  # an older cirflow, interrupted after two shards
    run, art = _stage(store, lambda i: "side")
    # one shard computed: its images and its index are two commits
    assert (run.report.status, run.report.shards_skipped, run.report.shards_computed) == ("resumed", 2, 2)
    assert art.read().column("file").to_pylist() == ["images/0.png", "images/1.png", "images/2.png", "images/3.png",
                                                     None, None]
    assert _images(art) == [_png(i) for i in range(N)]


def test_a_corrupt_side_shard_is_never_read_and_is_recomputed_with_its_index(tmp_path):
    store = ArtifactStore(str(tmp_path))
    _, art = _stage(store, lambda i: "side")
    side = Path(art.file_path("images-00001.parquet"))
    good = side.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0x01
    side.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum mismatch"):
        _images(store.open("toy_images", art.key))
    assert [p.name for p in store.verify()] == ["images-00001.parquet"]
    run, again = _stage(store, lambda i: "side")
    # shard 1 is computed again: its images shard is rewritten, its intact index shard kept (counted skipped)
    assert (run.report.status, run.report.shards_computed, run.report.shards_skipped) == ("resumed", 1, 3)
    assert side.read_bytes() == good and _images(again) == [_png(i) for i in range(N)]
    assert store.verify() == []


def test_a_row_without_a_file_or_side_row_is_an_error(tmp_path):
    store = ArtifactStore(str(tmp_path))
    _, art = _stage(store, lambda i: "side")
    with pytest.raises(StoreError, match="no file for q99#0"):
        ItemFiles(art).read({"id": "q99", "sample": 0, "file": None, "sha256": None})


def test_a_corrupt_side_shard_fails_only_its_own_rows(tmp_path):
    store = ArtifactStore(str(tmp_path))
    _, art = _stage(store, lambda i: "side")
    side = Path(art.file_path("images-00001.parquet"))
    side.write_bytes(side.read_bytes()[:-5] + b"xxxxx")
    files = ItemFiles(art)
    got = {}
    for r in art.read().to_pylist():  # in index order, as readers go
        try:
            got[r["id"]] = files.read(r)
        except StoreError as e:
            got[r["id"]] = "images-00001.parquet" in str(e) and "checksum mismatch" in str(e)
    assert got == {"q0": _png(0), "q1": _png(1), "q2": True, "q3": True, "q4": _png(4), "q5": _png(5)}
