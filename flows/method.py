"""What a method is: its config class, its flow, its preflight and its report, in one object the registry
(cirflow.flows.registry) names. The CLI (`run`, `compare`, `sweep`, `deploy`, `build`, ...) and deployments
only ever go through it, so adding a method touches its own module and one registry line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel


def print_json(doc: dict, as_json: bool) -> None:
    print(json.dumps(doc, indent=2, default=str))


def check_servers(cfg: Any) -> None:
    """A configured model server answers GET /models, with the key (no-op for local backends)."""
    from cirflow.models.mllm.http import check_reachable

    for server in (getattr(cfg, "mllm", None), getattr(cfg, "llm", None)):
        if server is not None and server.backend == "http" and server.base_url:
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


__all__ = ["Method", "basic_preflight", "check_servers", "print_json"]
