"""Prompt templates as data files, selectable per benchmark and overridable by a config path.

A template is plain text with `{modification}` (and, where the benchmark has one, `{shared_concept}`)
placeholders; the reference image is attached before the text. The template's full text goes into the stage
key, so editing a prompt recomputes exactly the stages that read it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cirflow.schemas.errors import ConfigError


def load_template(kind: str, benchmark: str, override: str | None = None) -> tuple[str, str]:
    """(template text, where it came from)."""
    if override:
        path = Path(override)
        if not path.is_file():
            raise ConfigError(f"{override}: prompt template file not found")
        return path.read_text(), str(path)
    name = f"{kind}.{benchmark}.txt"
    res = resources.files("cirflow.prompts").joinpath(name)
    if not res.is_file():
        raise ConfigError(f"no built-in prompt {name}; set a template file in the config")
    return res.read_text(), f"cirflow.prompts/{name}"


def render(template: str, **fields: str | None) -> str:
    # plain replacement, not str.format: prompts may legitimately contain braces (JSON examples)
    out = template
    for k, v in fields.items():
        out = out.replace("{" + k + "}", (v or "").strip())
    return out.strip()
