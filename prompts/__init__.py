"""Prompt templates as data files, selectable per benchmark and overridable by a config path.

A template is plain text with `{modification}` (and, where the benchmark has one, `{shared_concept}`)
placeholders; the reference image is attached before the text. The template's full text goes into the stage
key, so editing a prompt recomputes exactly the stages that read it.

Lines starting with `#:` are comments for people (each built-in file opens with one naming the paper section
it follows); `load_template` removes them, so they never reach the model and editing one changes no key.
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
        return strip_comments(path.read_text()), str(path)
    name = f"{kind}.{benchmark}.txt"
    res = resources.files("cirflow.prompts").joinpath(name)
    if not res.is_file():
        raise ConfigError(f"no built-in prompt {name}; set a template file in the config")
    return strip_comments(res.read_text()), f"cirflow.prompts/{name}"


COMMENT = "#:"


def strip_comments(text: str) -> str:
    """The template without its `#:` comment lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(COMMENT))


def header(text: str) -> list[str]:
    """The `#:` comment lines of a template file (without the marker), e.g. the paper section it follows."""
    return [line[len(COMMENT):].strip() for line in text.splitlines() if line.startswith(COMMENT)]


def render(template: str, **fields: str | None) -> str:
    # plain replacement, not str.format: prompts may legitimately contain braces (JSON examples)
    out = template
    for k, v in fields.items():
        out = out.replace("{" + k + "}", (v or "").strip())
    return out.strip()
