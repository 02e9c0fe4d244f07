"""Resolve registry entries to configs for this machine, say which can run here and why not, run them through
the method registry (`cirflow run`'s path: validate, preflight, flow; the store reuses what exists) and compare
each metric with the paper's number."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from cirflow.flows.reproduce import registry
from cirflow.flows.reproduce.registry import Entry, merge
from cirflow.schemas.errors import CirflowError, ConfigError

SERVER_EVALUATED = {("cirr", "test1"), ("circo", "test")}
_MEAN = re.compile(r"^mean\((?P<a>[^,]+),(?P<b>[^)]+)\)$")


@dataclass
class Environment:
    """Where this machine's data, models and store are. `models_from`: a folder with one sub-folder per model
    id of tables/models.yaml; `servers`: model id -> OpenAI-compatible base URL; `split`: evaluate on this
    split instead of the paper's (a deviation printed per row); `sets`: dotted overrides ("a.b=1")."""

    data_root: str | None = None
    models_from: str | None = None
    servers: dict[str, str] = field(default_factory=dict)
    store: str = ".cirflow/store"
    out: str = ".cirflow/reproduce"
    split: str | None = None
    sets: dict[str, object] = field(default_factory=dict)
    gpu: bool | None = None   # None: ask torch

    def local_models(self) -> dict[str, str]:
        root = Path(self.models_from) if self.models_from else None
        if root is None or not root.is_dir():
            return {}
        return {p.name: str(p.resolve()) for p in root.iterdir() if p.is_dir() and p.name in registry.models()}

    def has_gpu(self) -> bool:
        if self.gpu is None:
            import torch

            self.gpu = torch.cuda.is_available()
        return self.gpu


@dataclass
class Result:
    entry: Entry
    ours: float | None
    status: str          # "within tolerance", "differs", or "not runnable: <why>" / "server-evaluated: ..."
    deviations: list[str]

    @property
    def delta(self) -> float | None:
        return None if self.ours is None or self.entry.reported is None else self.ours - self.entry.reported

    def as_dict(self) -> dict:
        e = self.entry
        return {"paper": e.paper, "table": e.table, "row": e.row, "metric": e.column, "reported": e.reported,
                "ours": self.ours, "delta": self.delta, "status": self.status, "deviations": self.deviations,
                "inconsistencies": list(e.inconsistencies)}


def split_of(e: Entry, env: Environment) -> str | None:
    return env.split if env.split is not None and e.split is not None else e.split


def build_config(e: Entry, env: Environment, placeholder: bool = False) -> dict:
    """The entry's run config on this machine (placeholder=True: paths under /placeholder, for validation)."""
    data_root = "/placeholder/data" if placeholder or not env.data_root else str(Path(env.data_root).resolve())
    cfg = registry.resolve_models(e.config, {} if placeholder else env.local_models(),
                                  {} if placeholder else env.servers)
    cfg = _fill_data_root(cfg, data_root)
    cfg = merge(cfg, {"name": _name(e), "store": env.store, "output_dir": str(Path(env.out) / "runs"),
                      "benchmark": {"name": e.benchmark, "data_root": str(Path(data_root) / e.data_folder),
                                    "split": split_of(e, env)}})
    for dotted, value in env.sets.items():
        cfg = merge(cfg, _nested(dotted, value))
    if e.wrap:
        cfg = {"method": e.wrap, "name": cfg["name"], "base": {**cfg}}
    return cfg


def validate(e: Entry, env: Environment, placeholder: bool = False):
    """The entry's config validated by its method's config class (cirflow.flows.registry.parse_config)."""
    from cirflow.flows import registry as methods

    return methods.parse_config(build_config(e, env, placeholder), f"{e.paper} table {e.table} / {e.row}")


