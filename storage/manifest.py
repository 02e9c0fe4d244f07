"""The manifest: the one JSON file that makes an artifact exist.

Written last, after every shard is committed, so a folder without `_manifest.json` is an unfinished run.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MANIFEST = "_manifest.json"
COMMITS = "_commits"
LEASES = "_leases"
# Version of the on-disk layout and of how keys are computed. A manifest without the field was written by
# format 1. Bumping it changes every stage key (it is part of the key), so old artifacts are never mistaken
# for current ones; `cirflow store verify` names them. 2: leases, writer-unique temporaries, format in the key.
STORE_FORMAT = 2

# Libraries whose versions can change an artifact's content; recorded, not keyed.
TRACKED_LIBRARIES = (
    "cirflow", "torch", "open_clip_torch", "transformers", "diffusers", "faiss-cpu", "faiss-gpu",
    "pyarrow", "polars", "numpy", "prefect", "vllm",
)


class ShardRecord(BaseModel):
    """Commit record of one shard; also the manifest's entry for it."""

    model_config = ConfigDict(extra="forbid")
    table: str
    name: str  # file name inside the artifact folder
    rows: int
    start: int  # input row range this shard covers (resume checks it still matches the plan)
    stop: int
    sha256: str
    bytes: int
    seconds: float = 0.0
    # fast checksum checked on every read (sha256 stays for `cirflow store verify`); None in records written
    # before it existed, which are then read against their sha256
    xxh3_128: str | None = None


class FileRecord(BaseModel):
    """A non-table file of an artifact (submission JSON, an image, an index)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    sha256: str
    bytes: int
    xxh3_128: str | None = None  # as ShardRecord.xxh3_128


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store_format: int = 1  # absent in format-1 manifests; StageRun writes STORE_FORMAT
    stage: str
    key: str
    version: str
    params: dict[str, Any]
    inputs: dict[str, str]
    schemas: dict[str, str] = Field(default_factory=dict)  # table -> Arrow schema as text
    shards: list[ShardRecord] = Field(default_factory=list)
    files: list[FileRecord] = Field(default_factory=list)
    stats: dict[str, Any] = Field(default_factory=dict)  # stage-specific counts: failures, fallbacks, ...
    timings: dict[str, float] = Field(default_factory=dict)
    runtime: dict[str, Any] = Field(default_factory=dict)  # shard size, batch size, device: not in the key
    libraries: dict[str, str] = Field(default_factory=dict)
    host: dict[str, str] = Field(default_factory=dict)
    created_at: str = ""
    # content digest of each input artifact as this one read it (`content_digest`): an input rewritten under the
    # same key (`--retry-failed` recomputing its failed rows) no longer matches, and this artifact is recomputed
    input_content: dict[str, str] = Field(default_factory=dict)

    def content_digest(self) -> str:
        """What the artifact holds, as one sha256: every shard's and file's checksum (generated images are
        covered through the index tables that carry their sha256)."""
        h = hashlib.sha256()
        for rec in sorted(self.shards, key=lambda r: (r.table, r.name)):
            h.update(f"s\0{rec.table}\0{rec.name}\0{rec.sha256}\n".encode())
        for rec in sorted(self.files, key=lambda r: r.name):
            h.update(f"f\0{rec.name}\0{rec.sha256}\n".encode())
        return h.hexdigest()

    def rows(self, table: str = "data") -> int:
        return sum(s.rows for s in self.shards if s.table == table)

    def tables(self) -> list[str]:
        return sorted({s.table for s in self.shards} | set(self.schemas))


def library_versions() -> dict[str, str]:
    return dict(_library_versions())  # a copy: callers may not change the cached dict


@functools.lru_cache(maxsize=1)
def _library_versions() -> dict[str, str]:
    # Read once per process: importlib.metadata parses every dist-info METADATA file on each call (~25 ms for
    # the tracked set, the largest fixed cost of a small stage, bench/stage_overhead.py), and the libraries a
    # process has imported do not change under it.
    out = {}
    for name in TRACKED_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def host_info() -> dict[str, str]:
    return {"python": platform.python_version(), "machine": platform.machine(), "system": platform.system()}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
