"""The artifact store: `<root>/<stage>/<key>/` folders of Parquet shards, files and a manifest, on any fsspec root.

Reads verify each shard's sha256 against the manifest before parsing it, so a truncated or altered shard is
never read: it raises, and `cirflow store verify` names it.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass
from typing import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cirflow.schemas.errors import StoreError
from cirflow.storage.keys import KEY_RE, STAGE_RE
from cirflow.storage.manifest import MANIFEST, Manifest

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


@dataclass
class Problem:
    stage: str
    key: str
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.stage}/{self.key[:12]}/{self.name}: {self.reason}"


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

    def write_atomic(self, path: str, data: bytes) -> None:
        """Temporary name then rename: a reader never sees half a file (on object stores a put is atomic already)."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{np.random.default_rng().integers(1 << 62):x}"
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
        self.fs.mv(tmp, path)

    # artifacts ---------------------------------------------------------------------------------
    def has(self, stage: str, key: str) -> bool:
        return self.fs.exists(self.path(stage, key, MANIFEST))

    def open(self, stage: str, key: str) -> "Artifact":
        path = self.path(stage, key, MANIFEST)
        if not self.fs.exists(path):
            raise StoreError(f"no artifact {stage}/{key} in {self.url}")
        return Artifact(self, Manifest.model_validate_json(self.read_bytes(path)))

    def manifests(self) -> Iterator[Manifest]:
        if not self.fs.exists(self.root):
            return
        for stage_dir in sorted(self.fs.ls(self.root, detail=False)):
            stage = posixpath.basename(stage_dir.rstrip("/"))
            if not STAGE_RE.match(stage):
                continue
            for key_dir in sorted(self.fs.ls(stage_dir, detail=False)):
                key = posixpath.basename(key_dir.rstrip("/"))
                if KEY_RE.match(key) and self.fs.exists(posixpath.join(key_dir, MANIFEST)):
                    yield Manifest.model_validate_json(self.read_bytes(posixpath.join(key_dir, MANIFEST)))

    def find(self, key_prefix: str) -> "Artifact":
        """Resolve a (prefix of a) key as users type it; keys are unique across stages."""
        hits = [m for m in self.manifests() if m.key.startswith(key_prefix.lower())]
        if not hits:
            raise StoreError(f"no artifact with key {key_prefix!r} in {self.url}")
        if len(hits) > 1:
            raise StoreError(f"key prefix {key_prefix!r} is ambiguous ({len(hits)} artifacts)")
        return Artifact(self, hits[0])

    def verify(self, key_prefix: str | None = None) -> list[Problem]:
        targets = [self.find(key_prefix).manifest] if key_prefix else list(self.manifests())
        problems: list[Problem] = []
        for m in targets:
            problems += Artifact(self, m).problems()
        return problems


class Artifact:
    """A committed stage output. Tables are read shard by shard, each checked against its sha256 first."""

    def __init__(self, store: ArtifactStore, manifest: Manifest):
        self.store, self.manifest = store, manifest
        self.report = None  # the StageReport of the run that produced or reused it, when there was one

    stage = property(lambda self: self.manifest.stage)
    key = property(lambda self: self.manifest.key)

    def __repr__(self) -> str:
        return f"Artifact({self.stage}/{self.key[:12]})"

    def _checked_bytes(self, name: str, sha256: str, size: int) -> bytes:
        path = self.store.path(self.stage, self.key, name)
        try:
            data = self.store.read_bytes(path)
        except FileNotFoundError:
            raise StoreError(f"{self.stage}/{self.key[:12]}/{name}: missing (run `cirflow store verify`)") from None
        if len(data) != size or sha256_bytes(data) != sha256:
            raise StoreError(f"{self.stage}/{self.key[:12]}/{name}: checksum mismatch, shard is corrupt; "
                             "rerun the stage to recompute it")
        return data

    def read(self, table: str = "data", columns: list[str] | None = None) -> pa.Table:
        shards = [s for s in self.manifest.shards if s.table == table]
        if not shards and table not in self.manifest.schemas:
            raise StoreError(f"{self!r} has no table {table!r} (tables: {self.manifest.tables()})")
        parts = [pq.read_table(io.BytesIO(self._checked_bytes(s.name, s.sha256, s.bytes)), columns=columns)
                 for s in shards]
        if not parts:
            schema = pa.schema([])
            return schema.empty_table()
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def read_file(self, name: str) -> bytes:
        rec = next((f for f in self.manifest.files if f.name == name), None)
        if rec is None:
            raise StoreError(f"{self!r} has no file {name!r}")
        return self._checked_bytes(name, rec.sha256, rec.bytes)

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
        t = self.read(table)
        ids = t.column("id").to_pylist()
        col = t.column("embedding").combine_chunks()
        dim = col.type.list_size
        emb = col.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
        # Arrow buffers are read-only; callers (torch, in-place normalisation) expect a writable array
        return ids, emb if emb.flags.writeable else emb.copy()

    def problems(self) -> list[Problem]:
        out = []
        for rec in [*self.manifest.shards, *self.manifest.files]:
            try:
                self._checked_bytes(rec.name, rec.sha256, rec.bytes)
            except StoreError as e:
                out.append(Problem(self.stage, self.key, rec.name, str(e).rsplit(": ", 1)[-1]))
        return out
