"""The artifact store: `<root>/<stage>/<key>/` folders of Parquet shards, files and a manifest, on any fsspec root.

Reads check each shard against the manifest before parsing it, so a truncated or altered shard is never read:
it raises, and `cirflow store verify` names it. Every file has two checksums in its record: a fast XXH3-128,
checked on every read, and a sha256, checked by `cirflow store verify` (and on reads of records written before
the XXH3 existed). sha256 was half the read time of an embedding gallery (bench/embeddings_read.py); XXH3 is
~10x faster and catches the same accidental damage (truncation, flipped bytes); sha256 stays the
cryptographic check. A mismatch is re-read once against the record as it
is on disk now, so a reader never mistakes another writer's completed commit for corruption.

Writes are atomic per file: local files go to a temporary name unique to the writer and are renamed; an object
store PUT is atomic already. Exclusive creation (leases) uses a hard link on local disks and fsspec's
`pipe_file(mode="create")`, which s3fs sends as a conditional PUT (`If-None-Match: *`); other fsspec backends
fall back to check-then-write (see storage/lease.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from cirflow.schemas.errors import StoreError
from cirflow.storage import index
from cirflow.storage.keys import KEY_RE, STAGE_RE
from cirflow.storage.manifest import COMMITS, MANIFEST, FileRecord, Manifest, ShardRecord
from cirflow.storage.plain_pages import plain_vectors
from cirflow.storage.writers import temp_name

SAFE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@=+")


def safe_relpath(name: str) -> str:
    """A file name inside an artifact folder; ids used as paths must not escape the store."""
    parts = name.split("/")
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"unsafe artifact file name {name!r}")
    for p in parts:
        if not set(p) <= SAFE_NAME_CHARS:
            raise StoreError(f"unsafe characters in artifact file name {name!r}")
    return name


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def xxh3_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def checksums(data: bytes) -> dict:
    """What a writer records for a file: size and both checksums (keyword arguments of Shard/FileRecord)."""
    return {"sha256": sha256_bytes(data), "xxh3_128": xxh3_bytes(data), "bytes": len(data)}


def intact(rec: ShardRecord | FileRecord, data: bytes, full: bool = False) -> bool:
    """Whether `data` is the file `rec` describes. Reads check size + XXH3 (sha256 when the record predates
    XXH3); `full` (verify) checks sha256 as well, so a verified file matches its cryptographic checksum."""
    if len(data) != rec.bytes:
        return False
    if rec.xxh3_128 is not None and xxh3_bytes(data) != rec.xxh3_128:
        return False
    return (rec.xxh3_128 is not None and not full) or sha256_bytes(data) == rec.sha256


@dataclass
class Problem:
    stage: str
    key: str
    name: str
    reason: str
    kind: str = "bad"  # bad | unfinished | old-format: the word `cirflow store verify` starts the line with

    def __str__(self) -> str:
        return f"{self.stage}/{self.key[:12]}/{self.name}: {self.reason}"


def describe_error(e: BaseException) -> str:
    """One line for an unreadable file (PermissionError, a directory where a file should be, ...)."""
    return f"unreadable ({type(e).__name__}: {getattr(e, 'strerror', None) or e})"


class ArtifactStore:
    def __init__(self, root: str, storage_options: dict | None = None):
        self.url = str(root)
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # paths -------------------------------------------------------------------------------------
    def artifact_dir(self, stage: str, key: str) -> str:
        if not STAGE_RE.match(stage) or not KEY_RE.match(key):
            raise StoreError(f"invalid artifact address {stage}/{key}")
        return posixpath.join(self.root, stage, key)

    def path(self, stage: str, key: str, name: str) -> str:
        return posixpath.join(self.artifact_dir(stage, key), safe_relpath(name))

    # bytes -------------------------------------------------------------------------------------
    def read_bytes(self, path: str) -> bytes:
        with self.fs.open(path, "rb") as f:
            return f.read()

    def read_buffer(self, path: str):
        """The file's bytes for parsing (bytes-like: checksums and pa.BufferReader take it). Local files are
        memory-mapped: no copy out of the page cache, which was a third of an embedding read. Safe because files
        are only ever replaced by rename, never rewritten in place; the mapping outlives the file handle."""
        if not self.local:
            return self.read_bytes(path)
        with pa.memory_map(self.fs._strip_protocol(path)) as f:
            return f.read_buffer()

    @property
    def local(self) -> bool:
        return "file" in _protocols(self.fs)

    def write_atomic(self, path: str, data: bytes) -> None:
        """Temporary name of this writer, then rename: a reader never sees half a file, and two writers never
        write into each other's temporary file (on object stores a PUT is atomic already)."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        tmp = temp_name(path)
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        try:
            self.fs.mv(tmp, path)
        except BaseException:
            self.discard(tmp)
            raise

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Write `path` only if it does not exist; False when it does. Atomic on local disks (a complete
        temporary file hard-linked to the final name) and on s3fs (conditional PUT)."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not self.local:
            try:
                self.fs.pipe_file(path, data, mode="create")
                return True
            except FileExistsError:
                return False
        tmp = temp_name(path)
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(self.fs._strip_protocol(tmp), self.fs._strip_protocol(path))
            return True
        except FileExistsError:
            return False
        finally:
            self.discard(tmp)

    def discard(self, path: str, recursive: bool = False) -> None:
        """Remove if present: another writer may have removed it first."""
        try:
            self.fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass

    def mtime(self, path: str) -> float | None:
        try:
            info = self.fs.info(path)
        except (FileNotFoundError, OSError):
            return None
        value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
        if isinstance(value, datetime):
            return value.timestamp()
        return float(value) if isinstance(value, (int, float)) else None

    # the store itself ---------------------------------------------------------------------------
    def check_root(self) -> None:
        """A StoreError unless the root is a folder that is (or can be) a store: missing, a file, or a folder
        of other things are refused, so `ls`/`verify` never report "ok" for a typo."""
        if not self.fs.exists(self.root):
            raise StoreError(f"store root {self.url} does not exist")
        if not self.fs.isdir(self.root):
            raise StoreError(f"store root {self.url} is a file, not a store folder")
        entries = [posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False)]
        if entries and not any(STAGE_RE.match(e) for e in entries):
            raise StoreError(f"{self.url} is not an artifact store (no <stage>/<key>/ folders in it)")

    def artifact_dirs(self) -> list[tuple[str, str]]:
        """(stage, key) of every artifact folder, finished or not."""
        out = []
        if not self.fs.isdir(self.root):
            return out
        for stage_dir in sorted(self.fs.ls(self.root, detail=False)):
            stage = posixpath.basename(stage_dir.rstrip("/"))
            if not STAGE_RE.match(stage) or not self.fs.isdir(stage_dir):
                continue
            for key_dir in sorted(self.fs.ls(stage_dir, detail=False)):
                key = posixpath.basename(key_dir.rstrip("/"))
                if KEY_RE.match(key):
                    out.append((stage, key))
        return out

    def load_manifest(self, stage: str, key: str) -> tuple[Manifest | None, str | None]:
        """(manifest, None) when readable and valid; (None, why) when present but unreadable or garbage;
        (None, None) when absent. Never raises for a bad file: callers treat it as unfinished."""
        path = self.path(stage, key, MANIFEST)
        try:
            data = self.read_bytes(path)
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as e:
            return None, describe_error(e)
        try:
            m = Manifest.model_validate_json(data)
        except ValueError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            return None, f"garbage manifest ({first})"
        if (m.stage, m.key) != (stage, key):
            return None, f"manifest names {m.stage}/{m.key[:12]}, not the folder it is in"
        return m, None

    def read_commit(self, stage: str, key: str, name: str) -> ShardRecord | None:
        """The commit record of shard `name` as it is on disk now; None when absent, unreadable or garbage."""
        try:
            rec = ShardRecord.model_validate_json(self.read_bytes(self.path(stage, key, f"{COMMITS}/{name}.json")))
        except (OSError, ValueError):
            return None
        return rec if rec.name == name else None

    # artifacts ---------------------------------------------------------------------------------
    def has(self, stage: str, key: str) -> bool:
        return self.fs.exists(self.path(stage, key, MANIFEST))

    def open(self, stage: str, key: str) -> "Artifact":
        m, why = self.load_manifest(stage, key)
        if m is None:
            raise StoreError(f"{stage}/{key[:12]}: {why}; run `cirflow store verify`" if why
                             else f"no artifact {stage}/{key} in {self.url}")
        return Artifact(self, m)

    def manifests(self, indexed: bool = False) -> Iterator[Manifest]:
        """Every readable, valid manifest; bad ones are skipped here and named by `verify`. `indexed`: take the
        (stage, key) list from the key index when it is complete (one listing of `_index/` instead of one per
        stage folder; see storage/index.py); a full scan otherwise, and for gc/verify, which must see all."""
        addresses = index.entries(self) if indexed and index.is_complete(self) else self.artifact_dirs()
        for stage, key in addresses:
            m, _ = self.load_manifest(stage, key)
            if m is not None:
                yield m

    def commit_manifest(self, stage: str, key: str, data: bytes) -> None:
        """Write an artifact's manifest (the write that makes it exist), then its key-index marker."""
        self.write_atomic(self.path(stage, key, MANIFEST), data)
        index.add(self, stage, key)

    def find(self, key_prefix: str) -> "Artifact":
        """Resolve a (prefix of a) key as users type it; keys are unique across stages. O(1) requests through
        the key index (storage/index.py); stores written before it are scanned once, then indexed."""
        key_prefix = key_prefix.lower()
        if index.is_complete(self):
            hits = [m for stage, key in index.lookup(self, key_prefix)
                    if (m := self.load_manifest(stage, key)[0]) is not None]
        else:
            index.log.warning("%s has no complete key index (written before it): scanning every manifest, "
                              "then indexing them", self.url)
            every = list(self.manifests())
            hits = [m for m in every if m.key.startswith(key_prefix)]
            try:
                if every:  # never create folders under a root that holds no store (a typo)
                    index.rebuild(self, every)
            except OSError as e:  # a read-only store still answers, it just stays unindexed
                index.log.warning("could not index %s: %s", self.url, describe_error(e))
        if not hits:
            raise StoreError(f"no artifact with key {key_prefix!r} in {self.url}")
        if len(hits) > 1:
            raise StoreError(f"key prefix {key_prefix!r} is ambiguous ({len(hits)} artifacts)")
        return Artifact(self, hits[0])

    def verify(self, key_prefix: str | None = None) -> list[Problem]:
        """Every problem of every artifact folder (or those whose key starts with `key_prefix`); see
        storage/verify.py for what is checked."""
        from cirflow.storage.verify import verify_store

        return verify_store(self, key_prefix)


