"""Embedding vectors viewed in place in the Parquet file (storage/plain_pages.py): exactly what pyarrow decodes
for the layout the store writes, and None (pyarrow decodes instead) for every layout that breaks a precondition."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cirflow.storage import ArtifactStore, begin
from cirflow.storage.plain_pages import plain_vectors
from cirflow.tasks.embeddings import embeddings_table

ROWS, DIM = 300, 16


def _emb() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((ROWS, DIM), dtype=np.float32)


def _decoded(data: bytes) -> np.ndarray:
    col = pq.read_table(pa.BufferReader(data), columns=["embedding"]).column("embedding").combine_chunks()
    return np.frombuffer(col.buffers()[1], "<f4", len(col) * DIM, col.offset * 4 * DIM).reshape(-1, DIM)


def test_the_store_layout_is_viewed_in_place_and_equals_the_decoded_vectors(tmp_path):
    store = ArtifactStore(str(tmp_path))
    run = begin(store, "toy_emb", "1", {}, inputs={})
    emb, ids = _emb(), [f"i{k}" for k in range(ROWS)]
    for sh in run.pending(ROWS, 128):
        run.commit(sh, embeddings_table(ids[sh.start:sh.stop], emb[sh.start:sh.stop]))
    art = run.finish()
    for rec in art.manifest.shards:
        data = open(art.file_path(rec.name), "rb").read()
        view = plain_vectors(data, "embedding")
        assert view is not None and np.array_equal(view, _decoded(data))
    got_ids, got = art.embeddings()
    assert got_ids == ids and np.array_equal(got, emb) and got.flags.writeable


def _file(table: pa.Table, **kw) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def _fsb(emb: np.ndarray, nullable: bool = False) -> pa.Table:
    col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * DIM), len(emb), [None, pa.py_buffer(emb)])
    schema = pa.schema([pa.field("id", pa.string()), pa.field("embedding", pa.binary(4 * DIM), nullable=nullable)])
    return pa.table({"id": [str(k) for k in range(len(emb))], "embedding": col}, schema=schema)


PLAIN = dict(compression="none", use_dictionary=False, write_statistics=False, data_page_size=1 << 28)


def test_several_row_groups_are_each_viewed():
    emb = _emb()
    data = _file(_fsb(emb), row_group_size=100, **PLAIN)
    assert pq.ParquetFile(pa.BufferReader(data)).metadata.num_row_groups == 3
    assert np.array_equal(plain_vectors(data, "embedding"), emb)


@pytest.mark.parametrize("layout", ["nullable", "several pages", "dictionary", "zstd", "fixed_size_list",
                                    "no such column"])
def test_other_layouts_are_left_to_pyarrow(layout):
    emb = _emb()
    kw = dict(PLAIN)
    table = _fsb(emb)
    column = "embedding"
    if layout == "nullable":
        table = _fsb(emb, nullable=True)
    elif layout == "several pages":
        kw.update(data_page_size=4096, write_batch_size=10)  # pages are cut between write batches
    elif layout == "dictionary":
        kw["use_dictionary"] = True
        table = _fsb(np.tile(emb[:3], (ROWS // 3, 1)))  # repeated vectors: the dictionary is kept
    elif layout == "zstd":
        kw["compression"] = "zstd"
    elif layout == "fixed_size_list":
        table = pa.table({"id": table["id"], "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), DIM)})
    else:
        column = "vector"
    data = _file(table, **kw)
    assert plain_vectors(data, column) is None
    if layout == "several pages":  # the page cut the layout needs is really there
        assert pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0).column(1).total_compressed_size > 19200 + 60