def why_not(e: Entry, env: Environment, models: bool = True) -> str | None:
    """None when the entry can run here, else the reason (the first that applies). models=False: only the
    registry and the data (`--plan`: asking about weights in the Hugging Face cache or a GPU imports torch)."""
    from cirflow.flows import registry as methods

    if e.pending:
        return e.pending
    if e.method not in methods.METHODS:
        return f"needs training stage: method {e.method!r} is not registered yet"
    if not env.data_root:
        return "missing data: no --data-root"
    folder = Path(env.data_root) / e.data_folder
    if not folder.is_dir():
        return f"missing data: {folder}"
    for extra in _data_paths(e.config, str(Path(env.data_root).resolve())):
        if not Path(extra).exists():
            return f"missing data: {extra}"
    if not models:
        return None
    local, servers = env.local_models(), env.servers
    ids = registry.model_ids(e.config)
    for mid in ids:
        if mid not in local and mid not in servers and not _cached(registry.models()[mid]):
            spec = registry.models()[mid]
            return f"missing weights: {spec['paper']} ({mid}; put it in --models-from DIR/{mid} or serve it)"
    heavy = [m for m in ids if registry.models()[m].get("gpu") and m not in local and m not in servers]
    if heavy and not env.has_gpu():
        return f"needs GPU: {', '.join(heavy)}"
    return None


def model_deviations(e: Entry, env: Environment) -> list[str]:
    out = []
    local = env.local_models()
    for mid in registry.model_ids(e.config):
        spec = registry.models()[mid]
        if mid in local:
            out.append(f"model stand-in: {spec['paper']} -> local folder {local[mid]} (--models-from)")
        elif spec.get("stand_in_for"):
            out.append(f"model stand-in: {spec['stand_in_for']}")
    if env.split is not None and e.split is not None and env.split != e.split:
        out.append(f"split: evaluated on {e.benchmark} {env.split}, the paper reports {e.split}")
    out += [f"override: {k}={v}" for k, v in env.sets.items()]
    return out


def runnable_here(e: Entry, env: Environment, models: bool = True) -> str | None:
    """why_not, and the splits only the benchmark's server can evaluate."""
    reason = why_not(e, env, models)
    if reason is None and (e.benchmark, split_of(e, env)) in SERVER_EVALUATED:
        reason = (f"server-evaluated: {e.benchmark} {split_of(e, env)} has no public ground truth; "
                  "`cirflow run` writes the submission files (or pass --split val)")
    return reason


def row_config(e: Entry, env: Environment, check_servers: bool = True):
    """The entry's validated config after its method's preflight. Model servers go through `cirflow run`'s
    deferral (cli/run.preflight): contacted only when the plan says a stage that asks them would compute, so a
    row whose stages are all cached never needs its server; check_servers=False: none is contacted (already
    checked, or only planning)."""
    from cirflow.cli.run import preflight
    from cirflow.flows import registry as methods
    from cirflow.flows.method import deferred_servers

    cfg = validate(e, env)
    source = f"{e.paper} table {e.table} / {e.row}"
    if check_servers:
        preflight(cfg, source)
    else:
        with deferred_servers():
            methods.get(cfg.method).preflight(cfg, source)
    return cfg


