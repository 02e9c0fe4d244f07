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
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a BOM is allowed, as YAML allows it
    try:
        # decoded here, not by the locale: a non-UTF-8 file is named with the offending byte's offset
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        raise ConfigError(f"{path}: not UTF-8 text: byte 0x{data[at]:02x} at offset {at}") from None
    try:
        raw = yaml.safe_load(text)
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
        where = ".".join(str(p) for p in field_path(raw, err["loc"])) or "<root>"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{source}: field '{where}': {err['msg']}{more}") from None


def field_path(raw, loc) -> list:
    """The error location as the user wrote it: pydantic puts the tag of a discriminated union (a compare base's
    `method`) into the location, where the file has no such key — drop those steps."""
    out, node, loc = [], raw, list(loc)
    for i, step in enumerate(loc):
        following = loc[i + 1] if i + 1 < len(loc) else None
        if (isinstance(node, dict) and isinstance(step, str) and step not in node
                and (step == node.get("method") or (following is not None and following in node))):
            continue  # a union tag (the value of `method` here, or its default), not a key of the file
        out.append(step)
        node = node.get(step) if isinstance(node, dict) else (
            node[step] if isinstance(node, list) and isinstance(step, int) and step < len(node) else None)
    return out


def load(model: type[M], path: str | Path) -> M:
    return validate(model, with_base(read_yaml(path), path), str(path))
