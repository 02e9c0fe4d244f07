"""Raw float vectors straight out of a Parquet file, without decoding, when the layout allows it.

An embedding shard stores each vector as `fixed_size_binary(4*dim)` (schemas.tables.embeddings_schema), written
by StageRun uncompressed, without dictionary, as one data page per row group. For such a column chunk the page
body *is* the vectors' little-endian bytes, one after another, so they can be viewed in place (a memory-mapped
file) instead of decoded by pyarrow, which copies them once more at a fraction of memory speed (Parquet
decoding was ~60 % of `Artifact.embeddings()`, bench/embeddings_read.py).

Only used when every precondition is checked against the file's own metadata and the page header: a required
(non-null, non-repeated) FIXED_LEN_BYTE_ARRAY column, every chunk uncompressed, PLAIN with no dictionary page,
and a single v1 data page whose size is exactly rows x width. Anything else returns None and the caller decodes
with pyarrow as usual, so a file written by another tool or an older cirflow still reads correctly.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_PLAIN_ENCODINGS = {"PLAIN", "RLE", "BIT_PACKED"}  # levels encodings are listed even for a required column
_DATA_PAGE = 0  # parquet.thrift PageType.DATA_PAGE


def plain_vectors(buf, column: str, meta: pq.FileMetaData | None = None) -> np.ndarray | None:
    """A read-only float32 [rows, width/4] view of `column`'s values in `buf` (bytes-like, the whole Parquet
    file), or None when the column is not stored plainly as described in the module doc."""
    meta = meta or pq.ParquetFile(pa.BufferReader(buf)).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    if names.count(column) != 1:
        return None
    ci = names.index(column)
    desc = meta.schema.column(ci)
    if (desc.physical_type != "FIXED_LEN_BYTE_ARRAY" or desc.max_definition_level != 0
            or desc.max_repetition_level != 0 or not desc.length or desc.length % 4):
        return None
    width = desc.length
    view = memoryview(buf)
    parts = []
    for rg in range(meta.num_row_groups):
        cc = meta.row_group(rg).column(ci)
        if (cc.compression != "UNCOMPRESSED" or cc.has_dictionary_page or not set(cc.encodings) <= _PLAIN_ENCODINGS
                or cc.num_values != meta.row_group(rg).num_rows):
            return None
        size = cc.num_values * width
        start, end = cc.data_page_offset, cc.data_page_offset + cc.total_compressed_size
        header = _page_header(view, start, end)
        # one page holding every value of the chunk, and nothing after it: its body is the chunk's last bytes
        if header != (_DATA_PAGE, size, size) or end > len(view) or end - size <= start:
            return None
        parts.append(np.frombuffer(buf, "<f4", size // 4, end - size).reshape(-1, width // 4))
    if not parts:
        return np.zeros((0, width // 4), np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _page_header(view: memoryview, at: int, end: int) -> tuple[int, int, int] | None:
    """(type, uncompressed_page_size, compressed_page_size): fields 1-3 of a Thrift compact-protocol PageHeader,
    which always come first and in order (each a field header byte 0x15 = delta 1, type i32, then a zigzag
    varint); None for anything else."""
    out = []
    for _ in range(3):
        if at >= end or view[at] != 0x15:
            return None
        at += 1
        value, shift = 0, 0
        while True:
            if at >= end or shift > 35:
                return None
            b = view[at]
            at += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out.append((value >> 1) ^ -(value & 1))
    return out[0], out[1], out[2]
