"""Local paths in configs are a declared type, so `cirflow deploy` can make every one of them absolute by
walking the config model (a scheduled run does not share the working directory of the deploying shell).

    store: LocalPath = ".cirflow/store"        # a folder or file; an fsspec URL ("s3://...") is left alone
    prompt: TemplatePath | None = None         # a template file, or a built-in name such as "detailed"
    model: ModelPath                           # a hub id ("org/name") or a path written as one ("./m", "/m")

`resolve_paths(cfg, base_dir)` returns a copy of a validated config with every such field absolute, in nested
sections, lists and comparison `base:` configs alike.
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import BaseModel

LOCAL_DIR = "local-dir:"  # open_clip's local-folder model prefix
_PATHLIKE_PREFIXES = ("/", "./", "../", "~")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _always(value: str) -> bool:
    return True


def looks_like_path(value: str) -> bool:
    """A value written as a file-system path rather than a hub id ('org/name') or a registry tag."""
    return value.startswith(_PATHLIKE_PREFIXES) or value.endswith(_WEIGHT_SUFFIXES)


def _template_file(value: str) -> bool:
    # built-in prompt names ("detailed") have neither a folder nor a suffix
    return "/" in value or os.sep in value or bool(Path(value).suffix)


@dataclass(frozen=True)
class PathField:
    """Marks a str field as a local path; `when` says which values are paths, `prefix` is kept in front."""

    when: Callable[[str], bool] = _always
    prefix: str = ""

    def resolve(self, value: str, base_dir: str | os.PathLike) -> str:
        if not value.startswith(self.prefix):
            return value
        path = value[len(self.prefix):]
        if not path or "://" in path or not self.when(path):
            return value
        path = os.path.expanduser(path)
        if os.path.isabs(path):
            return self.prefix + path
        return self.prefix + str((Path(base_dir) / path).resolve())


LocalPath = Annotated[str, PathField()]
TemplatePath = Annotated[str, PathField(when=_template_file)]
ModelPath = Annotated[str, PathField(when=looks_like_path)]
LocalDirModel = Annotated[str, PathField(prefix=LOCAL_DIR)]  # "local-dir:<folder>" or a registry name


def _markers(annotation: Any) -> list[PathField]:
    """Every PathField inside an annotation (through Optional, list[...], dict[..., ...])."""
    found = [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, PathField)]
    for arg in typing.get_args(annotation):
        found += _markers(arg)
    return found


def _resolve_value(value: Any, markers: list[PathField], base_dir) -> Any:
    if isinstance(value, BaseModel):
        return resolve_paths(value, base_dir)
    if isinstance(value, str):
        for m in markers:
            value = m.resolve(value, base_dir)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve_value(v, markers, base_dir) for v in value)
    if isinstance(value, dict):
        return {k: _resolve_value(v, markers, base_dir) for k, v in value.items()}
    return value


def resolve_paths(cfg: BaseModel, base_dir: str | os.PathLike) -> BaseModel:
    """A copy of `cfg` with every LocalPath / TemplatePath / ModelPath / LocalDirModel field made absolute
    against `base_dir` (URLs, absolute paths and non-path values unchanged)."""
    update = {}
    for name, info in type(cfg).model_fields.items():
        markers = [m for m in info.metadata if isinstance(m, PathField)] + _markers(info.annotation)
        value = getattr(cfg, name)
        new = _resolve_value(value, markers, base_dir)
        if new is not value:
            update[name] = new
    return cfg.model_copy(update=update)


def path_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of the path fields a config model declares (nested sections included), for docs and tests."""
    out = []
    for name, info in model.model_fields.items():
        if [m for m in info.metadata if isinstance(m, PathField)] + _markers(info.annotation):
            out.append(prefix + name)
        for arg in [info.annotation, *typing.get_args(info.annotation)]:
            for sub in [arg, *typing.get_args(arg)]:
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    out += path_fields(sub, f"{prefix}{name}.")
    return list(dict.fromkeys(out))


__all__ = ["LOCAL_DIR", "LocalDirModel", "LocalPath", "ModelPath", "PathField", "TemplatePath", "looks_like_path",
           "path_fields", "resolve_paths"]
