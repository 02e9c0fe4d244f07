"""Running one stage into the store with shard-level resume (the datatrove / NeMo completion-marker pattern).

    run = store.begin("embed_texts", VERSION, key_params, inputs={"texts": texts.key}, runtime={...})
    if run.cached:
        return run.artifact
    for shard in run.pending(n_rows, shard_size):
        run.commit(shard, compute(shard.start, shard.stop))
    return run.finish(stats={...})

Protocol: a shard is written under a temporary name and renamed, then its commit record goes to
`_commits/<name>.json`. A rerun skips a shard only when its commit record matches the current plan (row range)
and the file still matches the record (size + XXH3; sha256 for older records), as do the side-table shards of its
index committed before it; anything else is recomputed. The manifest is written last.
A cached artifact is verified before it is reused; a corrupt shard sends the stage back to "resumed"; an
unreadable, garbage or older-format manifest is treated as unfinished (good shards are kept).

Concurrent writers (two identical runs on one store, storage/lease.py): before computing a shard a writer
re-reads its commit record and takes the shard's lease; a shard another live writer holds is left to it and
waited for, so runs split the work. A commit re-reads the record first and keeps a valid commit by someone
else. Temporary names are unique per writer, and only stale ones (dead pid, or old) are ever cleaned up.
A consumer that drains `pending()` eagerly (`list(run.pending(...))`) gets only the shards it could lease;
the others are awaited in `committed()` / `finish()`.
"""

from __future__ import annotations

import io
import posixpath
import re
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from cirflow.schemas.errors import StoreError
from cirflow.storage.keys import canonical, stage_key
from cirflow.storage.lease import Leases
from cirflow.storage.manifest import (
    COMMITS,
    MANIFEST,
    STORE_FORMAT,
    FileRecord,
    Manifest,
    ShardRecord,
    host_info,
    library_versions,
    now,
)
from cirflow.storage.store import Artifact, ArtifactStore, checksums, describe_error, intact, safe_relpath, sha256_bytes
from cirflow.storage.writers import is_stale_temp, is_temp

