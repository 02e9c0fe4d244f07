"""Image preprocessing of the vision towers as plain JSON (open_clip models, BLIP folders), without torch: the
training keys of CoLLM and InstructCIR hold it and are computed at `--plan` time, which must not import torch
(issue 14). cirflow.models.collm.vision re-exports all of it.

    preprocess_config("local-dir:/models/clip")       # {"size", "mean", "std", "interpolation", "resize_mode"}
    tower_preprocess("blip", "/models/blip-itm-large-coco")

A named open_clip model (not a local-dir: folder) still asks open_clip for its configuration.
"""

from __future__ import annotations

import json
from pathlib import Path

from cirflow.schemas.errors import ConfigError

CONFIG = "open_clip_config.json"
BLIP_CONFIG = "blip_tower.json"  # next to a BLIP tower's config.json: its projection width and preprocessing
LOCAL_DIR = "local-dir:"
# open_clip's OPENAI_DATASET_MEAN / STD: the default when neither the config nor the pretrained tag names them
_MEAN, _STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def model_config(model: str) -> dict:
    if model.startswith(LOCAL_DIR):
        return dict(_read(Path(model[len(LOCAL_DIR):]))["model_cfg"])
    import open_clip  # only a named model needs it (a local-dir: folder carries its config): keeps `--plan` light

    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ConfigError(f"open_clip knows no model {model!r}")
    return dict(cfg)


def preprocess_config(model: str, pretrained: str | None = None) -> dict:
    """The eval-time image preprocessing of (model, pretrained) as plain JSON."""
    pre: dict = {}
    if model.startswith(LOCAL_DIR) and (Path(model[len(LOCAL_DIR):]) / BLIP_CONFIG).is_file():
        return dict(json.loads((Path(model[len(LOCAL_DIR):]) / BLIP_CONFIG).read_text())["preprocess_cfg"])
    if model.startswith(LOCAL_DIR):
        pre = dict(_read(Path(model[len(LOCAL_DIR):])).get("preprocess_cfg") or {})
    elif pretrained:
        import open_clip

        pre = {k: v for k, v in (open_clip.get_pretrained_cfg(model, pretrained) or {}).items()
               if k in ("mean", "std", "interpolation", "resize_mode")}
    size = pre.get("size") or model_config(model)["vision_cfg"]["image_size"]
    return {"size": size, "mean": list(pre.get("mean") or _MEAN), "std": list(pre.get("std") or _STD),
            "interpolation": pre.get("interpolation") or "bicubic", "resize_mode": pre.get("resize_mode") or "shortest"}


def _read(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise ConfigError(f"{folder} holds no {CONFIG} (not an open_clip local-dir model)")
    return json.loads(path.read_text())


def _blip_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise ConfigError(f"BLIP vision tower: {path} is not a transformers model folder (no config.json)")
    return json.loads(f.read_text())


def blip_preprocess(path: str | Path) -> dict:
    """BlipImageProcessor's eval transform as plain JSON: resize to size x size (no crop: 'squash'), bicubic, the
    processor's mean / std (OpenAI CLIP's by default). The size is the ViT's own (its position embeddings)."""
    path = Path(path)
    cfg = _blip_config(path)
    vis = cfg.get("vision_config", cfg) if cfg.get("model_type") == "blip" else cfg
    proc_file = path / "preprocessor_config.json"
    proc = json.loads(proc_file.read_text()) if proc_file.is_file() else {}
    return {"size": int(vis.get("image_size", 384)), "mean": list(proc.get("image_mean") or _MEAN),
            "std": list(proc.get("image_std") or _STD), "interpolation": "bicubic", "resize_mode": "squash"}


def tower_preprocess(kind: str, model: str, pretrained: str | None = None) -> dict:
    return blip_preprocess(model) if kind == "blip" else preprocess_config(model, pretrained)
