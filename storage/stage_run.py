"""Running one stage into the store with shard-level resume (the datatrove / NeMo completion-marker pattern).

    run = store.begin("embed_texts", VERSION, key_params, inputs={"texts": texts.key}, runtime={...})
    if run.cached:
        return run.artifact
    for shard in run.pending(n_rows, shard_size):
        run.commit(shard, compute(shard.start, shard.stop))
    return run.finish(stats={...})

Protocol: a shard is written under a temporary name and renamed, then its commit record goes to
`_commits/<name>.json`. A rerun skips a shard only when its commit record matches the current plan (row range)
and the file's sha256 still matches the record; anything else is recomputed. The manifest is written last.
A cached artifact is verified before it is reused; a corrupt shard sends the stage back to "resumed".
"""

from __future__ import annotations

import io
import posixpath
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from cirflow.storage.keys import canonical, stage_key
from cirflow.storage.manifest import (
    COMMITS,
    MANIFEST,
    FileRecord,
    Manifest,
    ShardRecord,
    host_info,
    library_versions,
    now,
)
from cirflow.storage.store import Artifact, ArtifactStore, safe_relpath, sha256_bytes

# (rank, world) while a stage runs as one of `world` partitions on a distributed worker (datatrove's ranks):
# it computes the shards whose index % world == rank and leaves the manifest to the driver's final pass.
_PARTITION: ContextVar[tuple[int, int] | None] = ContextVar("cirflow_shard_partition", default=None)


@contextmanager
def shard_partition(rank: int, world: int):
    token = _PARTITION.set((rank, world))
    try:
        yield
    finally:
        _PARTITION.reset(token)


@dataclass(frozen=True)
class Shard:
    table: str
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.table}-{self.index:05d}.parquet"


@dataclass
class StageReport:
    """What a stage did in this run; the run summary is a list of these."""

    stage: str
    key: str
    status: str = "computed"  # computed | cached | resumed
    shards_computed: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    label: str = ""  # e.g. the benchmark group this stage ran for
    stats: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"stage": self.stage, "key": self.key, "status": self.status, "shards_computed": self.shards_computed,
                "shards_skipped": self.shards_skipped, "seconds": round(self.seconds, 3), "label": self.label,
                "stats": self.stats}


