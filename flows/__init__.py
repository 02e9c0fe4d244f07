"""Prefect flows, one per method or build. A flow only wires stages: no model code, no metric code.

FLOWS maps a config's `method` to its flow; imports are deferred so that `cirflow --help` and config
validation never pay for Prefect, torch or diffusers.
"""

from __future__ import annotations

from importlib import import_module

# method -> (module, flow function)
_REGISTRY = {
    "pefuse": ("cirflow.flows.pefuse", "pefuse"),
    "pefuse_t2i": ("cirflow.flows.pefuse", "pefuse"),
    "cirevl": ("cirflow.flows.baselines", "cirevl"),
    "ldre": ("cirflow.flows.baselines", "ldre"),
    "ip_cir": ("cirflow.flows.ip_cir", "ip_cir"),
    "ip_cir_ablation": ("cirflow.flows.ip_cir", "ip_cir_ablation"),
    "compare": ("cirflow.flows.compare", "compare"),
    "sweep": ("cirflow.flows.compare", "sweep"),
    "refine": ("cirflow.flows.refine", "refine"),
    "build_mtcir": ("cirflow.flows.builds", "build_mtcir"),
    "build_instructcir": ("cirflow.flows.builds", "build_instructcir"),
    "build_mvft": ("cirflow.flows.builds", "build_mvft"),
}


def get_flow(method: str):
    """The Prefect flow object of a method (for deployments and direct calls)."""
    module, name = _REGISTRY[method]
    return getattr(import_module(module), name)


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
        raise KeyError(f"unknown method {method!r}; known: {', '.join(_REGISTRY)}")


FLOWS = _Flows({m: (lambda config, progress=True, _m=m: with_executor(get_flow(_m), config)(config, progress=progress))
                for m in _REGISTRY})
