"""What every MLLM backend takes and returns, and the two steps they share: reading an image and
checking a JSON answer against a schema.

Backends never raise for one bad item: it comes back as status="failed" with the reason, so one unreadable
image or one malformed answer does not sink a shard of thousands.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

from cirflow.schemas.mllm import SamplingParams


@dataclass(frozen=True)
class ChatRequest:
    id: str
    prompt: str
    images: tuple[str, ...] = ()  # local paths or fsspec URLs; sent before the prompt text
    system: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    json_schema: dict | None = None  # the answer must be a JSON document valid under this schema


@dataclass
class ChatResult:
    id: str
    text: str | None  # None when failed
    status: Literal["ok", "failed"]
    error: str | None
    seconds: float
    seed: int


@runtime_checkable
class MLLM(Protocol):
    def generate(self, requests: Sequence[ChatRequest], progress: bool = True) -> list[ChatResult]:
        """One result per request, same order. Never raises for a single failed item."""
        ...

    def describe(self) -> dict:
        """backend, model, revision, dtype, server version if known. Never secrets."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------- images


def load_image(path: str, max_pixels: int | None = None):
    """Read `path` (local or fsspec URL) as an RGB PIL image, downscaled to at most `max_pixels` pixels."""
    import fsspec
    from PIL import Image

    with fsspec.open(path, "rb") as f:
        img = Image.open(io.BytesIO(f.read()))
        img.load()
    return downscale(img.convert("RGB"), max_pixels)


def downscale(img, max_pixels: int | None):
    """Keep the aspect ratio; floor the sides so the result never exceeds the budget."""
    w, h = img.size
    if max_pixels is None or w * h <= max_pixels:
        return img
    from PIL import Image

    s = math.sqrt(max_pixels / (w * h))
    return img.resize((max(1, int(w * s)), max(1, int(h * s))), Image.Resampling.BICUBIC)


# ------------------------------------------------------------------------------------------ JSON answers

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)
# Keywords that only annotate; a validator may ignore them (JSON Schema 2020-12: `format` is annotation-only).
_ANNOTATIONS = {
    "title", "description", "default", "examples", "$schema", "$id", "$defs", "definitions", "$comment",
    "format", "deprecated", "readOnly", "writeOnly",
}  # fmt: skip
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer(),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def parse_json_output(text: str | None, schema: dict) -> tuple[Any, str | None]:
    """Parse a model's answer as JSON and validate it. Returns (value, None) or (None, reason).

    One surrounding markdown code fence is tolerated (unconstrained models add them); nothing else is
    repaired. Supports the JSON Schema subset pydantic's `model_json_schema()` and vLLM's structured
    outputs use; a schema keyword outside it is reported as an error rather than silently passing.
    """
    if text is None:
        return None, "no text to parse"
    s = text.strip()
    m = _FENCE.match(s)
    if m:
        s = m.group(1).strip()
    try:
        value = json.loads(s)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e}"
    try:
        errors = _validate(value, schema, schema, "$")
    except (ValueError, KeyError, TypeError, re.error) as e:  # the schema itself is broken
        return None, f"unusable JSON schema: {type(e).__name__}: {e}"
    if errors:
        return None, "schema violation: " + "; ".join(errors[:5])
    return value, None