_SHARD_INDEX_RE = re.compile(r"^.+-(?P<index>\d+)\.parquet$")
POLL_SECONDS = 0.25  # how often a writer looks again at shards another writer is computing

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
        self._leases = Leases(store, self.dir)
        self._open: set[str] = set()  # shards handed out by pending() and not committed yet
        self._deferred: dict[str, list[Shard]] = {}  # table -> shards another live writer is computing
        self._others: set[str] = set()  # shards a concurrent writer computed during this run
        self._plans: dict[str, list[Shard]] = {}  # table -> its shard plan, for the tables pending() was asked
        self.artifact: Artifact | None = None
        manifest, why = store.load_manifest(stage, self.key)
        if manifest is not None and manifest.store_format >= STORE_FORMAT:
            art = Artifact(store, manifest)
            if not art.problems():
                self.artifact = art
                art.report = self.report
                self.report.status = "cached"
                self.report.shards_skipped = len(art.manifest.shards)
                self.report.stats = dict(art.manifest.stats)
                return
        if manifest is not None or why is not None:
            # A corrupt, unreadable, garbage or older-format manifest demotes the artifact to an unfinished run:
            # good shards are kept, bad ones redone.
            path = store.path(stage, self.key, MANIFEST)
            try:
                store.discard(path, recursive=True)
            except OSError as e:
                raise StoreError(f"{stage}/{self.key[:12]}/{MANIFEST}: cannot replace it, "
                                 f"{describe_error(e)}") from None
        self._load_commits()

    @property
    def cached(self) -> bool:
        return self.artifact is not None

    # resume --------------------------------------------------------------------------------------
    def _load_commits(self) -> None:
        for path in self._listing(posixpath.join(self.dir, COMMITS)):
            if not path.endswith(".json"):
                continue  # a temporary file of an interrupted or running commit
            try:
                rec = ShardRecord.model_validate_json(self.store.read_bytes(path))
            except (OSError, ValueError):
                continue  # garbage or unreadable: that shard is recomputed
            self._commits[rec.name] = rec
        self._clean_stale_temps()

    def _listing(self, folder: str) -> list[str]:
        try:
            return self.store.fs.ls(folder, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _clean_stale_temps(self) -> None:
        """Temporary files of writers that are gone; a live sibling's (another run, a Ray partition) are kept."""
        for folder in (self.dir, posixpath.join(self.dir, COMMITS)):
            for path in self._listing(folder):
                if is_temp(path) and is_stale_temp(path, self.store.mtime(path)):
                    self.store.discard(path)

    def _is_committed(self, shard: Shard) -> bool:
        """Whether `shard` has a valid commit on disk now (ours, an earlier run's or a concurrent writer's);
        a valid one is adopted into this run's records."""
        rec = self.store.read_commit(self.stage, self.key, shard.name)
        if rec is None or (rec.start, rec.stop, rec.table) != (shard.start, shard.stop, shard.table):
            return False
        try:
            data = self.store.read_bytes(self.store.path(self.stage, self.key, shard.name))
        except (OSError, ValueError):
            return False
        if not intact(rec, data):
            return False
        self._commits[shard.name] = rec
        return True

    def _refresh_side_tables(self) -> None:
        """Side tables (committed with the shard index of a planned table, never through pending(): a stage's
        failures table) as they are on disk now: a concurrent writer's are adopted, and records of an older
        plan (another shard size) are dropped, so the manifest lists exactly the current plan's shards."""
        if not self._plans:
            return
        ranges = {s.index: (s.start, s.stop) for shards in self._plans.values() for s in shards}

        def fits(rec: ShardRecord) -> bool:
            m = _SHARD_INDEX_RE.match(rec.name)
            return m is not None and ranges.get(int(m["index"])) == (rec.start, rec.stop)

        for name in [n for n, r in self._commits.items() if r.table not in self._plans and not fits(r)]:
            del self._commits[name]
        for path in self._listing(posixpath.join(self.dir, COMMITS)):
            base = posixpath.basename(path)
            if is_temp(base) or not base.endswith(".json") or base[:-5] in self._commits:
                continue
            rec = self.store.read_commit(self.stage, self.key, base[:-5])
            if rec is None or rec.table in self._plans or not fits(rec):
                continue
            self._is_committed(Shard(rec.table, int(_SHARD_INDEX_RE.match(rec.name)["index"]), rec.start, rec.stop))

    def _sides_intact(self, shard: Shard) -> bool:
        """Side-table shards of the same index (committed before the main one, e.g. the images of a shard of
        generated images) still match their commit records: a bad one makes the whole shard incomplete."""
        suffix = f"-{shard.index:05d}.parquet"
        for rec in list(self._commits.values()):
            if rec.table == shard.table or not rec.name.endswith(suffix) or rec.table in self._plans:
                continue
            try:
                data = self.store.read_buffer(self.store.path(self.stage, self.key, rec.name))
            except (OSError, ValueError):
                data = None
            if data is None or not intact(rec, data):
                del self._commits[rec.name]
                return False
        return True

    def _claim(self, shard: Shard) -> str:
        """"done" (validly committed), "busy" (another live writer holds its lease) or "ours" (leased to us)."""
        committed = self._is_committed(shard)
        if committed and self._sides_intact(shard):
            return "done"
        if not self._leases.acquire(shard.name):
            return "busy"
        if not committed and self._is_committed(shard):  # committed between our first look and the lease
            self._leases.release(shard.name)
            return "done"
        return "ours"

    def plan(self, n_rows: int, shard_size: int, table: str = "data") -> list[Shard]:
        shard_size = max(1, int(shard_size))
        bounds = range(0, max(n_rows, 1), shard_size) if n_rows else [0]
        return [Shard(table, i, s, min(s + shard_size, n_rows)) for i, s in enumerate(bounds)]

    def pending(self, n_rows: int, shard_size: int, table: str = "data") -> Iterator[Shard]:
        """Shards still to compute, in order. Committed ones count as skipped."""
        if self.cached:
            return
        shards = self.plan(n_rows, shard_size, table)
        self._plans[table] = shards
        # Drop commit records of an older plan for this table (shard size changed): they no longer describe files.
        wanted = {s.name for s in shards}
        for name in [n for n, r in self._commits.items() if r.table == table and n not in wanted]:
            del self._commits[name]
        partition = _PARTITION.get()
        if partition is not None:
            rank, world = partition
            shards = [s for s in shards if s.index % world == rank]
        busy = yield from self._hand_out(shards)
        # Shards another writer is computing: wait for them, or take one over when its writer stops. Waiting
        # while a shard we handed out is still uncommitted (an eager consumer) could deadlock two writers, so
        # then they are left for committed()/finish() to await.
        while busy:
            if self._open:
                self._deferred.setdefault(table, []).extend(busy)
                return
            time.sleep(POLL_SECONDS)
            busy = yield from self._hand_out(busy)

    def _hand_out(self, shards: list[Shard]):
        busy = []
        for shard in shards:
            state = self._claim(shard)
            if state == "done":
                self.report.shards_skipped += 1
            elif state == "busy":
                busy.append(shard)
                self._others.add(shard.name)
            else:
                self._commits.pop(shard.name, None)
                self._open.add(shard.name)
                yield shard
        return busy

    def _await_others(self, table: str | None = None) -> None:
        """Block until the shards other writers were computing are committed (an eager consumer's deferred ones)."""
        for name in [t for t in self._deferred if table is None or t == table]:
            waiting = self._deferred[name]
            while waiting:
                still = []
                for shard in waiting:
                    if self._is_committed(shard):
                        self.report.shards_skipped += 1
                    elif self._leases.holder(shard.name) is None and not self._is_committed(shard):
                        raise StoreError(f"{self.stage}/{self.key[:12]}/{shard.name}: the writer that was computing "
                                         "it stopped before committing it; rerun the stage to compute it")
                    else:
                        still.append(shard)
                waiting = still
                if waiting:
                    time.sleep(POLL_SECONDS)
            del self._deferred[name]

    def committed(self, table: str = "data", columns: list[str] | None = None) -> pa.Table:
        """Every committed shard of `table`, this run's, an interrupted run's and a concurrent writer's alike (for
        whole-artifact stats); waits for shards a concurrent writer is still computing."""
        self._await_others()
        self._refresh_side_tables()
        shards = sorted((r for r in self._commits.values() if r.table == table), key=lambda r: r.name)
        partial = Manifest(stage=self.stage, key=self.key, version=self.version, params={}, inputs={}, shards=shards,
                           schemas={k: str(v) for k, v in self.schemas.items()})
        return Artifact(self.store, partial).read(table, columns)

    def shard_seconds(self, table: str = "data") -> float:
        self._await_others()
        self._refresh_side_tables()
        return sum(r.seconds for r in self._commits.values() if r.table == table)

    # writing -------------------------------------------------------------------------------------
    def commit(self, shard: Shard, table: pa.Table, seconds: float | None = None) -> ShardRecord:
        schema = self.schemas.get(shard.table)
        if schema is not None:
            table = table.cast(schema) if table.schema != schema else table
        buf = io.BytesIO()
        pq.write_table(table, buf, **_write_options(table.schema))
        data = buf.getvalue()
        known = self._commits.get(shard.name)  # the commit this run means to replace, if any (a retry, a resume)
        self._hold(shard)
        try:
            if self._is_committed(shard) and self._commits[shard.name] != known:
                # another writer committed it while we computed (its lease lapsed): keep theirs, never replace
                # a file a reader may already have checked
                self.report.shards_skipped += 1
                return self._commits[shard.name]
            self.store.write_atomic(self.store.path(self.stage, self.key, shard.name), data)
            rec = ShardRecord(table=shard.table, name=shard.name, rows=table.num_rows, start=shard.start,
                              stop=shard.stop, seconds=seconds or 0.0, **checksums(data))
            self.store.write_atomic(self.store.path(self.stage, self.key, f"{COMMITS}/{shard.name}.json"),
                                    rec.model_dump_json().encode())
            self._commits[shard.name] = rec
            self.report.shards_computed += 1
            self._leases.renew()
            return rec
        finally:
            self._open.discard(shard.name)
            self._leases.release(shard.name)

    def _hold(self, shard: Shard) -> None:
        """Hold `shard`'s lease (normally taken in pending()), or return once another writer committed it."""
        while not self._leases.acquire(shard.name):
            if self._is_committed(shard):
                return
            time.sleep(POLL_SECONDS)

    def write_table(self, table_name: str, table: pa.Table) -> ShardRecord | None:
        """A whole small table as one shard (ingest tables, metrics). On a cached run nothing is written and the
        stored artifact's record is returned: `pending()` yields nothing there and `_commits` is never loaded, so
        the record must come from the manifest. None when no record exists in this process: a partition worker
        whose rank does not own shard 0, or a cached manifest without that table."""
        shard = Shard(table_name, 0, 0, table.num_rows)
        if self.cached:
            return next((r for r in self.artifact.manifest.shards if r.name == shard.name), None)
        for _ in self.pending(table.num_rows, max(table.num_rows, 1), table_name):
            return self.commit(shard, table)
        self._await_others(table_name)  # committed by a concurrent writer while an eager consumer held other shards
        return self._commits.get(shard.name)

    def write_file(self, name: str, data: bytes) -> FileRecord:
        name = safe_relpath(name)
        self._write_once(self.store.path(self.stage, self.key, name), data)
        rec = FileRecord(name=name, **checksums(data))
        self._files[name] = rec
        return rec

    def write_blob(self, name: str, data: bytes) -> tuple[str, int]:
        """A per-item file (a generated image) whose checksum the stage keeps in its own index table rather
        than in the manifest: write blobs first, then commit the shard that indexes them, so a committed
        shard always points at complete files. Returns (sha256, size)."""
        self._write_once(self.store.path(self.stage, self.key, safe_relpath(name)), data)
        return sha256_bytes(data), len(data)

    def _write_once(self, path: str, data: bytes) -> None:
        """Write unless the same bytes are there already: a concurrent identical writer then never replaces a file
        under a reader (stage outputs are deterministic per key; differing bytes are rewritten)."""
        try:
            if self.store.read_bytes(path) == data:
                return
        except (OSError, ValueError):
            pass
        self.store.write_atomic(path, data)

    def finish(self, stats: Mapping[str, Any] | None = None, timings: Mapping[str, float] | None = None,
               input_content: Mapping[str, str] | None = None) -> Artifact:
        if self.cached:
            return self.artifact
        if _PARTITION.get() is not None:
            self._leases.release_all()
            return None  # a partition worker: the driver writes the manifest once every shard is committed
        self._await_others()
        self._refresh_side_tables()
        self._leases.release_all()
        if self.report.shards_skipped:
            # some (or all) shards were committed by an interrupted run
            self.report.status = "resumed"
        elapsed = time.perf_counter() - self._t0
        shards = sorted(self._commits.values(), key=lambda r: (r.table, r.name))
        existing = self._finished_by_another()
        if existing is not None:
            return existing
        manifest = Manifest(
            store_format=STORE_FORMAT, stage=self.stage, key=self.key, version=self.version, params=self.params,
            inputs=self.inputs,
            schemas={k: str(v) for k, v in self.schemas.items()}, shards=shards,
            files=sorted(self._files.values(), key=lambda r: r.name), stats=canonical(dict(stats or {})),
            timings={"wall_seconds": round(elapsed, 4), "shard_seconds": round(sum(s.seconds for s in shards), 4),
                     **(timings or {})},
            runtime=self.runtime, libraries=library_versions(), host=host_info(), created_at=now(),
            input_content=dict(input_content or {}),
        )
        self.store.commit_manifest(self.stage, self.key, manifest.model_dump_json(indent=2).encode())
        self.artifact = Artifact(self.store, manifest)
        self.artifact.report = self.report
        self.report.stats = dict(manifest.stats)
        self.report.seconds = elapsed
        return self.artifact

    def _finished_by_another(self) -> Artifact | None:
        """A valid manifest a concurrent identical run wrote first is kept rather than replaced."""
        manifest, _ = self.store.load_manifest(self.stage, self.key)
        if manifest is None or manifest.store_format < STORE_FORMAT:
            return None
        art = Artifact(self.store, manifest)
        if art.problems():
            return None
        self.artifact = art
        art.report = self.report
        self.report.stats = dict(manifest.stats)
        self.report.seconds = time.perf_counter() - self._t0
        return art


    # used by the Stage contract (tasks/stage.py): per-item retry of failed rows ---------------------------
    def read_shard(self, shard: Shard) -> pa.Table | None:
        """One committed shard of this run (None when it is not committed under the current plan, or when a
        concurrent writer computed it during this run: its failures are as final as ours)."""
        if shard.name in self._others or not self._is_committed(shard):
            return None
        rec = self._commits[shard.name]
        partial = Manifest(stage=self.stage, key=self.key, version=self.version, params={}, inputs={}, shards=[rec],
                           schemas={k: str(v) for k, v in self.schemas.items()})
        return Artifact(self.store, partial).read(shard.table)

    def restart(self) -> None:
        """A complete artifact computed from other content of one of its inputs (an input whose failed rows
        `--retry-failed` recomputed since, under the same key) is computed again from scratch: its manifest and
        every commit record are removed, so no shard built from the old rows is kept."""
        if self.artifact is None:
            return
        self.artifact = None
        self.store.discard(self.store.path(self.stage, self.key, MANIFEST))
        self.store.discard(posixpath.join(self.dir, COMMITS), recursive=True)
        self._commits = {}
        self.report.status = "computed"
        self.report.shards_skipped = 0

    def reopen(self) -> None:
        """A complete artifact becomes an unfinished run again (`--retry-failed`): its shards stay committed,
        the manifest is removed and written anew by `finish`."""
        if self.artifact is None:
            return
        self.artifact = None
        self.store.discard(self.store.path(self.stage, self.key, MANIFEST))
        self.report.status = "resumed"
        self.report.shards_skipped = 0
        self._load_commits()


def _write_options(schema: pa.Schema) -> dict:
    """zstd, except for fixed_size_binary columns (raw float vectors), which are written plain: no compression
    (zstd saves ~7 % on float bytes and made reading them several times slower), no dictionary (distinct
    vectors never repeat; the attempt left dictionary pages that cost 2x on read), no min/max statistics
    (kilobyte-wide byte strings per page, read back for nothing) and one data page per row group (decoding many
    1 MB pages cost ~25 % more) -- bench/embeddings_read.py."""
    raw = [f.name for f in schema if pa.types.is_fixed_size_binary(f.type)]
    if not raw:
        return {"compression": "zstd"}
    rest = [f.name for f in schema if f.name not in raw]
    return {"compression": {f.name: "none" if f.name in raw else "zstd" for f in schema},
            "use_dictionary": rest, "write_statistics": rest, "data_page_size": 1 << 28}


def begin(store: ArtifactStore, stage: str, version: str, params: Any, inputs: Mapping[str, Artifact | str],
          runtime: Mapping[str, Any] | None = None, schemas: Mapping[str, pa.Schema] | None = None) -> StageRun:
    return StageRun(store, stage, version, params, inputs, runtime, schemas)