class Artifact:
    """A committed stage output. Tables are read shard by shard, each checked against its record first."""

    def __init__(self, store: ArtifactStore, manifest: Manifest):
        self.store, self.manifest = store, manifest
        self.report = None  # the StageReport of the run that produced or reused it, when there was one

    stage = property(lambda self: self.manifest.stage)
    key = property(lambda self: self.manifest.key)

    def __repr__(self) -> str:
        return f"Artifact({self.stage}/{self.key[:12]})"

    def _checked_bytes(self, rec: ShardRecord | FileRecord, retry: bool = True, full: bool = False,
                       buffer: bool = False):
        """The file `rec` describes, checked against it; `buffer`: a bytes-like object for parsing (a memory map
        on local stores, see ArtifactStore.read_buffer) rather than `bytes`."""
        name = rec.name
        path = self.store.path(self.stage, self.key, name)
        where = f"{self.stage}/{self.key[:12]}/{name}"
        try:
            data = self.store.read_buffer(path) if buffer else self.store.read_bytes(path)
        except FileNotFoundError:
            data = None
        except (OSError, ValueError) as e:
            raise StoreError(f"{where}: {describe_error(e)}") from None
        if data is not None and intact(rec, data, full):
            return data
        if retry:
            # Another writer may have committed this name since our record was read: check against the record
            # as it is on disk now before calling the file corrupt.
            fresh = self._fresh_record(name)
            if fresh is not None and (fresh.sha256, fresh.bytes) != (rec.sha256, rec.bytes):
                return self._checked_bytes(fresh, retry=False, full=full, buffer=buffer)
        if data is None:
            raise StoreError(f"{where}: missing (run `cirflow store verify`)")
        raise StoreError(f"{where}: checksum mismatch, shard is corrupt; rerun the stage to recompute it")

    def _fresh_record(self, name: str):
        m, _ = self.store.load_manifest(self.stage, self.key)
        rec = next((r for r in [*m.shards, *m.files] if r.name == name), None) if m is not None else None
        return rec or self.store.read_commit(self.stage, self.key, name)

    def read(self, table: str = "data", columns: list[str] | None = None) -> pa.Table:
        shards = [s for s in self.manifest.shards if s.table == table]
        if not shards and table not in self.manifest.schemas:
            raise StoreError(f"{self!r} has no table {table!r} (tables: {self.manifest.tables()})")
        # pa.BufferReader reads the bytes in place; io.BytesIO went through a Python file object (slower)
        parts = [pq.read_table(pa.BufferReader(self._checked_bytes(s, buffer=True)), columns=columns)
                 for s in shards]
        if not parts:
            schema = pa.schema([])
            return schema.empty_table()
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def read_file(self, name: str) -> bytes:
        rec = next((f for f in self.manifest.files if f.name == name), None)
        if rec is None:
            raise StoreError(f"{self!r} has no file {name!r}")
        return self._checked_bytes(rec)

    def read_blob(self, name: str, sha256: str | None = None) -> bytes:
        """A per-item file indexed by one of the artifact's tables (see StageRun.write_blob)."""
        data = self.store.read_bytes(self.store.path(self.stage, self.key, safe_relpath(name)))
        if sha256 is not None and sha256_bytes(data) != sha256:
            raise StoreError(f"{self.stage}/{self.key[:12]}/{name}: checksum mismatch, file is corrupt")
        return data

    def file_path(self, name: str) -> str:
        return self.store.path(self.stage, self.key, name)

    def read_json(self, name: str):
        return json.loads(self.read_file(name))

    def embeddings(self, table: str = "data") -> tuple[list[str], np.ndarray]:
        """(ids, float32 [n, dim] writable array). Reads the current layout (fixed_size_binary(4*dim), raw
        little-endian float32) and the older fixed_size_list<float32>[dim], shard by shard, so an artifact
        resumed across the change (old shards + new ones) reads too."""
        shards = [s for s in self.manifest.shards if s.table == table]
        if not shards:
            self.read(table)  # raises when there is no such table
            return [], np.zeros((0, 0), np.float32)
        def load(s: ShardRecord) -> tuple[list, np.ndarray]:
            data = self._checked_bytes(s, buffer=True)
            # the vectors viewed in place when stored plainly (storage/plain_pages.py), else decoded by pyarrow;
            # the pool below is the parallelism
            pf = pq.ParquetFile(pa.BufferReader(data))
            vectors = plain_vectors(data, "embedding", pf.metadata)
            t = pf.read(columns=["id"] if vectors is not None else ["id", "embedding"], use_threads=False)
            vectors = _vectors(t) if vectors is None else vectors
            if t.num_rows != s.rows or len(vectors) != s.rows:
                raise StoreError(f"{self.stage}/{self.key[:12]}/{s.name}: {t.num_rows} rows, the manifest says "
                                 f"{s.rows}; run `cirflow store verify`")
            return t.column("id").to_pylist(), vectors

        # One pass per shard on a thread pool (checksum, Parquet decoding and the copy release the GIL), each
        # copying its vectors straight into its rows of the result: the one copy a caller needs anyway (Arrow
        # buffers are read-only; torch and in-place normalisation want a writable float32 array).
        first = load(shards[0])
        dim = first[1].shape[1]
        starts = np.cumsum([0] + [s.rows for s in shards]).tolist()
        out = np.empty((starts[-1], dim), np.float32)
        ids: list = [None] * len(shards)

        def fill(i: int, loaded: tuple[list, np.ndarray] | None = None) -> None:
            part, v = load(shards[i]) if loaded is None else loaded
            if v.shape[1] != dim:
                raise StoreError(f"{self.stage}/{self.key[:12]}/{shards[i].name}: vectors of {v.shape[1]} values, "
                                 f"the first shard has {dim}")
            out[starts[i]:starts[i + 1]] = v
            ids[i] = part

        fill(0, first)
        if len(shards) > 1:
            with ThreadPoolExecutor(max(1, min(len(shards) - 1, os.cpu_count() or 1))) as pool:
                list(pool.map(fill, range(1, len(shards))))
        return [i for part in ids for i in part], out

    def problems(self, full: bool = False) -> list[Problem]:
        """Every listed shard or file that is missing, unreadable or does not match its record; `full` checks
        sha256 too (`cirflow store verify`), otherwise the fast checksum as on reads (reusing a cached stage)."""
        out = []
        for rec in [*self.manifest.shards, *self.manifest.files]:
            try:
                self._checked_bytes(rec, full=full, buffer=True)
            except StoreError as e:
                out.append(Problem(self.stage, self.key, rec.name, str(e).split(f"{rec.name}: ", 1)[-1]))
        return out


def _vectors(t: pa.Table) -> np.ndarray:
    """The `embedding` column as a float32 [rows, dim] array (a view where the layout allows): the current
    fixed_size_binary(4*dim) raw little-endian layout, or the older fixed_size_list<float32>[dim]."""
    blocks = []
    for chunk in t.column("embedding").chunks:
        if pa.types.is_fixed_size_binary(chunk.type):
            w = chunk.type.byte_width
            blocks.append(np.frombuffer(chunk.buffers()[1], "<f4", len(chunk) * w // 4, chunk.offset * w)
                          .reshape(-1, w // 4))
        else:
            dim = chunk.type.list_size
            blocks.append(chunk.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
                          .reshape(-1, dim))
    if not blocks:
        width = t.schema.field("embedding").type
        dim = width.byte_width // 4 if pa.types.is_fixed_size_binary(width) else width.list_size
        return np.zeros((0, dim), np.float32)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _protocols(fs) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)