def resolve_ref(ref: str, root: dict) -> dict:
    """The subschema a local JSON pointer `$ref` ("#/$defs/Box") names in `root`."""
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref is supported, got {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _validate(v: Any, schema: dict | bool, root: dict, at: str) -> list[str]:
    """All violations of `schema` by `v`, as 'path: reason' strings."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{at}: no value is allowed here"]
    errs: list[str] = []
    for key, want in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key == "$ref":
            errs += _validate(v, resolve_ref(want, root), root, at)
        elif key == "type":
            types = [want] if isinstance(want, str) else want
            if not any(_TYPES[t](v) for t in types):
                errs.append(f"{at}: expected {'|'.join(types)}, got {type(v).__name__}")
        elif key == "enum":
            if v not in want:
                errs.append(f"{at}: {v!r} is not one of {want}")
        elif key == "const":
            if v != want:
                errs.append(f"{at}: expected {want!r}")
        elif key in ("anyOf", "oneOf"):
            ok = sum(not _validate(v, sub, root, at) for sub in want)
            if ok == 0 or (key == "oneOf" and ok > 1):
                errs.append(f"{at}: matches {ok} of the {key} alternatives")
        elif key == "allOf":
            for sub in want:
                errs += _validate(v, sub, root, at)
        elif key in ("properties", "required", "additionalProperties", "minProperties", "maxProperties"):
            if isinstance(v, dict):
                errs += _check_object(v, key, want, schema, root, at)
        elif key in ("items", "minItems", "maxItems", "uniqueItems", "prefixItems"):
            if isinstance(v, list):
                errs += _check_array(v, key, want, schema, root, at)
        elif key in ("minLength", "maxLength", "pattern"):
            if isinstance(v, str):
                if key == "minLength" and len(v) < want or key == "maxLength" and len(v) > want:
                    errs.append(f"{at}: length {len(v)} violates {key}={want}")
                if key == "pattern" and not re.search(want, v):
                    errs.append(f"{at}: does not match pattern {want!r}")
        elif key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
            if _TYPES["number"](v):
                bad = {
                    "minimum": lambda: v < want,
                    "maximum": lambda: v > want,
                    "exclusiveMinimum": lambda: v <= want,
                    "exclusiveMaximum": lambda: v >= want,
                    "multipleOf": lambda: not math.isclose(v / want, round(v / want)),
                }[key]()
                if bad:
                    errs.append(f"{at}: {v} violates {key}={want}")
        else:
            errs.append(f"{at}: unsupported schema keyword {key!r}")
    return errs


def _check_object(v: dict, key: str, want: Any, schema: dict, root: dict, at: str) -> list[str]:
    if key == "properties":
        return [e for k, sub in want.items() if k in v for e in _validate(v[k], sub, root, f"{at}.{k}")]
    if key == "required":
        return [f"{at}: missing required property {k!r}" for k in want if k not in v]
    if key == "additionalProperties":
        extra = [k for k in v if k not in schema.get("properties", {})]
        if want is False:
            return [f"{at}: unexpected properties {extra}"] if extra else []
        return [e for k in extra for e in _validate(v[k], want, root, f"{at}.{k}")]
    n = len(v)
    if key == "minProperties" and n < want or key == "maxProperties" and n > want:
        return [f"{at}: {n} properties violate {key}={want}"]
    return []


def _check_array(v: list, key: str, want: Any, schema: dict, root: dict, at: str) -> list[str]:
    if key == "prefixItems":
        return [e for i, (x, sub) in enumerate(zip(v, want)) for e in _validate(x, sub, root, f"{at}[{i}]")]
    if key == "items":
        start = len(schema.get("prefixItems", []))
        return [e for i, x in enumerate(v[start:], start) for e in _validate(x, want, root, f"{at}[{i}]")]
    if key == "uniqueItems":
        seen = [json.dumps(x, sort_keys=True) for x in v]
        return [f"{at}: items are not unique"] if want and len(set(seen)) != len(seen) else []
    n = len(v)
    if key == "minItems" and n < want or key == "maxItems" and n > want:
        return [f"{at}: {n} items violate {key}={want}"]
    return []


def check_json_answer(text: str | None, schema: dict | None) -> tuple[str | None, str | None]:
    """For a backend: (text to return, error). Without a schema the text passes through unchanged; with one,
    an invalid answer becomes an error that keeps the raw text, so it can be audited."""
    if schema is None:
        return text, None
    value, err = parse_json_output(text, schema)
    if err is not None:
        return None, f"{err}; raw text: {text!r}"
    # Re-serialised, so callers can json.loads it whatever fence or spacing the model used.
    return json.dumps(value, ensure_ascii=False), None
