"""Turning a TrainSpec's `package.module:attr` references into the objects `fit` takes (no pickle crosses a
process boundary: workers import the same code and rebuild everything from JSON)."""

from __future__ import annotations

import functools
import importlib
from typing import Any

import torch

from cirflow.schemas.errors import ConfigError
from cirflow.schemas.training import Ref, TrainSpec


def import_ref(target: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"cannot import {module!r} for {target!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{module!r} has no attribute {attr!r} (from {target!r})")
        obj = getattr(obj, part)
    return obj


def build_model(ref: Ref, seed: int) -> torch.nn.Module:
    # the factory runs after seeding, so random inits (new heads, query tokens) are the same in every process
    torch.manual_seed(seed)
    model = import_ref(ref.target)(**ref.kwargs)
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{ref.target} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def bind(ref: Ref | None):
    """A function ref with its kwargs bound (loss, collate); None stays None."""
    if ref is None:
        return None
    fn = import_ref(ref.target)
    return functools.partial(fn, **ref.kwargs) if ref.kwargs else fn


def build(spec: TrainSpec) -> dict[str, Any]:
    """The keyword arguments of `fit` for a spec."""
    return {"model": build_model(spec.model, spec.train.seed), "dataset": import_ref(spec.dataset.target)(
        **spec.dataset.kwargs), "loss_fn": bind(spec.loss), "collate": bind(spec.collate)}
