"""The Stage contract (tasks/stage.py) with real stages: the key is the Params and nothing else, outputs are
checked against their declared schemas when a shard is committed, per-item failures are accounted once (the
threshold stops the run without a manifest, keeps what succeeded, and the rerun redoes only the failed items),
and (rank, world) partitions write the same artifact as one process."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.errors import CirflowError
from cirflow.storage import ArtifactStore
from cirflow.tasks.runs import ingest
from cirflow.tasks.runs.embed_images import EmbedImages, embed_images
from cirflow.tasks.stage import Context, Params, Runtime, Stage, StageFailed, execute, failure_policy

ROWS = pa.schema([("id", pa.string()), ("value", pa.int64()), ("status", pa.string()), ("error", pa.string())])


class CountParams(Params):
    n: int
    offset: int = 0


class CountRuntime(Runtime):
    workers: int = 1  # a knob that never changes what is written


class Count(Stage):
    """A small real stage: item i becomes value i + offset; the items in `broken` fail (a flaky answer) and
    `computed` records every item this instance was asked to compute."""

    name, version = "contract_count", "1"
    Params, Runtime = CountParams, CountRuntime
    outputs = {"data": ROWS}
    row_per_item = True

    def __init__(self, broken: set[int] = frozenset(), wrong_schema: bool = False):
        self.broken, self.wrong_schema, self.computed = set(broken), wrong_schema, []

    def items(self, ctx: Context):
        return list(range(ctx.params.n))

    def compute(self, ctx: Context, items):
        self.computed += list(items)
        if self.wrong_schema:  # a stage bug: the value column is missing
            return pa.table({"id": [str(i) for i in items]})
        return pa.Table.from_pylist([
            {"id": str(i), "value": None if i in self.broken else i + ctx.params.offset,
             "status": "failed" if i in self.broken else "ok", "error": "flaky" if i in self.broken else None}
            for i in items], schema=ROWS)


def test_key_is_params_only(tmp_path):
    store = ArtifactStore(str(tmp_path))
    a = execute(Count(), store, {}, CountParams(n=5), CountRuntime(shard_size=2, workers=1))
    again = Count()
    b = execute(again, store, {}, CountParams(n=5), CountRuntime(shard_size=3, workers=4, progress=False))
    assert b.key == a.key and b.report.status == "cached" and again.computed == []
    assert a.manifest.runtime["workers"] == 1  # recorded, not keyed
    c = execute(Count(), store, {}, CountParams(n=5, offset=1), CountRuntime(shard_size=2))
    assert c.key != a.key and c.read().column("value").to_pylist() == [1, 2, 3, 4, 5]


def test_outputs_are_validated_at_commit(tmp_path):
    store = ArtifactStore(str(tmp_path))
    with pytest.raises(CirflowError, match="does not match its declared schema"):
        execute(Count(wrong_schema=True), store, {}, CountParams(n=4), CountRuntime(shard_size=2))
    assert not list(store.manifests())
    ok = execute(Count(), store, {}, CountParams(n=4), CountRuntime(shard_size=2))
    assert ok.read().schema == ROWS


def test_failure_threshold_keeps_succeeded_shards_and_rerun_redoes_only_failed_items(tmp_path):
    store = ArtifactStore(str(tmp_path))
    params, runtime = CountParams(n=12), CountRuntime(shard_size=4)
    first = Count(broken={1, 9})  # 2 of 12 fail: above 10 %, in shards 0 and 2
    with pytest.raises(StageFailed, match=r"2 of 12 items failed .* first: 1: flaky"):
        execute(first, store, {}, params, runtime.model_copy(update={"max_failure_rate": 0.1}))
    assert first.computed == list(range(12))  # each item asked once: this run's failures are not re-asked
    assert not list(store.manifests())  # no manifest ...
    assert len(list(tmp_path.rglob("data-*.parquet"))) == 3  # ... but every shard is committed

    second = Count(broken=set())  # the flaky items answer now
    art = execute(second, store, {}, params, runtime)
    assert second.computed == [1, 9]  # only the failed items, ok rows kept
    assert art.report.status == "resumed" and art.read().column("value").to_pylist() == list(range(12))
    st = art.manifest.stats
    assert (st["items"], st["ok"], st["failed"], st["failures"]) == (12, 12, 0, [])


def test_failure_policy_and_first_failures(tmp_path):
    store = ArtifactStore(str(tmp_path))
    with failure_policy(0.5):  # a flow's `max_failure_rate`
        art = execute(Count(broken={0, 3, 5}), store, {}, CountParams(n=8), CountRuntime(shard_size=4))
    st = art.manifest.stats
    assert (st["items"], st["ok"], st["failed"]) == (8, 5, 3)
    assert st["failures"] == [{"id": i, "error": "flaky"} for i in ("0", "3", "5")]
    with pytest.raises(StageFailed):  # the default threshold (5 %) outside any policy
        execute(Count(broken={0}), store, {}, CountParams(n=8, offset=2), CountRuntime(shard_size=4))


def test_partitions_write_the_same_artifact_as_one_process(tmp_path, mini_bench, tiny_models):
    cfg = EncoderConfig(model=f"local-dir:{tiny_models['encoder']}", device="cpu", num_workers=0)
    assert EmbedImages.shardable and EmbedImages.models == ("encoder",)

    store = ArtifactStore(str(tmp_path / "parts"))
    bench = ingest.run(store, "cirr", str(mini_bench["cirr"]))
    n_images = bench.read("images").num_rows
    for rank in (1, 0):  # any order: each partition commits the shards index % world == rank
        assert embed_images(store, bench, cfg, shard_size=4, reuse=False, progress=False, rank=rank, world=2) is None
    assert not list(store.manifests()) or all(m.stage != "embed_images" for m in store.manifests())
    parts = embed_images(store, bench, cfg, shard_size=4, reuse=False, progress=False)  # the driver's final call
    assert parts.report.shards_computed == 0 and parts.report.shards_skipped == -(-n_images // 4)

    solo_store = ArtifactStore(str(tmp_path / "solo"))
    solo = embed_images(solo_store, ingest.run(solo_store, "cirr", str(mini_bench["cirr"])), cfg, shard_size=8,
                        reuse=False, progress=False)
    assert solo.key == parts.key  # shard size and partitions are runtime, not identity
    ids_p, emb_p = parts.embeddings()
    ids_s, emb_s = solo.embeddings()
    assert ids_p == ids_s and len(ids_p) == n_images
    np.testing.assert_allclose(emb_p, emb_s, atol=1e-5)
    assert parts.manifest.stats["images"] == solo.manifest.stats["images"] == n_images
