"""A trained model folder: model.safetensors + factory.json (the model Ref that rebuilds the architecture) + the
model's own extra files (configs, tokenizer). `load_model(dir)` gives the module back with its trained weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model as _load_weights

from cirflow.schemas.errors import ConfigError
from cirflow.schemas.training import Ref

WEIGHTS = "model.safetensors"
FACTORY = "factory.json"


def factory_json(ref: Ref) -> bytes:
    return json.dumps(ref.model_dump(mode="json"), indent=2, sort_keys=True).encode()


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    from cirflow.training.refs import build_model

    folder = Path(folder)
    if not (folder / FACTORY).is_file() or not (folder / WEIGHTS).is_file():
        raise ConfigError(f"{folder} is not a trained model folder (needs {FACTORY} and {WEIGHTS})")
    ref = Ref.model_validate_json((folder / FACTORY).read_text())
    model = build_model(ref, seed=0)
    _load_weights(model, str(folder / WEIGHTS), device=str(device))
    return model.to(device).eval()
