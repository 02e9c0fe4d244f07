"""Scheduled deployments of any cirflow flow (everything in `cirflow.flows.FLOWS`), from a run config.

One Prefect flow, `run_deployment` (flow name "cirflow"), is the deployment entry point for every method: it
takes the config as its only parameter and runs `FLOWS[config["method"]]` (which shows up as a subflow). So
a deployment needs nothing but an importable `cirflow` where it runs (entry point
`cirflow.flows.deploy.run_deployment`, a module path: no source upload, no image build), and a new flow is
deployable as soon as it is in FLOWS.

Two ways to run the scheduled runs:
- serve: `run_deployment.serve(...)` in a long-running process (`cirflow deploy CONFIG --name N --serve`);
  runs execute as subprocesses of that process. No work pool, no worker.
- work pool: `run_deployment.deploy(...)` to a process work pool (created if missing); a worker started
  with `prefect worker start --pool P` on the GPU machine picks the runs up and executes each in a
  subprocess. Several deployments share the pool; see docker/README.md.

Both need a Prefect server (PREFECT_API_URL): an ephemeral server lives only as long as one process, so
its schedules would never fire.
"""

from __future__ import annotations

import os
from typing import Any

from cirflow.schemas.errors import CirflowError, ConfigError
from cirflow.flows import registry
from cirflow.schemas.loading import read_yaml, with_base
from cirflow.schemas.paths import resolve_paths
from prefect import flow

DEFAULT_METHOD = registry.DEFAULT  # the method of a config that names none
ENTRYPOINT = "cirflow.flows.deploy.run_deployment"


@flow(name="cirflow", log_prints=True)
def run_deployment(config: dict, progress: bool = False) -> dict:
    """Run the flow the config's `method` names (FLOWS[method]) with that config."""
    from cirflow.flows import FLOWS

    from cirflow.cli.run import preflight

    method = config.get("method") or DEFAULT_METHOD
    if method not in FLOWS:
        raise CirflowError(f"unknown method {method!r}: registered flows are {', '.join(sorted(FLOWS))}")
    # each scheduled run checks its inputs and, only when a stage would ask them, its model servers: one-line
    # BackendUnavailable before the method's flow loads a model; a fully cached run never contacts a server
    preflight(registry.parse_config({**config, "method": method}, "deployment config"), "deployment config")
    return FLOWS[method](config, progress=progress)


# ------------------------------------------------------------------------------------------------ config


def load_deploy_config(path: str | os.PathLike | dict, base_dir: str | os.PathLike | None = None) -> dict:
    """The deployment's `config` parameter: the YAML (or a dict) validated by its method's config class
    (unknown keys are errors), every local path field (LocalPath, TemplatePath, ... in cirflow.schemas.paths)
    made absolute against `base_dir` (default the current directory), because a worker or a served run does
    not share the working directory of the `cirflow deploy` call; as JSON-ready data."""
    if isinstance(path, dict):
        raw, source = dict(path), "<config>"
    else:
        raw, source = with_base(read_yaml(path), path), str(path)
    cfg = registry.parse_config(raw, source)
    return resolve_paths(cfg, base_dir or os.getcwd()).model_dump(mode="json")


# ----------------------------------------------------------------------------------------------- deploy


def _require_api() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise CirflowError("deployments need a Prefect server: start one (`prefect server start`) and set "
                           "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api); an ephemeral server never runs "
                           "schedules")
    return url


def schedule_kwargs(cron: str | None = None, interval: float | None = None, timezone: str | None = None) -> dict:
    if cron and interval:
        raise ConfigError("give either --cron or --interval, not both")
    if cron:
        from prefect.schedules import Cron

        try:
            return {"schedules": [Cron(cron, timezone=timezone)]}
        except ValueError as e:
            raise ConfigError(f"invalid cron expression {cron!r}: {e}") from None
    if interval:
        if interval <= 0:
            raise ConfigError("--interval must be positive seconds")
        from prefect.schedules import Interval

        return {"schedules": [Interval(float(interval), timezone=timezone)]}
    return {}


def ensure_work_pool(name: str, pool_type: str = "process") -> bool:
    """Create the work pool if missing. Returns True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))
        except ObjectAlreadyExists:
            return False
        return True


def deploy(config: str | os.PathLike | dict, name: str, *, cron: str | None = None, interval: float | None = None,
           timezone: str | None = None, work_pool: str | None = None, serve: bool = False,
           tags: list[str] | None = None, job_variables: dict | None = None, paused: bool = False) -> dict[str, Any]:
    """Register `config` as deployment `cirflow/<name>` with an optional schedule.

    serve=True blocks, serving the deployment from this process until interrupted (Ctrl-C pauses its
    schedule). Otherwise the deployment goes to the process work pool `work_pool` (created if missing) and
    this returns {"deployment_id", "name", "work_pool", "schedule", "worker_command"} at once."""
    _require_api()
    cfg = load_deploy_config(config)
    sched = schedule_kwargs(cron, interval, timezone)
    tags = ["cirflow", cfg["method"], *(tags or [])]
    params = {"config": cfg, "progress": False}
    description = f"cirflow {cfg['method']}: {cfg.get('name', '')}"
    if serve:
        if work_pool:
            raise ConfigError("--serve runs the deployment in this process; it takes no --work-pool")
        run_deployment.serve(name=name, parameters=params, tags=tags, description=description, paused=paused,
                             print_starting_message=True, **sched)
        return {"name": f"cirflow/{name}", "served": True}
    if not work_pool:
        raise ConfigError("give --work-pool P (runs go to `prefect worker start --pool P`) or --serve")
    from prefect.deployments.runner import EntrypointType

    created = ensure_work_pool(work_pool)
    dep_id = run_deployment.deploy(
        name=name, work_pool_name=work_pool, build=False, push=False, parameters=params, tags=tags,
        description=description, paused=paused, job_variables=job_variables or {},
        entrypoint_type=EntrypointType.MODULE_PATH, print_next_steps=False, ignore_warnings=True, **sched)
    return {"deployment_id": str(dep_id), "name": f"cirflow/{name}", "work_pool": work_pool,
            "work_pool_created": created, "method": cfg["method"],
            "schedule": cron or (f"every {interval} s" if interval else None), "entrypoint": ENTRYPOINT,
            "worker_command": f"prefect worker start --pool {work_pool} --type process"}


__all__ = ["ENTRYPOINT", "deploy", "ensure_work_pool", "load_deploy_config", "run_deployment",
           "schedule_kwargs"]
