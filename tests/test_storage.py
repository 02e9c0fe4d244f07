"""The artifact store: keys, shard commits, resume, corruption detection, path safety, fsspec roots."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from cirflow.cli.main import main
from cirflow.schemas.errors import StoreError
from cirflow.storage import ArtifactStore, begin, item_seed, stage_key

SCHEMA = pa.schema([("x", pa.int64())])


def _run(store, params=None, n=10, shard=4, fail_at=None):
    run = begin(store, "toy", "1", params or {"a": 1}, inputs={}, schemas={"data": SCHEMA})
    for s in run.pending(n, shard):
        if fail_at is not None and s.index == fail_at:
            raise RuntimeError("interrupted")
        run.commit(s, pa.table({"x": list(range(s.start, s.stop))}))
    return run, run.finish(stats={"n": n})


def test_key_is_canonical_and_sensitive():
    k = stage_key("toy", "1", {"a": 1.0, "b": [1, 2]}, {})
    assert k == stage_key("toy", "1", {"b": (1, 2), "a": 1}, {})  # order, tuple/list, 1.0/1 spell alike
    assert k != stage_key("toy", "2", {"a": 1, "b": [1, 2]}, {})
    assert k != stage_key("toy", "1", {"a": 1, "b": [2, 1]}, {})
    assert k != stage_key("toy", "1", {"a": 1, "b": [1, 2]}, {"in": "0" * 64})
    with pytest.raises(ValueError):
        stage_key("toy", "1", {}, {"in": "../etc"})


def test_item_seed_is_stable_and_distinct():
    assert item_seed(0, "q1") == item_seed(0, "q1")
    assert len({item_seed(0, f"q{i}") for i in range(1000)}) == 1000
    assert item_seed(1, "q1") != item_seed(0, "q1")


def test_compute_then_cached(tmp_path):
    store = ArtifactStore(str(tmp_path))
    run, art = _run(store)
    assert run.report.status == "computed" and run.report.shards_computed == 3
    assert art.read().column("x").to_pylist() == list(range(10))
    run2, art2 = _run(store)
    assert run2.report.status == "cached" and run2.report.shards_computed == 0 and art2.key == art.key
    assert art2.manifest.stats == {"n": 10} and art2.manifest.libraries["pyarrow"]


def test_write_table_on_a_cached_run_returns_the_stored_record(tmp_path):
    # a whole-table writer (ingest, metrics, tests' texts_artifact) run twice on one store: the second run is
    # cached, writes nothing and must hand back the stored artifact, not fail looking for its own commit
    store = ArtifactStore(str(tmp_path))

    def whole(values):
        run = begin(store, "whole", "1", {"a": 1}, inputs={})
        rec = run.write_table("data", pa.table({"x": values}))
        return run, rec, run.finish()

    run1, rec1, art1 = whole([1, 2, 3])
    run2, rec2, art2 = whole([9, 9, 9])  # same key: the stored table wins, nothing is rewritten
    assert (run1.report.status, run2.report.status) == ("computed", "cached")
    assert rec2 == rec1 and art2.key == art1.key and run2.report.shards_computed == 0
    assert art2.read().column("x").to_pylist() == [1, 2, 3]


def test_interrupted_run_resumes_committed_shards(tmp_path):
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(RuntimeError):
        _run(store, fail_at=2)
    assert not store.has("toy", stage_key("toy", "1", {"a": 1}, {}))  # no manifest: not an artifact yet
    run, art = _run(store)
    assert (run.report.status, run.report.shards_skipped, run.report.shards_computed) == ("resumed", 2, 1)
    assert art.read().column("x").to_pylist() == list(range(10))


def test_changed_shard_size_recomputes_misaligned_shards(tmp_path):
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(RuntimeError):
        _run(store, fail_at=2)
    run, art = _run(store, shard=5)  # the committed [0,4) and [4,8) no longer match the plan
    assert run.report.shards_skipped == 0 and run.report.shards_computed == 2
    assert art.read().column("x").to_pylist() == list(range(10))
    assert [s.name for s in art.manifest.shards] == ["data-00000.parquet", "data-00001.parquet"]


def test_corrupt_shard_is_never_read_and_is_recomputed(tmp_path, capsys):
    store = ArtifactStore(str(tmp_path))
    _, art = _run(store)
    shard = art.file_path(art.manifest.shards[1].name)
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2])  # truncated
    with pytest.raises(StoreError, match="checksum mismatch"):
        store.open("toy", art.key).read()
    assert main(["store", "--root", str(tmp_path), "verify"]) == 1
    out = capsys.readouterr().out
    assert "data-00001.parquet" in out and "BAD" in out
    run, art2 = _run(store)
    assert (run.report.status, run.report.shards_computed, run.report.shards_skipped) == ("resumed", 1, 2)
    assert art2.read().column("x").to_pylist() == list(range(10))
    assert main(["store", "--root", str(tmp_path), "verify"]) == 0


def test_store_cli_ls_and_show(tmp_path, capsys):
    store = ArtifactStore(str(tmp_path))
    _, art = _run(store)
    assert main(["store", "--root", str(tmp_path), "ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"stage": "toy", "key": art.key, "rows": 10, "files": 0, "created_at": art.manifest.created_at}]
    assert main(["store", "--root", str(tmp_path), "show", art.key[:10]]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["key"] == art.key and len(shown["shards"]) == 3
    assert main(["store", "--root", str(tmp_path), "show", "ffffffff"]) == 1
    assert "no artifact with key" in capsys.readouterr().err


def test_files_and_path_safety(tmp_path):
    store = ArtifactStore(str(tmp_path))
    run = begin(store, "toy", "1", {}, inputs={})
    run.write_file("sub/result.json", b"{}")
    for bad in ("../escape.json", "/abs.json", "a/../../b", "a//b", "name with space"):
        with pytest.raises(StoreError):
            run.write_file(bad, b"x")
    art = run.finish()
    assert art.read_file("sub/result.json") == b"{}"
    with pytest.raises(StoreError):
        store.artifact_dir("toy", "../../etc")


def test_any_fsspec_root(tmp_path):
    store = ArtifactStore("memory://cirflow-test-store")
    run, art = _run(store)
    assert run.report.status == "computed"
    assert ArtifactStore("memory://cirflow-test-store").open("toy", art.key).read().num_rows == 10
    assert store.verify() == []


def test_partitions_compute_disjoint_shards_and_leave_the_manifest_to_the_driver(tmp_path):
    from cirflow.storage.stage_run import shard_partition

    store = ArtifactStore(str(tmp_path))
    done = {}
    for rank in range(2):
        with shard_partition(rank, 2):
            run = begin(store, "toy", "1", {"a": 1}, inputs={}, schemas={"data": SCHEMA})
            done[rank] = [s.index for s in run.pending(10, 2)]
            for s in run.pending(10, 2):
                run.commit(s, pa.table({"x": list(range(s.start, s.stop))}))
            assert run.finish() is None  # a partition never writes the manifest
    assert done == {0: [0, 2, 4], 1: [1, 3]}
    assert not store.has("toy", run.key)
    driver, art = _run(store, shard=2)
    assert (driver.report.status, driver.report.shards_computed, driver.report.shards_skipped) == ("resumed", 0, 5)
    assert art.read().column("x").to_pylist() == list(range(10))


def _flip_byte(path: str) -> None:
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01  # same size: only a checksum can tell
    open(path, "wb").write(bytes(data))


def _rewrite_manifest(art, edit) -> None:
    path = art.file_path("_manifest.json")
    doc = json.loads(open(path).read())
    for rec in doc["shards"]:
        edit(rec)
    open(path, "w").write(json.dumps(doc))


def test_reads_check_xxh3_and_verify_checks_sha256(tmp_path, capsys):
    import hashlib

    import xxhash

    store = ArtifactStore(str(tmp_path))
    _, art = _run(store)
    rec = art.manifest.shards[1]
    data = open(art.file_path(rec.name), "rb").read()
    assert (rec.sha256, rec.xxh3_128) == (hashlib.sha256(data).hexdigest(), xxhash.xxh3_128_hexdigest(data))
    # a wrong sha256 beside a right XXH3: reads pass (they check XXH3 only), verify names the file
    _rewrite_manifest(art, lambda r: r.update(sha256="0" * 64) if r["name"] == rec.name else None)
    assert store.open("toy", art.key).read().column("x").to_pylist() == list(range(10))
    assert main(["store", "--root", str(tmp_path), "verify"]) == 1
    assert f"{rec.name}: checksum mismatch" in capsys.readouterr().out
    # a flipped byte is caught by the XXH3 on read
    _, art = _run(store, params={"a": 2})
    _flip_byte(art.file_path(rec.name))
    with pytest.raises(StoreError, match="checksum mismatch"):
        store.open("toy", art.key).read()


def test_records_without_xxh3_are_read_against_sha256(tmp_path):
    # manifests written before XXH3 was recorded keep their keys and still read; their check is the sha256
    store = ArtifactStore(str(tmp_path))
    _, art = _run(store)
    _rewrite_manifest(art, lambda r: r.pop("xxh3_128"))
    for rec in art.manifest.shards:  # the commit records an older writer left
        path = art.file_path(f"_commits/{rec.name}.json")
        doc = json.loads(open(path).read())
        doc.pop("xxh3_128")
        open(path, "w").write(json.dumps(doc))
    old = store.open("toy", art.key)
    assert all(s.xxh3_128 is None for s in old.manifest.shards)
    assert old.read().column("x").to_pylist() == list(range(10)) and store.verify() == []
    run, again = _run(store)
    assert run.report.status == "cached" and again.key == art.key
    _flip_byte(art.file_path(art.manifest.shards[0].name))
    with pytest.raises(StoreError, match="checksum mismatch"):
        store.open("toy", art.key).read()
