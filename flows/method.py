"""What a method is: its config class, its flow, its preflight and its report, in one object the registry
(cirflow.flows.registry) names. The CLI (`run`, `compare`, `sweep`, `deploy`, `build`, ...) and deployments
only ever go through it, so adding a method touches its own module and one registry line."""

from __future__ import annotations

import json
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel


def print_json(doc: dict, as_json: bool) -> None:
    print(json.dumps(doc, indent=2, default=str))


# Inside `deferred_servers()` (the CLI's run/compare/sweep/build, cli/run.preflight for reproduce rows and
# deployments), preflight collects the configured servers here instead of contacting them: only the servers of
# MLLM stages the plan says would compute are checked, so a fully cached rerun never needs one
# (`check_servers_if_needed`).
_DEFERRED: ContextVar[list | None] = ContextVar("cirflow_deferred_servers", default=None)


def check_servers(cfg: Any) -> None:
    """A configured model server answers GET /models, with the key (no-op for local backends)."""
    from cirflow.models.mllm.http import check_reachable

    for server in (getattr(cfg, "mllm", None), getattr(cfg, "llm", None)):
        if server is not None and server.backend == "http" and server.base_url:
            deferred = _DEFERRED.get()
            if deferred is None:
                check_reachable(server)
            elif server not in deferred:
                deferred.append(server)


@contextmanager
def deferred_servers():
    """Preflight inside this block collects the model servers it would check into the yielded list."""
    servers: list = []
    token = _DEFERRED.set(servers)
    try:
        yield servers
    finally:
        _DEFERRED.reset(token)


def _asks(step, retry_failed: bool) -> bool:
    """Whether a planned step sends requests: an MLLM stage computed or resumed, or under `--retry-failed` a
    stored one with failed rows (unknown failures count: only a real plan reads them from the manifest)."""
    if not step.asks_server:
        return False
    if step.status != "cached":
        return True
    return retry_failed and step.failed != 0


def servers_to_check(servers: list, plan, retry_failed: bool = False) -> list:
    """The configured `servers` a run with this plan (flows/plan.plan_config; None = unknown) may ask: those of
    the MLLM stages that would compute (`_asks`), matched by base URL to the model configs in the stage's Params
    (the config its model slot loads, tasks/plan_mode.Step.models). Every server when the plan is unknown or
    stopped early (what follows is unknown) or a stage that asks names no model config."""
    if plan is None or plan.blocked is not None:
        return list(servers)
    urls: set = set()
    for step in plan.steps:
        if _asks(step, retry_failed):
            if step.models is None:
                return list(servers)
            urls |= {m.base_url for m in step.models if getattr(m, "backend", None) == "http"}
    return [s for s in servers if s.base_url in urls]


def servers_needed(plan, retry_failed: bool = False) -> bool:
    """Whether a run with this plan (None = unknown) may send a request to any model server: an MLLM stage would
    be computed or resumed, the plan stopped early, or `--retry-failed` may re-ask a stored MLLM stage's
    failed rows."""
    if plan is None or plan.blocked is not None:
        return True
    return any(_asks(s, retry_failed) for s in plan.steps)


def check_servers_if_needed(servers: list, plan, retry_failed: bool = False) -> None:
    """The deferred preflight of `servers` (from `deferred_servers()`): one-line BackendUnavailable before Prefect
    starts or a model loads, for each server the run will ask (`servers_to_check`); nothing else is contacted."""
    from cirflow.models.mllm.http import check_reachable

    for server in servers_to_check(servers, plan, retry_failed) if servers else ():
        check_reachable(server)


def basic_preflight(cfg: Any, source: str) -> None:
    """What every method checks: its local paths and model folders, then its model servers."""
    from cirflow.schemas.checks import check_paths

    check_paths(cfg, source)
    check_servers(cfg)


@dataclass(frozen=True)
class Method:
    name: str
    config: type[BaseModel]  # strict pydantic model of the whole YAML file, `method` narrowed to `name`
    flow: Callable[..., dict]  # a Prefect flow: flow(config: dict, progress: bool) -> summary dict
    # user-fixable input errors (paths, prompt files, annotations, metric names) raised as one ConfigError line,
    # before Prefect starts or any model loads
    preflight: Callable[[Any, str], None] = basic_preflight
    report: Callable[[dict, bool], None] = print_json  # prints the flow's summary (as_json: the whole doc)
    # a method whose text query another method can build on (IP-CIR's baselines):
    # text_query(store, cfg, bench, pool, progress) -> cirflow.flows.baselines.BaselineQuery
    text_query: Callable[..., Any] | None = None
    # a method `cirflow compare` takes as a `base:` and varies by `variants` (collm, instructcir):
    # compare_groups(store, cfg, pool, progress) -> [(group label, artifacts with evaluate last)], one variant's row
    compare_groups: Callable[..., list] | None = None


__all__ = ["Method", "basic_preflight", "check_servers", "check_servers_if_needed", "deferred_servers", "print_json",
           "servers_needed", "servers_to_check"]
