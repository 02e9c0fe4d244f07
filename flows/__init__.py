"""Prefect flows, one per method or build. A flow only wires stages: no model code, no metric code.

Methods are registered in `cirflow.flows.registry` (one line each); FLOWS[method](config, progress=...) runs a
method's flow on the task runner its config asks for. Imports are deferred so that `cirflow --help` never pays
for Prefect, torch or diffusers.
"""

from __future__ import annotations

from cirflow.flows import registry


def get_flow(method: str):
    """The Prefect flow object of a method (for deployments and direct calls)."""
    return registry.get(method).flow


def with_executor(flow_obj, config: dict):
    """The flow on the task runner its config asks for (comparison configs carry it in `base`)."""
    ex = (config.get("base") if isinstance(config.get("base"), dict) else config).get("executor") or {}
    if ex.get("kind") != "ray":
        return flow_obj
    from prefect_ray import RayTaskRunner

    return flow_obj.with_options(task_runner=RayTaskRunner(address=ex.get("address"),
                                                           init_kwargs=ex.get("init_kwargs") or {}))


class _Flows(dict):
    """FLOWS[method](config, progress=...) runs the flow."""

    def __missing__(self, method):
        raise KeyError(f"unknown method {method!r}; known: {', '.join(registry.METHODS)}")


FLOWS = _Flows({m: (lambda config, progress=True, _m=m: with_executor(get_flow(_m), config)(config, progress=progress))
                for m in registry.METHODS})
