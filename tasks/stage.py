"""The Stage contract: a stored stage is one declaration.

    class ComposeTargetText(MLLMStage):
        name, version = "compose_target_text", "2"
        Params = ComposeParams            # pydantic: the WHOLE key identity (model key fields, sampler, prompt text)
        Runtime = MLLMRuntime             # excluded from the key: shard size, concurrency, device, progress
        inputs = ("bench",)               # named input artifacts
        outputs = {"data": TEXTS}         # every table with its pyarrow schema, validated at commit
        models = ("mllm",)                # model slots: handles a flow passes in, never shipped to workers

        def items(self, ctx): ...          # the work list, in a deterministic order
        def request(self, ctx, item): ...  # MLLM family: how one item becomes a ChatRequest
        def row(self, ctx, item, result): ...  # ... and how an answer becomes a row

`execute(Stage, store, inputs, params, runtime, models, rank=, world=)` does the rest once for every stage:
the key, cached / resumed / computed, shard planning over `items`, per-shard commit, failure accounting
(`status` / `error` columns → ok / failed counts and the first failures in the manifest stats), the failure
threshold, and the manifest. `rank` and `world` are explicit arguments (datatrove's `run(data, rank,
world_size)`): a partition computes the shards whose index % world == rank and leaves the manifest to the
driver's final call.

Failures never lie:
* a transient backend failure (server down, 5xx, timeout) is an exception: the shard being computed is not
  committed, no manifest is written, and the run fails with the backend's one-line message;
* a per-item failure is a row with status "failed" and its reason; when the failed share of the stage exceeds
  `Runtime.max_failure_rate`, the succeeded shards stay committed but the manifest is NOT written and
  `StageFailed` is raised — the next run asks again only for the failed items of the earlier run (per row
  where rows map 1:1 to items, `row_per_item`, as in the MLLM family: ok rows are kept; per shard where a stage
  writes side tables, `redo_failed_shards`); a run never re-asks its own failures. Stages whose failed rows
  are data (unreadable collection files, the refinement's refusals) set `failure_accounting = False`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence, Union

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from cirflow.schemas.errors import CirflowError
from cirflow.schemas.progress import current as current_line, stage_progress
from cirflow.storage import Artifact, ArtifactStore, Shard, StageRun, begin
from cirflow.storage.stage_run import shard_partition
from cirflow.tasks import plan_mode
from cirflow.tasks.lazy import Lazy

FIRST_FAILURES = 20
# columns that name a failed item in the manifest's first failures (whichever the failure table has)
ID_COLUMNS = ("id", "query_id", "pair_id", "image_id", "sample")
DEFAULT_MAX_FAILURE_RATE = 0.05
_POLICY: ContextVar[tuple[float, bool]] = ContextVar("cirflow_failure_policy",
                                                     default=(DEFAULT_MAX_FAILURE_RATE, False))


@contextmanager
def failure_policy(max_failure_rate: float | None, retry_failed: bool | None = None):
    """How every stage a flow runs inside this block treats per-item failures: the config's `max_failure_rate`
    and `cirflow run --retry-failed` (recompute the failed rows of complete artifacts). A stage's own Runtime
    values, when set, win."""
    rate = DEFAULT_MAX_FAILURE_RATE if max_failure_rate is None else float(max_failure_rate)
    retry = _POLICY.get()[1] if retry_failed is None else bool(retry_failed)
    token = _POLICY.set((rate, retry))
    try:
        yield
    finally:
        _POLICY.reset(token)


class StageFailed(CirflowError):
    """A stage's per-item failures exceed its threshold: what succeeded is committed, no manifest is written.
    `execute` attaches what a failed run's report shows: the stage, its key, its counts and every failed row
    (up to REPORT_FAILURES); `run_folder` is set once that folder is written (the CLI prints it)."""

    exit_code = 3
    stage: str = ""
    key: str = ""
    stats: dict = {}
    failures: list = []
    report: dict = {}
    run_folder: str = ""


REPORT_FAILURES = 5000  # failed rows a failed run's report lists: enough to see the pattern, bounded in size
_DONE: ContextVar[list | None] = ContextVar("cirflow_done_artifacts", default=None)


@contextmanager
def record_artifacts():
    """Collects every artifact `execute` returns inside the block (cached or computed), in order: what a run
    had finished when a stage stopped it (its failed run folder shows them)."""
    done: list = []
    token = _DONE.set(done)
    try:
        yield done
    finally:
        _DONE.reset(token)


class Params(BaseModel):
    """Base of every stage's key identity. Frozen and strict: a field is either in the key or not there."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class Runtime(BaseModel):
    """Knobs that never change what a stage writes; excluded from the key (recorded in the manifest)."""

    model_config = ConfigDict(extra="forbid")

    shard_size: int = Field(256, ge=1)
    progress: bool = True
    # the failed share of items above which the stage fails the run; None = the run's policy (`failure_policy`,
    # set once per flow from the config's `max_failure_rate`, default DEFAULT_MAX_FAILURE_RATE)
    max_failure_rate: float | None = Field(None, ge=0.0, le=1.0)
    # recompute the failed rows of an already complete artifact; None = the run's policy (`--retry-failed`)
    retry_failed: bool | None = None


