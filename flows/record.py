"""The run record: `config.resolved.yaml` in every run folder, beside summary.json.

It is the config exactly as the run used it (defaults filled in, paths made absolute where the config did) plus
`model_revisions`: the key fields of every model config in it (encoder weights' sha256, an MLLM's revision,
a diffusion snapshot), so a run folder says which weights produced its numbers even after a hub branch moved.
Configs never hold secrets (API keys are env var names; storage_options refuse credentials), so the file is
safe to share.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

RESOLVED_CONFIG = "config.resolved.yaml"


def model_revisions(cfg: BaseModel, prefix: str = "") -> dict[str, dict]:
    """dotted field path -> key_fields() of every nested config that identifies a model."""
    out: dict[str, dict] = {}
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
        for i, v in items:
            path = f"{prefix}{name}" + (f".{i}" if i is not None else "")
            if hasattr(v, "key_fields") and callable(v.key_fields):
                out[path] = v.key_fields()
            elif isinstance(v, BaseModel):
                out |= model_revisions(v, path + ".")
    return out


def resolved_config(cfg: BaseModel) -> dict:
    doc = cfg.model_dump(mode="json")
    doc["model_revisions"] = model_revisions(cfg)
    return doc


def write_resolved_config(out_dir: str | Path, cfg: BaseModel) -> Path:
    path = Path(out_dir) / RESOLVED_CONFIG
    path.write_text(yaml.safe_dump(resolved_config(cfg), sort_keys=False, allow_unicode=True, width=120))
    return path
