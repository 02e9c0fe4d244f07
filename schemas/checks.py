"""Preflight checks of the paths and model folders a validated config names, before Prefect starts or any model
loads: a store or output_dir that is a file (found today only after every stage computed), a missing
`local-dir:` encoder or transformers MLLM folder (otherwise a 250-line Hugging Face "Repo id" error).

    check_paths(cfg)        # raises ConfigError listing every problem at once
    path_problems(cfg)      # the same problems as a list of lines (empty = fine)

Works on any config with some of: store, output_dir, encoder, encoders, mllm, llm, diffusion, base (a nested run
config, as in comparisons). Remote (fsspec URL) paths are not checked here: reaching them is the store's job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cirflow.schemas.errors import ConfigError

LOCAL_DIR = "local-dir:"  # the encoder's local folder prefix (cirflow.schemas.encoder.LOCAL_DIR)
_PATHLIKE_PREFIXES = ("/", "./", "../", "~")


def check_paths(cfg: Any, source: str = "config") -> None:
    problems = path_problems(cfg)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise ConfigError(f"{source}: {problems[0]}{more}")


def path_problems(cfg: Any) -> list[str]:
    out: list[str] = []
    base = getattr(cfg, "base", None)
    if base is not None and not isinstance(base, (str, dict)):
        out += path_problems(base)
    for field in ("store", "output_dir"):
        value = getattr(cfg, field, None)
        if isinstance(value, str):
            out += folder_problems(field, value)
    encoders = [getattr(cfg, "encoder", None), *(getattr(cfg, "encoders", None) or [])]
    for i, enc in enumerate(e for e in encoders if e is not None):
        out += encoder_problems(enc, "encoder" if i == 0 else f"encoders[{i - 1}]")
    for field in ("mllm", "llm"):
        m = getattr(cfg, field, None)
        if m is not None:
            out += mllm_problems(m, field)
    diffusion = getattr(cfg, "diffusion", None)
    if diffusion is not None and looks_like_path(diffusion.model) and not _expand(diffusion.model).is_dir():
        out.append(f"diffusion.model: folder {diffusion.model} not found")
    return list(dict.fromkeys(out))  # a comparison's base repeats the same encoder


def folder_problems(field: str, value: str) -> list[str]:
    """A local folder cirflow will create or write into: it must be a folder, or creatable (no file on the way)."""
    if "://" in value and not value.startswith("file://"):
        return []
    path = _expand(value.removeprefix("file://"))
    if path.exists() and not path.is_dir():
        return [f"{field}: {value} is a file, not a folder"]
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return [f"{field}: {value} cannot be created: {parent} is a file"]
            break
    return []


def encoder_problems(enc: Any, field: str = "encoder") -> list[str]:
    if hasattr(enc, "base"):  # MVFT-JI's Q-Former VLM (schemas/mvft.py): a model folder, no open_clip fields
        return [] if _expand(enc.base).is_dir() else [f"{field}.base: folder {enc.base} not found"]
    out = []
    if enc.model.startswith(LOCAL_DIR):
        folder = _expand(enc.model[len(LOCAL_DIR):])
        if not folder.is_dir():
            out.append(f"{field}.model: local-dir folder {folder} not found")
        elif not (folder / "open_clip_config.json").is_file():
            out.append(f"{field}.model: {folder} has no open_clip_config.json (open_clip's local-dir layout)")
    if enc.pretrained and looks_like_path(enc.pretrained) and not _expand(enc.pretrained).is_file():
        out.append(f"{field}.pretrained: checkpoint file {enc.pretrained} not found")
    if enc.tokenizer and not _expand(enc.tokenizer).is_dir():
        out.append(f"{field}.tokenizer: folder {enc.tokenizer} not found")
    return out


def mllm_problems(m: Any, field: str = "mllm") -> list[str]:
    if m.backend not in ("transformers", "blip2"):  # in-process backends load a folder or a cached hub id
        return []
    if looks_like_path(m.model) or _expand(m.model).exists():
        folder = _expand(m.model)
        if not folder.is_dir():
            return [f"{field}.model: folder {m.model} not found"]
        if not (folder / "config.json").is_file():
            return [f"{field}.model: {m.model} has no config.json (not a save_pretrained folder)"]
        return []
    if _offline() and not _in_hf_cache(m.model, m.revision):
        return [f"{field}.model: {m.model!r} is neither a local folder nor in the Hugging Face cache, and "
                "HF_HUB_OFFLINE is set"]
    return []


def looks_like_path(value: str) -> bool:
    """A value written as a file-system path rather than a hub id ('org/name') or a registry tag."""
    return value.startswith(_PATHLIKE_PREFIXES) or value.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt"))


def _expand(value: str) -> Path:
    return Path(os.path.expanduser(value))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _in_hf_cache(repo_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return True  # cannot tell; the loader reports it
    try:
        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an id the hub library rejects is reported as not cached
        return False
    return isinstance(hit, str)


__all__ = ["check_paths", "encoder_problems", "folder_problems", "looks_like_path", "mllm_problems", "path_problems"]
