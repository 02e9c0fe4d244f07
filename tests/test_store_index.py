"""The key → stage index (storage/index.py): `find` and `ls` read one index folder and the one manifest they
need, new stores are indexed from their first artifact, older stores are scanned once and then indexed.

File accesses are counted with a Python audit hook (every `open` and directory listing the interpreter makes),
so "reads no other manifest" is measured on the real filesystem, not assumed."""

from __future__ import annotations

import logging
import shutil
import sys

import pyarrow as pa
import pytest

from cirflow.storage import ArtifactStore, begin
from cirflow.storage.index import INDEX, is_complete
from cirflow.storage.store import StoreError

_COUNT = {"on": False, "manifests": 0, "listings": 0}


def _audit(event, args):
    if not _COUNT["on"]:
        return
    if event == "open" and str(args[0]).endswith("_manifest.json"):
        _COUNT["manifests"] += 1
    elif event in ("os.listdir", "os.scandir"):
        _COUNT["listings"] += 1


sys.addaudithook(_audit)


def _counted(fn):
    _COUNT.update(on=True, manifests=0, listings=0)
    try:
        return fn()
    finally:
        _COUNT["on"] = False


def _store_with(tmp_path, n: int) -> tuple[ArtifactStore, list]:
    store = ArtifactStore(str(tmp_path / "store"))
    arts = []
    for i in range(n):
        run = begin(store, ("alpha", "beta", "gamma")[i % 3], "1", {"i": i}, inputs={})
        for sh in run.pending(2, 2):
            run.commit(sh, pa.table({"x": [i, i]}))
        arts.append(run.finish())
    return store, arts


def test_new_store_is_indexed_and_find_reads_one_manifest(tmp_path):
    store, arts = _store_with(tmp_path, 30)
    assert is_complete(store)
    target = arts[17]
    fresh = ArtifactStore(store.url)
    got = _counted(lambda: fresh.find(target.key))
    assert (got.stage, got.key) == (target.stage, target.key)
    # the scan would open all 30 manifests and list 3 stage folders plus the root
    assert _COUNT["manifests"] == 1 and _COUNT["listings"] <= 2
    got = _counted(lambda: fresh.find(target.key[:6].upper()))
    assert got.key == target.key and _COUNT["manifests"] == 1
    listed = _counted(lambda: [m.key for m in fresh.manifests(indexed=True)])
    assert sorted(listed) == sorted(a.key for a in arts) == sorted(m.key for m in fresh.manifests())
    # one recursive walk of _index/ (its 2-hex folders), never the stage folders
    assert _COUNT["listings"] <= 1 + len({a.key[:2] for a in arts}) + 1


def test_unknown_and_ambiguous_prefixes(tmp_path):
    store, arts = _store_with(tmp_path, 40)
    with pytest.raises(StoreError, match="no artifact"):
        store.find("0" * 64 if not any(a.key == "0" * 64 for a in arts) else "f" * 64)
    with pytest.raises(StoreError, match="ambiguous"):
        store.find("")  # every key matches the empty prefix
    first = {a.key[0] for a in arts}
    shared = next(c for c in sorted(first) if sum(a.key[0] == c for a in arts) > 1)
    with pytest.raises(StoreError, match="ambiguous"):
        store.find(shared)  # one character: the whole index is read


def test_store_written_before_the_index_is_scanned_once_then_indexed(tmp_path, caplog):
    store, arts = _store_with(tmp_path, 12)
    shutil.rmtree(tmp_path / "store" / INDEX)  # what a store written before the index looks like
    old = ArtifactStore(store.url)
    assert not is_complete(old)
    with caplog.at_level(logging.WARNING, logger="cirflow.store"):
        got = _counted(lambda: old.find(arts[5].key[:10]))
    assert got.key == arts[5].key and _COUNT["manifests"] >= 12
    assert "no complete key index" in caplog.text
    assert is_complete(old)
    got = _counted(lambda: old.find(arts[9].key))
    assert got.key == arts[9].key and _COUNT["manifests"] == 1


def test_a_new_artifact_in_an_old_store_does_not_make_the_index_complete(tmp_path):
    store, arts = _store_with(tmp_path, 4)
    shutil.rmtree(tmp_path / "store" / INDEX)
    run = begin(store, "delta", "1", {"new": 1}, inputs={})
    for sh in run.pending(1, 1):
        run.commit(sh, pa.table({"x": [0]}))
    new = run.finish()
    assert not is_complete(store)  # the four older artifacts have no marker yet
    assert store.find(arts[0].key).key == arts[0].key and store.find(new.key).key == new.key
    assert is_complete(store)


def test_a_removed_artifact_leaves_no_ghost(tmp_path):
    store, arts = _store_with(tmp_path, 3)
    shutil.rmtree(tmp_path / "store" / arts[1].stage / arts[1].key)  # removed by hand or gc; marker stays
    with pytest.raises(StoreError, match="no artifact"):
        store.find(arts[1].key)
    assert sorted(m.key for m in store.manifests(indexed=True)) == sorted([arts[0].key, arts[2].key])


def test_find_on_a_missing_root_creates_nothing(tmp_path):
    store = ArtifactStore(str(tmp_path / "typo"))
    with pytest.raises(StoreError):
        store.find("ab")
    assert not (tmp_path / "typo").exists()


def test_embeddings_layout_reads_everywhere_and_old_layout_still_reads(tmp_path):
    """Embedding shards are fixed_size_binary(4*dim) raw float32 (issue 14, bench/embeddings_read.py): readable
    by pyarrow, polars and datasets; artifacts (and shards of a resumed run) in the older fixed_size_list<float32>
    layout still read through Artifact.embeddings()."""
    import numpy as np
    import polars as pl
    import pyarrow.parquet as pq
    from datasets import Dataset

    from cirflow.tasks.embeddings import embeddings_output, embeddings_table

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((10, 8), dtype=np.float32)
    ids = [f"i{k}" for k in range(10)]
    store = ArtifactStore(str(tmp_path / "store"))
    run = begin(store, "emb", "1", {}, inputs={})
    shards = list(run.pending(10, 4))
    old = pa.table({"id": ids[:4], "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb[:4].reshape(-1)), 8)})
    run.commit(shards[0], old)  # a shard written before the change
    for sh in shards[1:]:
        run.commit(sh, embeddings_table(ids[sh.start:sh.stop], emb[sh.start:sh.stop]))
    art = run.finish()
    got_ids, got = art.embeddings()
    assert got_ids == ids and np.array_equal(got, emb) and got.flags.writeable and got.dtype == np.float32
    new_shard = art.file_path(art.manifest.shards[1].name)
    t = pq.read_table(new_shard)
    assert t.schema.field("embedding").type == pa.binary(32)
    assert t.schema.field("embedding").metadata == {b"cirflow.dtype": b"float32", b"cirflow.dim": b"8"}
    assert pq.ParquetFile(new_shard).metadata.row_group(0).column(1).compression == "UNCOMPRESSED"
    assert embeddings_output(t) == t.schema
    vectors = pl.read_parquet(new_shard)["embedding"].to_list()
    assert np.array_equal(np.frombuffer(b"".join(vectors), "<f4").reshape(-1, 8), emb[4:8])
    ds = Dataset.from_parquet(new_shard, cache_dir=str(tmp_path / "hf"))
    assert np.array_equal(np.frombuffer(ds[0]["embedding"], "<f4"), emb[4])