def check_row_servers(entries: list[Entry], env: Environment) -> None:
    """Before anything runs: BackendUnavailable (one line, exit 4) for a runnable row that must compute with its
    model server down. Other errors are left to `compare`, which reports them as that row's status."""
    from cirflow.schemas.errors import BackendUnavailable

    seen: set[str] = set()
    for e in entries:
        if runnable_here(e, env) is not None:
            continue
        key = json.dumps(build_config(e, env), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            row_config(e, env)
        except BackendUnavailable:
            raise
        except CirflowError:
            continue


@dataclass
class RowPlan:
    """`cirflow reproduce --plan`: one distinct run of the chosen rows (the metric columns that read it), and
    its stages' plan (flows/plan.plan_config) or why it cannot be planned here."""

    entries: list[Entry]
    cfg: object = None
    plan: object = None
    why_not: str | None = None


def plan_rows(entries: list[Entry], env: Environment) -> list[RowPlan]:
    """The plan of each distinct run, in registry order: keys and computed / resumed / cached, loading no model,
    contacting no server and starting no Prefect (the weights / GPU questions of why_not import torch)."""
    from cirflow.flows.plan import plan_config

    rows: dict[str, RowPlan] = {}
    out = []
    for e in entries:
        reason = runnable_here(e, env, models=False)
        key = json.dumps(build_config(e, env), sort_keys=True) if reason is None else f"{e.paper}/{e.table}/{e.row}"
        if key in rows:
            rows[key].entries.append(e)
            continue
        rows[key] = row = RowPlan([e], why_not=reason)
        out.append(row)
        if reason is None:
            try:
                row.cfg = row_config(e, env, check_servers=False)
                row.plan = plan_config(row.cfg)
            except CirflowError as err:
                row.why_not = str(err)
    return out


def compare(entries: list[Entry], env: Environment, progress: bool = False,
            run=None, servers_checked: bool = False) -> list[Result]:
    """Run each distinct config once (in registry order) and compare every entry that reads it. A row that must
    compute with its model server down raises BackendUnavailable (servers_checked: `check_row_servers` ran)."""
    from cirflow.cli.run import run_config
    from cirflow.schemas.errors import BackendUnavailable

    run = run or run_config
    docs: dict[str, dict | str] = {}
    results = []
    for e in entries:
        devs = list(e.deviations) + model_deviations(e, env)
        reason = runnable_here(e, env)
        if reason is not None:
            results.append(Result(e, None, reason if _is_status(reason) else f"not runnable: {reason}", devs))
            continue
        key = json.dumps(build_config(e, env), sort_keys=True)
        if key not in docs:
            try:
                cfg = row_config(e, env, check_servers=not servers_checked)
            except BackendUnavailable:
                raise  # the row must compute and cannot: the command fails (exit 4), nothing has loaded
            except CirflowError as err:
                cfg, docs[key] = None, f"not runnable: {err}"
            if cfg is not None:
                try:
                    docs[key] = run(cfg, progress=progress)
                except CirflowError as err:
                    docs[key] = f"not runnable: {err}"
        doc = docs[key]
        if isinstance(doc, str):
            results.append(Result(e, None, doc, devs))
            continue
        ours = read_metric(doc, e)
        if ours is None:
            results.append(Result(e, None, f"not runnable: the run reports no {e.column}", devs))
        elif e.reported is None:
            results.append(Result(e, ours, "no paper value", devs))
        else:
            ok = abs(ours - e.reported) <= e.tolerance
            results.append(Result(e, ours, "within tolerance" if ok else "differs", devs))
    return results


def read_metric(doc: dict, e: Entry) -> float | None:
    """The entry's metric from a run summary (overall or a group's) or an ablation's variant row."""
    if e.pick is not None:
        rows = [r for r in doc.get("table", []) if str(r.get("variant", "")).startswith(e.pick)]
        values = rows[0] if rows else {}
    else:
        values = doc.get("groups", {}).get(e.group) if e.group else doc.get("metrics")
    values = values or {}
    m = _MEAN.match(e.metric)
    if m:
        a, b = values.get(m["a"].strip()), values.get(m["b"].strip())
        return None if a is None or b is None else (a + b) / 2
    v = values.get(e.metric)
    return float(v) if isinstance(v, (int, float)) else None


def _is_status(reason: str) -> bool:
    return reason.startswith(("needs ", "not runnable", "server-evaluated", "missing "))


def _name(e: Entry) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"repro-{e.paper}-t{e.table}-{e.row}".lower()).strip("-")[:80]


def _nested(dotted: str, value) -> dict:
    out: dict = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _fill_data_root(cfg, root: str):
    if isinstance(cfg, dict):
        return {k: _fill_data_root(v, root) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [_fill_data_root(v, root) for v in cfg]
    return cfg.replace("{data_root}", root) if isinstance(cfg, str) else cfg


def _data_paths(cfg, root: str) -> list[str]:
    found = []
    if isinstance(cfg, dict):
        for v in cfg.values():
            found += _data_paths(v, root)
    elif isinstance(cfg, list):
        for v in cfg:
            found += _data_paths(v, root)
    elif isinstance(cfg, str) and "{data_root}" in cfg:
        found.append(cfg.replace("{data_root}", root))
    return found


def _cached(spec: dict) -> bool:
    """Whether a model's weights are in the local Hugging Face cache (offline: nothing else can load them)."""
    cfg = spec["config"]
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    if spec["kind"] == "encoder":
        import open_clip

        pcfg = open_clip.get_pretrained_cfg(cfg["model"], cfg.get("pretrained") or "") or {}
        repo = (pcfg.get("hf_hub") or "").rstrip("/")
        names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_config.json")
    else:
        repo = cfg if isinstance(cfg, str) else cfg.get("model", "")
        names = ("config.json", "model_index.json")
    if not repo:
        return False
    return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)


def parse_sets(items: list[str]) -> dict[str, object]:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. encoder.num_workers=0")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


__all__ = ["Environment", "Result", "RowPlan", "build_config", "check_row_servers", "compare", "parse_sets",
           "plan_rows", "read_metric", "row_config", "runnable_here", "validate", "why_not"]
