"""Reading config files: YAML → a strict pydantic model, every failure one line naming the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from cirflow.schemas.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def with_base(raw: dict, path: str | Path) -> dict:
    """Comparison configs may name their base run config by file, relative to themselves."""
    if isinstance(raw.get("base"), str):
        raw = dict(raw, base=read_yaml(Path(path).parent / raw["base"]))
    return raw


def validate(model: type[M], raw: dict, source: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{source}: field '{where}': {err['msg']}{more}") from None


def load(model: type[M], path: str | Path) -> M:
    return validate(model, with_base(read_yaml(path), path), str(path))
