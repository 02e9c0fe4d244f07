"""Prefect flows, one per method or build. A flow only wires stages: no model code, no metric code."""

from __future__ import annotations


def _pefuse_t2i(config: dict, progress: bool = True) -> dict:
    from cirflow.flows.pefuse_t2i import pefuse_t2i

    return pefuse_t2i(config, progress=progress)


FLOWS = {"pefuse_t2i": _pefuse_t2i}