class MLLMRuntime(Runtime):
    """MLLM stages also record where the prompt came from and which backend answered (not part of the key)."""

    template_source: str = ""
    backend: str = ""


def key_params(value: Any) -> Any:
    """The key form of a params value: nested configs contribute their `key_fields()` (model identity without
    server addresses or batch sizes), everything else its JSON form."""
    if hasattr(value, "key_fields") and callable(value.key_fields):
        return value.key_fields()
    if isinstance(value, BaseModel):
        return {k: key_params(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, Mapping):
        return {str(k): key_params(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [key_params(v) for v in value]
    return value


@dataclass
class Context:
    """What a stage's code sees while it runs."""

    stage: "Stage"
    store: ArtifactStore
    params: Params
    runtime: Runtime
    inputs: dict[str, Artifact]
    models: dict[str, Lazy]
    run: StageRun
    rank: int = 0
    world: int = 1
    scratch: dict = field(default_factory=dict)  # per-run memo (e.g. decoded input tables, a crops folder)

    def model(self, slot: str):
        """The loaded model of a slot (loads it on first use: a fully committed stage never loads anything)."""
        return self.models[slot].get()

    def commit(self, shard: Shard, table: pa.Table, seconds: float | None = None):
        """Commit one shard of a declared output table, validated against its declared schema."""
        schema = self.schema(shard.table, table)
        if table.schema != schema:
            try:
                table = table.cast(schema)
            except (ValueError, TypeError, NotImplementedError, pa.ArrowException) as e:
                raise CirflowError(f"{self.stage.name}: table {shard.table!r} does not match its declared "
                                   f"schema: {str(e).splitlines()[0][:300]}") from e
        return self.run.commit(shard, table, seconds=seconds)

    def write_table(self, name: str, table: pa.Table):
        """A whole small output table as one shard (stages that override `produce`)."""
        shard = Shard(name, 0, 0, table.num_rows)
        for _ in self.run.pending(table.num_rows, max(table.num_rows, 1), name):
            return self.commit(shard, table)
        return None

    def schema(self, name: str, table: pa.Table | None = None) -> pa.Schema:
        """The declared schema of output `name`. A schema whose width a model decides (an encoder's embedding
        dim) is declared as a function of the first table committed in this run and fixed from then on."""
        if name not in self.run.schemas:
            decl = self.stage.outputs.get(name)
            if decl is None:
                raise CirflowError(f"{self.stage.name}: {name!r} is not one of its declared outputs "
                                   f"{sorted(self.stage.outputs)}")
            if callable(decl) and table is None:
                return None
            self.run.schemas[name] = decl(table) if callable(decl) else decl
        return self.run.schemas[name]


class Stage:
    """Declaration of one stored stage. Subclasses set the class attributes and implement `items` + `compute`,
    or override `produce` for stages that are not a map over items (metrics, rankings). The console line of an
    overriding stage has no count (a pulsing bar and its name) unless it calls `current_line().start(total,
    done)` / `advance`; a loop it runs through `step_progress` (a training's steps) becomes its count."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    Params: ClassVar[type[Params]] = Params
    Runtime: ClassVar[type[Runtime]] = Runtime
    inputs: ClassVar[tuple[str, ...]] = ()
    # table -> schema; a callable `(first committed table) -> schema` where a model decides a width (embeddings)
    outputs: ClassVar[Mapping[str, Union[pa.Schema, Callable[[pa.Table], pa.Schema]]]] = {}
    models: ClassVar[tuple[str, ...]] = ()
    retries: ClassVar[int] = 0  # Prefect task retries: for stages that meet restarting servers
    shardable: ClassVar[bool] = False  # may run as (rank, world) partitions on a distributed task runner
    table: ClassVar[str] = "data"  # the table `items` map into (committed last: it marks a shard complete)
    status_table: ClassVar[str | None] = None  # the table whose `status` column counts failures (default: table)
    failure_accounting: ClassVar[bool] = True  # False: failed rows are data, never a reason to fail the run

    # --- per stage -------------------------------------------------------------------------------------
    def items(self, ctx: Context) -> Sequence:
        raise NotImplementedError

    def compute(self, ctx: Context, items: Sequence) -> pa.Table:
        """The output rows for `items` (one shard). Per-item failures are rows with status "failed"."""
        raise NotImplementedError

    def model_factory(self, slot: str, ctx: Context):
        """How a slot loads when the caller passed no handle (a partition on a worker, a direct call)."""
        raise CirflowError(f"{self.name}: no model handle for slot {slot!r}")

    def stats(self, ctx: Context) -> dict:
        """Extra stats for the manifest, over every committed shard."""
        return {}

    def timings(self, ctx: Context) -> dict:
        return {}

    def demote_cached(self, store: ArtifactStore, artifact: Artifact, runtime: Runtime) -> bool:
        """Check a cached artifact beyond the store's own verification (per-item files); True = it was demoted
        to an unfinished run (manifest and the bad shards' commit records removed) and must be resumed."""
        return False

    def failure_table(self) -> str | None:
        return (self.status_table or self.table) if self.failure_accounting else None

    # --- shared: the map over items ----------------------------------------------------------------------
    def produce(self, ctx: Context) -> None:
        work = self.items(ctx)
        shards = list(ctx.run.pending(len(work), ctx.runtime.shard_size, self.table))
        # failed rows of shards committed by an EARLIER run (one that stopped at the failure threshold, or
        # `--retry-failed`) are asked again; this run's own failures are final for this run. Planned before the
        # pending shards are computed: those are not committed yet, so they cannot be in the plan
        redo = self._retry_plan(ctx, work, skip={s.index for s in shards})
        if (line := current_line()) is not None:  # items committed by an earlier run count as done, less the redone
            line.start(len(work), len(work) - sum(s.stop - s.start for s in shards) - sum(len(r) for _, _, r in redo))
        for shard in shards:
            t0 = time.perf_counter()
            out = self.compute(ctx, work[shard.start:shard.stop])
            self._commit_all(ctx, shard, out, time.perf_counter() - t0)
            if line is not None:
                line.advance(shard.stop - shard.start, failed=self._failed_in(out))
        self._retry(ctx, work, redo)

    def _failed_in(self, out) -> int:
        """Failed rows of one computed shard (its status table's `status` column), for the progress line."""
        t = (dict(out) if isinstance(out, Mapping) else {self.table: out}).get(self.failure_table() or "")
        if isinstance(t, pa.Table):
            return 0 if "status" not in t.column_names else sum(s != "ok" for s in t.column("status").to_pylist())
        return sum(isinstance(r, Mapping) and r.get("status", "ok") != "ok" for r in (t or []))

    def _commit_all(self, ctx: Context, shard: Shard, out, seconds: float) -> None:
        """`compute` returns the main table, or {table: rows} with side tables (committed first, so the main
        table's commit marks the shard complete)."""
        tables = dict(out) if isinstance(out, Mapping) else {self.table: out}
        for name, t in tables.items():
            if name != self.table:
                ctx.commit(Shard(name, shard.index, shard.start, shard.stop), t)
        ctx.commit(shard, tables[self.table], seconds=seconds)

    def retry_failed_rows(self, ctx: Context, work: Sequence, skip: set[int] = frozenset()) -> None:
        """Recompute the failed items of committed shards: per row, keeping the ok rows, for stages whose rows
        map 1:1 to items (`row_per_item`); else the whole shard that holds a failed row."""
        self._retry(ctx, work, self._retry_plan(ctx, work, skip))

    def _retry_plan(self, ctx: Context, work: Sequence, skip: set[int] = frozenset()) -> list:
        """(shard, its committed status table, the row indices to redo) of every committed shard with a failed
        row; the indices are every row of the shard for stages that redo whole shards."""
        status_name = self.failure_table()
        if not (self.row_per_item or self.redo_failed_shards) or "status" not in _names(self.outputs.get(status_name)):
            return []
        plan = []
        for shard in ctx.run.plan(len(work), ctx.runtime.shard_size, self.table):
            if shard.index in skip or (ctx.world > 1 and shard.index % ctx.world != ctx.rank):
                continue
            status_shard = Shard(status_name, shard.index, shard.start, shard.stop)
            old = ctx.run.read_shard(status_shard) if ctx.run.read_shard(shard) is not None else None
            if old is None:
                continue
            redo = [i for i, s in enumerate(old.column("status").to_pylist()) if s != "ok"]
            if redo:
                plan.append((shard, old, redo if self.row_per_item else list(range(shard.stop - shard.start))))
        return plan

    def _retry(self, ctx: Context, work: Sequence, plan: list) -> None:
        line = current_line()
        for shard, old, redo in plan:
            t0 = time.perf_counter()
            if not self.row_per_item:
                out = self.compute(ctx, work[shard.start:shard.stop])
                self._commit_all(ctx, shard, out, time.perf_counter() - t0)
            else:
                out = self.compute(ctx, [work[shard.start + i] for i in redo])
                rows = old.to_pylist()
                for i, r in zip(redo, out.to_pylist()):
                    rows[i] = r
                ctx.commit(shard, pa.Table.from_pylist(rows, schema=old.schema), seconds=time.perf_counter() - t0)
            if line is not None:  # the redone items advance the line like fresh ones
                line.advance(len(redo), failed=self._failed_in(out))

    # failed items of an earlier run's committed shards are asked again: per row (rows map 1:1 to items, in
    # order), or by recomputing the shard (stages with side tables); neither for failures that are permanent by
    # nature (an unreadable input file)
    row_per_item: ClassVar[bool] = False
    redo_failed_shards: ClassVar[bool] = False


class MLLMStage(Stage):
    """The MLLM family: a stage writes how an item becomes a request and how an answer becomes a row;
    batching, seeding, shard commits and failure accounting are shared.

    * `request` may return None: nothing to ask (a missing input caption); `row` then gets `result=None`.
    * `multi_round` stages (a retry with a fresh seed, a second step that reads the first answer) also write
      `follow_up(ctx, item, answers)` -> the next request or None; their `row` gets the list of answers.
    * a stage that writes more than one table per shard overrides `rows_to_tables`.
    """

    models = ("mllm",)
    retries = 1  # a restarting server: committed shards survive the retry
    shardable = True
    row_per_item = True
    multi_round: ClassVar[bool] = False

    def request(self, ctx: Context, item):  # -> ChatRequest | None
        raise NotImplementedError

    def follow_up(self, ctx: Context, item, answers: list):  # -> ChatRequest | None
        return None

    def row(self, ctx: Context, item, result) -> dict:
        raise NotImplementedError

    def compute(self, ctx: Context, items: Sequence):
        answers: list[list] = [[] for _ in items]
        asks = [(i, self.request(ctx, it)) for i, it in enumerate(items)]
        while asks := [(i, r) for i, r in asks if r is not None]:
            results = ctx.model(self.models[0]).generate([r for _, r in asks], progress=ctx.runtime.progress)
            for (i, _), res in zip(asks, results):
                answers[i].append(res)
            asks = [(i, self.follow_up(ctx, items[i], answers[i])) for i, _ in asks] if self.multi_round else []
        return self.rows_to_tables(ctx, items, [a if self.multi_round else (a[-1] if a else None) for a in answers])

    def rows_to_tables(self, ctx: Context, items: Sequence, results: list):
        schema = self.outputs[self.table]
        return pa.Table.from_pylist([self.row(ctx, it, r) for it, r in zip(items, results)], schema=schema)


def _produce(st: Stage, ctx: Context) -> None:
    """`produce` under the stage's line in the console's progress display (nothing drawn off a terminal)."""
    with stage_progress(st.name, enabled=ctx.runtime.progress):
        st.produce(ctx)


# ------------------------------------------------------------------------------------------------ running


def _names(schema) -> list[str]:
    return list(schema.names) if isinstance(schema, pa.Schema) else []


def failure_stats(run: StageRun, table: str, schema: pa.Schema | None, limit: int = FIRST_FAILURES) -> dict:
    """ok / failed counts and the first failures over every committed shard of `table` (tables with a `status`
    column; `error` and an id column give the reasons)."""
    names = _names(schema)
    if "status" not in names:
        return {}
    cols = [c for c in (*ID_COLUMNS, "status", "error") if c in names]
    t = run.committed(table, columns=cols)
    status = t.column("status").to_pylist()
    failed_rows = [i for i, s in enumerate(status) if s != "ok"]
    first = []
    for i in failed_rows[:limit]:
        first.append({c: t.column(c)[i].as_py() for c in cols if c != "status"})
    return {"items": len(status), "ok": len(status) - len(failed_rows), "failed": len(failed_rows),
            "failures": first}


def execute(stage: type[Stage] | Stage, store: ArtifactStore, inputs: Mapping[str, Artifact],
            params: Params, runtime: Runtime | None = None, models: Mapping[str, Lazy | None] | None = None, *,
            rank: int = 0, world: int = 1) -> Artifact | None:
    """Run a declared stage into the store. Returns its artifact (None on a partition worker)."""
    st = stage() if isinstance(stage, type) else stage
    runtime = runtime if runtime is not None else st.Runtime()
    missing = [n for n in st.inputs if n not in inputs]
    if missing:
        raise CirflowError(f"{st.name}: missing input artifact(s) {missing}")
    given = {k: v for k, v in inputs.items() if v is not None}
    if (plan := plan_mode.active()) is not None:  # `--plan`: key and store lookup only (tasks/plan_mode.py)
        return plan.visit(st, store, given, params)

    def start():
        return begin(store, st.name, st.version, key_params(params), inputs=given,
                     runtime=runtime.model_dump(mode="json", exclude={"progress"}),
                     schemas={k: v for k, v in st.outputs.items() if isinstance(v, pa.Schema)})

    run = start()
    if run.cached and st.demote_cached(store, run.artifact, runtime):
        run = start()
    if run.cached and _outdated(run.artifact, given):
        run.restart()
    retry = (runtime.retry_failed if runtime.retry_failed is not None else _POLICY.get()[1]) and _retryable(st)
    if run.cached and not (retry and (run.artifact.manifest.stats or {}).get("failed")):
        _record(run.artifact)
        return run.artifact
    if run.cached:
        run.reopen()  # --retry-failed: the complete artifact becomes a resumable run again
    ctx = Context(st, store, params, runtime, dict(given), {}, run, rank, world)
    owned: list[Lazy] = []
    for slot in st.models:
        handle = (models or {}).get(slot) if world == 1 else None  # a partition loads its own model
        if handle is None:
            handle = Lazy(lambda s=slot: st.model_factory(s, ctx))
            owned.append(handle)
        ctx.models[slot] = handle
    try:
        if world > 1:
            with shard_partition(rank, world):
                _produce(st, ctx)
            return None
        _produce(st, ctx)
        name = st.failure_table()
        stats = {**(failure_stats(run, name, st.outputs.get(name)) if name else {}), **st.stats(ctx)}
        try:
            _check_failures(st, runtime, stats)
        except StageFailed as e:  # what the failed run's report shows (flows/summary.py: publish_failed)
            e.stage, e.key = st.name, run.key
            e.report = {**run.report.as_dict(), "status": "failed",  # shards computed before it stopped
                        "seconds": round(time.perf_counter() - run._t0, 3) if hasattr(run, "_t0") else 0.0}
            e.stats = {k: v for k, v in stats.items() if k != "failures"}
            e.failures = failure_stats(run, name, st.outputs.get(name), REPORT_FAILURES).get("failures", [])
            raise
        artifact = run.finish(stats=stats, timings=st.timings(ctx), input_content=input_content(given))
        _record(artifact)
        return artifact
    finally:
        for h in owned:
            h.close()
        for v in ctx.scratch.values():  # scratch folders (crops) live exactly as long as the stage run
            if hasattr(v, "cleanup"):
                v.cleanup()


def _record(artifact: Artifact | None) -> Artifact | None:
    if artifact is not None and (done := _DONE.get()) is not None:
        done.append(artifact)
    return artifact


def _retryable(st: Stage) -> bool:
    """Whether `--retry-failed` can redo a stage's failed rows: it counts them as failures (not data, e.g. an
    unreadable collection file) and redoes them per row or per shard (Stage.retry_failed_rows). Any other
    stage stays cached rather than being reopened for nothing."""
    return st.failure_table() is not None and bool(st.row_per_item or st.redo_failed_shards)


def _outdated(artifact: Artifact, inputs: Mapping[str, Artifact]) -> bool:
    """True when an input's content is no longer what this artifact was computed from: `--retry-failed` rewrote
    the input's failed rows under the same key (the key cannot tell). Compared by content, not by time, so an
    input that was only resumed or re-verified with the same bytes keeps everything downstream cached."""
    recorded = artifact.manifest.input_content or {}
    return any(name in recorded and recorded[name] != a.manifest.content_digest() for name, a in inputs.items()
               if getattr(a, "manifest", None) is not None)


def input_content(inputs: Mapping[str, Artifact]) -> dict[str, str]:
    return {name: a.manifest.content_digest() for name, a in inputs.items() if getattr(a, "manifest", None)}


def _check_failures(st: Stage, runtime: Runtime, stats: dict) -> None:
    items, failed = stats.get("items") or 0, stats.get("failed") or 0
    rate = runtime.max_failure_rate if runtime.max_failure_rate is not None else _POLICY.get()[0]
    if not items or failed / items <= rate:
        return
    first = (stats.get("failures") or [{}])[0]
    reason = first.get("error") or "unknown"
    who = next((first[c] for c in ID_COLUMNS if c in first), None)
    raise StageFailed(
        f"{st.name}: {failed} of {items} items failed ({failed / items:.0%} > max_failure_rate "
        f"{rate:.0%}); first: {who}: {str(reason)[:200]} — the succeeded shards are "
        "kept, the next run asks only for the failed items")
