"""What names an MVFT model folder, without loading it: its file names and its weights' hash.

Apart from model.py (torch, transformers) because stage keys are computed from it when a run is only planned
(`cirflow run CONFIG --plan`), which must not import torch.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cirflow.models.weights import file_sha256
from cirflow.schemas.errors import CirflowError

SETTINGS_FILE = "mvft_config.json"
WEIGHTS_FILE = "model.safetensors"


def weights_sha256(path: str | os.PathLike) -> str:
    """Weight identity of a model folder: "sha256:<hex>" of model.safetensors (the cached hash of
    schemas/encoder.py), or over (name, sha256) of every shard for a sharded hub checkpoint."""
    p = Path(path)
    if (p / WEIGHTS_FILE).is_file():
        return "sha256:" + file_sha256(p / WEIGHTS_FILE)
    shards = sorted(p.glob("*.safetensors"))
    if not shards:
        raise CirflowError(f"MVFT model: no .safetensors weights in {p}")
    h = hashlib.sha256()
    for s in shards:
        h.update(f"{s.name}\0{file_sha256(s)}\n".encode())
    return "sha256:" + h.hexdigest()
