"""Every method cirflow runs, one line each: its name -> "module:attribute" of its Method (flows/method.py).

Modules are imported on lookup only, so `cirflow --help` never imports Prefect or torch. A config file names
its method (`method: ldre`); a file without one is a DEFAULT run.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from cirflow.schemas.errors import ConfigError
from cirflow.schemas.loading import read_yaml, validate, with_base

DEFAULT = "pefuse"

METHODS: dict[str, str] = {
    "pefuse": "cirflow.flows.pefuse:PEFUSE",
    "pefuse_t2i": "cirflow.flows.pefuse:PEFUSE_T2I",
    "cirevl": "cirflow.flows.cirevl:CIREVL",
    "ldre": "cirflow.flows.ldre:LDRE",
    "ip_cir": "cirflow.flows.ip_cir:IP_CIR",
    "ip_cir_ablation": "cirflow.flows.ip_cir:ABLATION",
    "compare": "cirflow.flows.compare:COMPARE",
    "sweep": "cirflow.flows.compare:SWEEP",
    "refine": "cirflow.flows.refine:REFINE",
    "build_mtcir": "cirflow.flows.builds:MTCIR",
    "build_instructcir": "cirflow.flows.builds:INSTRUCTCIR",
    "build_mvft": "cirflow.flows.builds:MVFT",
    "mvft_ji": "cirflow.flows.mvft_ji:MVFT_JI",
    "collm": "cirflow.flows.collm:COLLM",
    "instructcir": "cirflow.flows.instructcir:INSTRUCTCIR",
}

# Methods that also have a subcommand of their own (`cirflow sweep X.yaml`, which needs no `method:` line),
# with its help text. `cirflow build KIND` runs the method `build_KIND`.
COMMANDS: dict[str, str] = {
    "compare": "a grid of modes x encoders x fusions, from stored stages",
    "sweep": "one hyper-parameter over values x seeds, with a mean ± std plot",
    "ip_cir_ablation": "IP-CIR ablations (table 3, figures 5, 7, 8) from stored stages",
}
BUILD_PREFIX = "build_"


def get(name: str):
    """The Method registered as `name` (its module imported now)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    module, attr = METHODS[name].split(":")
    return getattr(import_module(module), attr)


def method_of(raw: dict, method: str | None = None, source: str = "<config>") -> str:
    """The method a config mapping runs: `method` when a command names it (the file may omit it or agree)."""
    named = raw.get("method")
    if method is not None and named is not None and named != method:
        raise ConfigError(f"{source}: the config's method is {named!r}, not {method!r}; run it with `cirflow run`")
    name = method or named or DEFAULT
    if name not in METHODS:
        raise ConfigError(f"{source}: method {name!r} has no flow (registered: {', '.join(sorted(METHODS))})")
    return name


def parse_config(raw: dict, source: str = "<config>", method: str | None = None):
    """A config mapping validated strictly by its method's config class (an unknown key is an error)."""
    name = method_of(raw, method, source)
    return validate(get(name).config, {**raw, "method": name}, source)


def load_config(path: str | Path, method: str | None = None, overrides: dict | None = None):
    """A YAML config file validated by its method's config class; `base:` may name a file relative to it."""
    raw = with_base(read_yaml(path), path) | dict(overrides or {})
    return parse_config(raw, str(path), method)


def build_kinds() -> list[str]:
    return [m.removeprefix(BUILD_PREFIX) for m in METHODS if m.startswith(BUILD_PREFIX)]


__all__ = ["BUILD_PREFIX", "COMMANDS", "DEFAULT", "METHODS", "build_kinds", "get", "load_config", "method_of",
           "parse_config"]
