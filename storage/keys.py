"""Stage keys: what produced an artifact, hashed.

A key covers the stage name, its code version, every parameter that changes the output (model id and
revision, dtype, sampler params, prompt template *text*, seed) and the keys of the input artifacts. It never
covers runtime knobs (shard size, batch size, concurrency) — those change speed, not content — and never
Prefect's source/input hashing, which misses prompt files and hashes whole payloads.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Mapping

from pydantic import BaseModel

from cirflow.storage.manifest import STORE_FORMAT

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
STAGE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def canonical(value: Any) -> Any:
    """JSON-ready form with a single spelling per value (pydantic models dumped, tuples as lists)."""
    if isinstance(value, BaseModel):
        return canonical(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        # 1.0 and 1 must hash alike: YAML and CLI users write either
        return int(value)
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def stage_key(stage: str, version: str, params: Any, inputs: Mapping[str, str]) -> str:
    if not STAGE_RE.match(stage):
        raise ValueError(f"invalid stage name {stage!r}")
    for name, key in inputs.items():
        if not KEY_RE.match(key):
            raise ValueError(f"input {name!r} has an invalid artifact key {key!r}")
    # the store format is keyed so that a format change never reuses an artifact written by the old one
    doc = {"stage": stage, "version": version, "params": params, "inputs": dict(inputs), "store_format": STORE_FORMAT}
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


def item_seed(base_seed: int, item_id: str) -> int:
    """Per-item seed independent of sharding and batch composition (so resumed runs draw the same samples)."""
    digest = hashlib.sha256(f"{base_seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
