"""Per-item files (generated images) stored in Parquet side-table shards instead of one object per item.

A stage that makes one file per item (synthesize_images, synthesize_proxies) used to write each as its own
object (`StageRun.write_blob`, the `file` column naming it). On an object store that is one PUT (plus the
read-before-write of `_write_once`) per image and, for a 100k-image synthesis, 100k tiny objects without an
index. Now the bytes go in a side table of the same shard index as the table that indexes them:

    data-00003.parquet     id, sample, file = null, sha256, width, ... (the index, small)
    images-00003.parquet   id, sample, bytes (binary)                  (one object per shard)

so a shard is two objects whatever its number of images, and both are covered by the manifest's checksums
(bench/image_blobs.py measures the two layouts, locally and on a moto S3 server). Readers go through
`ItemFiles`, which reads both: a row with a `file` is a separate object (artifacts written before, or shards
of a run resumed across the change), a row without one is in its shard's side table.
"""

from __future__ import annotations

import os
import posixpath
from collections import OrderedDict

import pyarrow as pa
import pyarrow.parquet as pq

from cirflow.schemas.errors import StoreError
from cirflow.storage.store import Artifact

ITEM_TABLE = "images"  # the side table's name in the artifact
ITEM_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("sample", pa.int32(), nullable=False),
    pa.field("bytes", pa.binary(), nullable=False),  # the file as written (a PNG)
])


def item_table(items: list[tuple[str, int, bytes]]) -> pa.Table:
    """The side-table shard of one index shard: (id, sample, file bytes) per item that has a file."""
    ids, samples, data = zip(*items) if items else ((), (), ())
    return pa.table({"id": list(ids), "sample": list(samples), "bytes": list(data)}, schema=ITEM_SCHEMA)


class ItemFiles:
    """Bytes of the per-item files an artifact's index table (`file`, `sha256`, `id`, `sample` columns) points
    at, for both layouts. Side-table shards are read whole (checked against the manifest) and the last
    `keep` are kept, so reading in index order reads each shard once."""

    def __init__(self, art: Artifact, index: str = "data", table: str = ITEM_TABLE, keep: int = 2):
        self.art, self.index, self.table, self.keep = art, index, table, keep
        self._where: dict[tuple[str, int], str] | None = None  # (id, sample) -> side-table shard name
        self._shards: OrderedDict[str, dict[tuple[str, int], bytes]] = OrderedDict()

    @property
    def batched(self) -> bool:
        """Whether any of the artifact's files are in side-table shards."""
        return any(s.table == self.table for s in self.art.manifest.shards)

    def read(self, row: dict) -> bytes:
        """The file of one index row (a dict with id, sample, file, sha256). A separate file is checked
        against the row's sha256; a side-table shard against its manifest record."""
        if row.get("file"):
            return self.art.read_blob(row["file"], row.get("sha256"))
        key = (row["id"], int(row["sample"]))
        data = next((shard[key] for shard in self._shards.values() if key in shard), None)
        if data is None and (nxt := self._next()) is not None:
            # rows read in index order: the next image is in the side shard after the last one read, found
            # without reading the index shards to locate it (only a guess: a shard that does not read is left
            # to the lookup below, which raises only for the row's own shard)
            try:
                data = self._shard(nxt).get(key)
            except StoreError:
                data = None
        if data is None:
            name = self._locate().get(key)
            data = self._shard(name).get(key) if name is not None else None
        if data is None:
            raise StoreError(f"{self.art.stage}/{self.art.key[:12]}: no file for {key[0]}#{key[1]} (neither a "
                             f"`file` in its row nor a row in the {self.table!r} table)")
        return data

    def local_path(self, row: dict, folder: str, suffix: str = ".png") -> str:
        """A path a reader that wants files can open: the object itself on a local store, else the bytes
        written to `folder` (a temporary folder of the caller's)."""
        if row.get("file") and self.art.store.local:
            return self.art.file_path(row["file"])
        data = self.read(row)
        path = os.path.join(folder, f"{len(os.listdir(folder)):07d}{suffix}")
        with open(path, "wb") as f:
            f.write(data)
        return path

    def _next(self) -> str | None:
        names = sorted(s.name for s in self.art.manifest.shards if s.table == self.table)
        if not self._shards:
            return names[0] if names else None
        at = names.index(next(reversed(self._shards))) + 1
        return names[at] if at < len(names) else None

    def _locate(self) -> dict[tuple[str, int], str]:
        if self._where is None:
            side = {s.name for s in self.art.manifest.shards if s.table == self.table}
            where = {}
            for rec in self.art.manifest.shards:
                if rec.table != self.index:
                    continue
                name = f"{self.table}-{rec.name.rsplit('-', 1)[-1]}"  # same shard index: images-00003.parquet
                if posixpath.basename(name) not in side:
                    continue
                t = pq.read_table(pa.BufferReader(self.art._checked_bytes(rec, buffer=True)),
                                  columns=["id", "sample"])
                for i, s in zip(t.column("id").to_pylist(), t.column("sample").to_pylist()):
                    where[i, int(s)] = name
            self._where = where
        return self._where

    def _shard(self, name: str) -> dict[tuple[str, int], bytes]:
        if name not in self._shards:
            rec = next(s for s in self.art.manifest.shards if s.name == name)
            t = pq.read_table(pa.BufferReader(self.art._checked_bytes(rec, buffer=True)))
            self._shards[name] = {(i, int(s)): b for i, s, b in zip(
                t.column("id").to_pylist(), t.column("sample").to_pylist(), t.column("bytes").to_pylist())}
            while len(self._shards) > self.keep:
                self._shards.popitem(last=False)
        self._shards.move_to_end(name)
        return self._shards[name]