class StageRun:
    def __init__(self, store: ArtifactStore, stage: str, version: str, params: Any, inputs: Mapping[str, Artifact | str],
                 runtime: Mapping[str, Any] | None = None, schemas: Mapping[str, pa.Schema] | None = None):
        self.store, self.stage, self.version = store, stage, version
        self.params = canonical(params)
        self.inputs = {k: (v.key if isinstance(v, Artifact) else v) for k, v in inputs.items()}
        self.key = stage_key(stage, version, self.params, self.inputs)
        self.runtime = canonical(dict(runtime or {}))
        self.schemas = dict(schemas or {})
        self.dir = store.artifact_dir(stage, self.key)
        self.report = StageReport(stage, self.key)
        self._t0 = time.perf_counter()
        self._commits: dict[str, ShardRecord] = {}
        self._files: dict[str, FileRecord] = {}
        self.artifact: Artifact | None = None
        if store.has(stage, self.key):
            art = store.open(stage, self.key)
            bad = art.problems()
            if not bad:
                self.artifact = art
                art.report = self.report
                self.report.status = "cached"
                self.report.shards_skipped = len(art.manifest.shards)
                self.report.stats = dict(art.manifest.stats)
                return
            # A corrupt cached artifact is demoted to an unfinished run: good shards are kept, bad ones redone.
            store.fs.rm(store.path(stage, self.key, MANIFEST))
        self._load_commits()

    @property
    def cached(self) -> bool:
        return self.artifact is not None

    # resume --------------------------------------------------------------------------------------
    def _load_commits(self) -> None:
        commit_dir = posixpath.join(self.dir, COMMITS)
        if not self.store.fs.exists(commit_dir):
            return
        for path in self.store.fs.ls(commit_dir, detail=False):
            if not path.endswith(".json"):
                continue  # leftovers of an interrupted commit
            try:
                rec = ShardRecord.model_validate_json(self.store.read_bytes(path))
            except ValueError:
                continue
            self._commits[rec.name] = rec
        if _PARTITION.get() is not None:
            return  # sibling partitions may be writing their temporary files right now; the driver cleans up
        for path in self.store.fs.ls(self.dir, detail=False):
            if ".tmp-" in posixpath.basename(path):
                self.store.fs.rm(path)

    def _is_committed(self, shard: Shard) -> bool:
        rec = self._commits.get(shard.name)
        if rec is None or (rec.start, rec.stop, rec.table) != (shard.start, shard.stop, shard.table):
            return False
        path = self.store.path(self.stage, self.key, shard.name)
        try:
            data = self.store.read_bytes(path)
        except FileNotFoundError:
            return False
        return len(data) == rec.bytes and sha256_bytes(data) == rec.sha256

    def plan(self, n_rows: int, shard_size: int, table: str = "data") -> list[Shard]:
        shard_size = max(1, int(shard_size))
        bounds = range(0, max(n_rows, 1), shard_size) if n_rows else [0]
        return [Shard(table, i, s, min(s + shard_size, n_rows)) for i, s in enumerate(bounds)]

    def pending(self, n_rows: int, shard_size: int, table: str = "data") -> Iterator[Shard]:
        """Shards still to compute, in order. Committed ones count as skipped."""
        if self.cached:
            return
        shards = self.plan(n_rows, shard_size, table)
        # Drop commit records of an older plan for this table (shard size changed): they no longer describe files.
        wanted = {s.name for s in shards}
        for name in [n for n, r in self._commits.items() if r.table == table and n not in wanted]:
            del self._commits[name]
        partition = _PARTITION.get()
        if partition is not None:
            rank, world = partition
            shards = [s for s in shards if s.index % world == rank]
        for shard in shards:
            if self._is_committed(shard):
                self.report.shards_skipped += 1
                continue
            self._commits.pop(shard.name, None)
            yield shard

    def committed(self, table: str = "data", columns: list[str] | None = None) -> pa.Table:
        """Every committed shard of `table`, this run's and an interrupted run's alike (for whole-artifact stats)."""
        shards = sorted((r for r in self._commits.values() if r.table == table), key=lambda r: r.name)
        partial = Manifest(stage=self.stage, key=self.key, version=self.version, params={}, inputs={}, shards=shards,
                           schemas={k: str(v) for k, v in self.schemas.items()})
        return Artifact(self.store, partial).read(table, columns)

    def shard_seconds(self, table: str = "data") -> float:
        return sum(r.seconds for r in self._commits.values() if r.table == table)

    # writing -------------------------------------------------------------------------------------
    def commit(self, shard: Shard, table: pa.Table, seconds: float | None = None) -> ShardRecord:
        schema = self.schemas.get(shard.table)
        if schema is not None:
            table = table.cast(schema) if table.schema != schema else table
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        data = buf.getvalue()
        self.store.write_atomic(self.store.path(self.stage, self.key, shard.name), data)
        rec = ShardRecord(table=shard.table, name=shard.name, rows=table.num_rows, start=shard.start, stop=shard.stop,
                          sha256=sha256_bytes(data), bytes=len(data), seconds=seconds or 0.0)
        self.store.write_atomic(self.store.path(self.stage, self.key, f"{COMMITS}/{shard.name}.json"),
                                rec.model_dump_json().encode())
        self._commits[shard.name] = rec
        self.report.shards_computed += 1
        return rec

    def write_table(self, table_name: str, table: pa.Table) -> ShardRecord:
        """A whole small table as one shard (ingest tables, metrics)."""
        shard = Shard(table_name, 0, 0, table.num_rows)
        for _ in self.pending(table.num_rows, max(table.num_rows, 1), table_name):
            return self.commit(shard, table)
        return self._commits[shard.name]

    def write_file(self, name: str, data: bytes) -> FileRecord:
        name = safe_relpath(name)
        self.store.write_atomic(self.store.path(self.stage, self.key, name), data)
        rec = FileRecord(name=name, sha256=sha256_bytes(data), bytes=len(data))
        self._files[name] = rec
        return rec

    def write_blob(self, name: str, data: bytes) -> tuple[str, int]:
        """A per-item file (a generated image) whose checksum the stage keeps in its own index table rather
        than in the manifest: write blobs first, then commit the shard that indexes them, so a committed
        shard always points at complete files. Returns (sha256, size)."""
        self.store.write_atomic(self.store.path(self.stage, self.key, safe_relpath(name)), data)
        return sha256_bytes(data), len(data)

    def finish(self, stats: Mapping[str, Any] | None = None, timings: Mapping[str, float] | None = None) -> Artifact:
        if self.cached:
            return self.artifact
        if _PARTITION.get() is not None:
            return None  # a partition worker: the driver writes the manifest once every shard is committed
        if self.report.shards_skipped:
            # some (or all) shards were committed by an interrupted run
            self.report.status = "resumed"
        elapsed = time.perf_counter() - self._t0
        shards = sorted(self._commits.values(), key=lambda r: (r.table, r.name))
        manifest = Manifest(
            stage=self.stage, key=self.key, version=self.version, params=self.params, inputs=self.inputs,
            schemas={k: str(v) for k, v in self.schemas.items()}, shards=shards,
            files=sorted(self._files.values(), key=lambda r: r.name), stats=canonical(dict(stats or {})),
            timings={"wall_seconds": round(elapsed, 4), "shard_seconds": round(sum(s.seconds for s in shards), 4),
                     **(timings or {})},
            runtime=self.runtime, libraries=library_versions(), host=host_info(), created_at=now(),
        )
        self.store.write_atomic(self.store.path(self.stage, self.key, MANIFEST),
                                manifest.model_dump_json(indent=2).encode())
        self.artifact = Artifact(self.store, manifest)
        self.artifact.report = self.report
        self.report.stats = dict(manifest.stats)
        self.report.seconds = elapsed
        return self.artifact


def begin(store: ArtifactStore, stage: str, version: str, params: Any, inputs: Mapping[str, Artifact | str],
          runtime: Mapping[str, Any] | None = None, schemas: Mapping[str, pa.Schema] | None = None) -> StageRun:
    return StageRun(store, stage, version, params, inputs, runtime, schemas)
