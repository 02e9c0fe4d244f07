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


class _Flows(dict):
    """FLOWS[method](config, progress=...) runs the flow."""

    def __missing__(self, method):
        raise KeyError(f"unknown method {method!r}; known: {', '.join(_REGISTRY)}")


FLOWS = _Flows({m: (lambda config, progress=True, _m=m: get_flow(_m)(config, progress=progress)) for m in _REGISTRY})
