"""What comparison grids and sweeps vary (fused rows, a swept parameter) over a base run config; the configs
themselves are the compare / sweep methods' (cirflow.flows.compare)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from cirflow.schemas.base import Strict
from cirflow.schemas.config import Mode
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.names import Name
from cirflow.schemas.paths import LOCAL_DIR, PathField, looks_like_path


def variant_path(value: str) -> bool:
    """A variant value that is a local path (deploy makes it absolute): written as one ("/", "./", "~", a weights
    file), or a relative folder of two or more levels — a hub id ("org/name") has one slash, refs a colon."""
    return looks_like_path(value) or (value.count("/") >= 2 and ":" not in value)


# a dotted override's value (`model.llm: /models/e5-mistral`): paths in it are resolved like the base's
VariantValue = Annotated[Any, PathField(when=variant_path), PathField(prefix=LOCAL_DIR)]


class FusionSpec(Strict):
    """A similarity-level combination of modes (PEFUSE's fused rows): S = rule({mode: weight})."""

    name: Name
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


class VariantSpec(Strict):
    """One row of a comparison: the base run config with dotted fields replaced (e.g. MVFT-JI's table 4:
    `{name: "w/o L_c", set: {train.loss.use_Lc: false}}`). Whatever the overrides leave unchanged keeps its
    stage keys, so a variant that changes only evaluation reuses the stored model."""

    name: str = Field(min_length=1)  # a table row label, never a path
    set: dict[str, VariantValue] = Field(default_factory=dict)

    def apply(self, base: BaseModel) -> BaseModel:
        return with_overrides(base, self.set, f"variant {self.name!r}")


def with_overrides(cfg: BaseModel, overrides: dict[str, Any], what: str = "override") -> BaseModel:
    """A copy of a run config with several dotted fields replaced, validated as a config file of its method
    through the method registry (one ConfigError line on a bad path or value)."""
    from cirflow.flows.registry import parse_config

    data = cfg.model_dump(mode="json")
    for path, value in overrides.items():
        node = data
        parts = path.split(".")
        for p in parts[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(p), dict):
                raise ConfigError(f"{what}: '{path}': no section '{p}' in the base config")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"{what}: '{path}': no field '{parts[-1]}' in the base config")
        node[parts[-1]] = value
    return parse_config(data, what)


def with_override(cfg: BaseModel, path: str, value: Any) -> BaseModel:
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
        return type(cfg).model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"sweep parameter '{path}' = {value!r}: {e.errors()[0]['msg']}") from None
