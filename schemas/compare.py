"""Configs of comparison grids and hyper-parameter sweeps: a base run config plus what varies."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from cirflow.schemas.config import Mode, RunConfig, Strict
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.loading import load


class FusionSpec(Strict):
    """A similarity-level combination of modes (PEFUSE's fused rows): S = rule({mode: weight})."""

    name: str
    terms: dict[Mode, float]
    rule: Literal["weighted_sum", "product"] = "weighted_sum"
    normalize: Literal["none", "zscore"] = "none"


class SweepSpec(Strict):
    """One parameter varied over values, each value run with several seeds (PEFUSE figures 2–3)."""

    param: str  # dotted path into the run config, e.g. compose.sampling.temperature, diffusion.guidance_scale
    values: list[Any]
    seeds: list[int] = Field(default_factory=lambda: [0])
    # which seed the seeds replace: the sampler seed of the stage the parameter belongs to
    seed_param: str | None = None
    metrics: list[str] = Field(default_factory=list)  # plotted metrics; default: every metric of the benchmark

    def seed_path(self) -> str:
        if self.seed_param:
            return self.seed_param
        head = self.param.split(".")[0]
        return {"compose": "compose.sampling.seed", "caption": "caption.sampling.seed",
                "diffusion": "diffusion.seed"}.get(head, "compose.sampling.seed")


class CompareConfig(Strict):
    method: Literal["compare", "sweep"] = "compare"  # lets `cirflow deploy` pick the flow
    name: str = "compare"
    base: RunConfig
    modes: list[Mode] = Field(default_factory=lambda: ["t2i"])
    encoders: list[EncoderConfig] = Field(default_factory=list)  # default: the base config's encoder
    fusions: list[FusionSpec] = Field(default_factory=list)
    sweep: SweepSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> "CompareConfig":
        for f in self.fusions:
            missing = set(f.terms) - set(self.modes)
            if missing:
                raise ValueError(f"fusion {f.name!r} uses modes {sorted(missing)} that are not in modes")
        if {"i2i", "i2t"} & set(self.modes) and self.base.diffusion is None:
            raise ValueError("modes i2i/i2t generate query images: add a diffusion section to base")
        return self


def with_override(cfg: RunConfig, path: str, value: Any) -> RunConfig:
    """A copy of cfg with one dotted field replaced, validated like a config file."""
    data = cfg.model_dump(mode="json")
    node = data
    parts = path.split(".")
    for p in parts[:-1]:
        if not isinstance(node, dict) or p not in node or node[p] is None:
            raise ConfigError(f"sweep parameter '{path}': no section '{p}' in the run config")
        node = node[p]
    if parts[-1] not in node:
        raise ConfigError(f"sweep parameter '{path}': no field '{parts[-1]}'")
    node[parts[-1]] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"sweep parameter '{path}' = {value!r}: {e.errors()[0]['msg']}") from None


def load_compare_config(path: str | Path) -> CompareConfig:
    return load(CompareConfig, path)
