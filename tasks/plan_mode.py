"""Plan mode: a flow's own code runs, but every stage only computes its key and looks the store up.

Keys depend on upstream keys and on the same Params the stage builds (prompt text, model weight hashes), so the
planner does not re-derive them: `execute` (tasks/stage.py) asks `active()` first and, inside `planning()`,
hands the stage to `Plan.visit` instead of running it. A cached stage returns its real Artifact (the flow may
read it, as it would in a run); a stage that would run returns a `Planned` placeholder that carries only its
stage and key. Flow code that needs the *content* of a stage that is not computed yet stops the plan there
(`PlanBlocked`): what comes after cannot be keyed before it runs. No model is loaded (no stage code runs) and
Prefect is not involved (stage tasks call their function directly, tasks/wrappers.py).
"""

from __future__ import annotations

import posixpath
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from cirflow.schemas.errors import CirflowError
from cirflow.storage import Artifact, ArtifactStore
from cirflow.storage.keys import canonical, stage_key
from cirflow.storage.manifest import COMMITS, STORE_FORMAT, Manifest

_PLAN: ContextVar["Plan | None"] = ContextVar("cirflow_plan", default=None)
_DIRECT: ContextVar[bool] = ContextVar("cirflow_direct", default=False)  # stage tasks as plain calls


class PlanBlocked(CirflowError):
    """Flow code needed the content of a stage the plan has not computed."""


class Planned:
    """A stage output that does not exist yet: its address and the manifest fields known before it runs
    (params, inputs: what downstream stages key on, e.g. the benchmark name), nothing to read."""

    def __init__(self, stage: str, key: str, status: str, manifest: Manifest):
        self.stage, self.key, self.status, self.manifest = stage, key, status, manifest
        self.report = None

    def __repr__(self) -> str:
        return f"Planned({self.stage}/{self.key[:12]}, {self.status})"

    def __getattr__(self, name: str):
        raise PlanBlocked(f"the flow reads {self.stage}/{self.key[:12]} ({name}), which would be {self.status} "
                          "first: later stages depend on its content and can only be planned after it ran")


@dataclass
class Step:
    stage: str
    key: str
    status: str  # cached | resumed (committed shards of an earlier run) | computed
    inputs: dict[str, str] = field(default_factory=dict)
    # the model configs in the stage's Params (what its model slots load or ask: an MLLMStage's `mllm`), so the
    # CLI checks only the servers of stages that compute (flows/method.py); None = the stage names none
    models: tuple | None = None
    failed: int | None = None  # failed rows of the stored artifact (cached only): what --retry-failed re-asks
    asks_server: bool = False  # an MLLMStage: computing it sends requests to its model (server)


class Plan:
    def __init__(self):
        self.steps: list[Step] = []
        self.blocked: str | None = None  # why planning stopped early, if it did
        self.seconds = 0.0

    def visit(self, st, store: ArtifactStore, inputs: dict, params) -> Artifact | Planned:
        from cirflow.tasks.stage import MLLMStage, key_params  # here: tasks.stage imports this module

        keys = {k: v.key for k, v in inputs.items()}
        identity = canonical(key_params(params))
        key = stage_key(st.name, st.version, identity, keys)
        art = _cached(store, st.name, key)
        status = "cached" if art is not None else "resumed" if _has_commits(store, st.name, key) else "computed"
        if not any(s.key == key for s in self.steps):  # variants that share an artifact list it once
            failed = int((art.manifest.stats or {}).get("failed") or 0) if art is not None else None
            self.steps.append(Step(st.name, key, status, keys, _model_configs(params), failed,
                                   asks_server=isinstance(st, MLLMStage)))
        if art is not None:
            return art
        return Planned(st.name, key, status, Manifest(stage=st.name, key=key, version=st.version, params=identity,
                                                      inputs=keys))

    @property
    def nothing_to_compute(self) -> bool:
        return self.blocked is None and all(s.status == "cached" for s in self.steps)


def _model_configs(params) -> tuple | None:
    """The Params fields that configure a model backend (MLLMConfig: `backend`, `base_url`)."""
    found = tuple(v for _, v in params if hasattr(v, "backend") and hasattr(v, "base_url")) \
        if hasattr(type(params), "model_fields") else ()
    return found or None


def _cached(store: ArtifactStore, stage: str, key: str) -> Artifact | None:
    """The artifact when its manifest is valid and current. Shard checksums are not read here (that is a
    verification, `cirflow store verify`); a run still checks them before reusing anything."""
    m, _ = store.load_manifest(stage, key)
    return Artifact(store, m) if m is not None and m.store_format >= STORE_FORMAT else None


def _has_commits(store: ArtifactStore, stage: str, key: str) -> bool:
    try:
        return any(p.endswith(".json") for p in store.fs.ls(posixpath.join(store.artifact_dir(stage, key), COMMITS),
                                                            detail=False))
    except (FileNotFoundError, NotADirectoryError):
        return False


def active() -> Plan | None:
    return _PLAN.get()


@contextmanager
def direct():
    """Stage tasks run as plain function calls, outside Prefect (the store shortcut, flows/plan.py)."""
    token = _DIRECT.set(True)
    try:
        yield
    finally:
        _DIRECT.reset(token)


@contextmanager
def planning():
    plan = Plan()
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


class Plannable:
    """A stage's Prefect task (tasks/wrappers.py), except under `--plan` and in the store shortcut: then its
    function is called directly, so planning never creates a Prefect task run (nor starts a server to record
    one; the task itself is a tasks/lazy_prefect.LazyTask, so Prefect is not even imported)."""

    def __init__(self, fn, task):
        self.fn, self.task = fn, task
        self.__name__ = getattr(fn, "__name__", "stage")

    def __call__(self, *args, **kwargs):
        plain = _PLAN.get() is not None or _DIRECT.get()
        return (self.fn if plain else self.task)(*args, **kwargs)
