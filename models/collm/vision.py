"""open_clip towers for the trained CIR models (CoLLM's vision encoder f, InstructCIR's reformulation backbone).

    clip = load_clip("ViT-L-14", "openai")                  # or ("local-dir:/models/clip", None); pretrained weights
    cfg = preprocess_config("ViT-L-14", "openai")          # {"size", "mean", "std", "interpolation", "resize_mode"}
    save_clip_config(clip, "ViT-L-14", "openai", out_dir)   # open_clip_config.json: architecture + preprocessing
    clip = clip_from_config(out_dir)                         # the same architecture, weights not loaded

A trained model folder carries the architecture (open_clip_config.json) but not a second copy of the base
weights: its model.safetensors holds the trained tower, so `clip_from_config` + loading model.safetensors rebuilds
it without the base checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cirflow.schemas.errors import ConfigError

CONFIG = "open_clip_config.json"
LOCAL_DIR = "local-dir:"
# open_clip's OPENAI_DATASET_MEAN / STD: the default when neither the config nor the pretrained tag names them
_MEAN, _STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def load_clip(model: str, pretrained: str | None = None) -> torch.nn.Module:
    import open_clip

    try:
        return open_clip.create_model(model, pretrained=pretrained)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        raise ConfigError(f"cannot load the open_clip model {model!r} (pretrained {pretrained!r}): "
                          f"{str(e).splitlines()[0][:300]}") from None


def model_config(model: str) -> dict:
    import open_clip

    if model.startswith(LOCAL_DIR):
        return dict(_read(Path(model[len(LOCAL_DIR):]))["model_cfg"])
    cfg = open_clip.get_model_config(model)
    if cfg is None:
        raise ConfigError(f"open_clip knows no model {model!r}")
    return dict(cfg)


def preprocess_config(model: str, pretrained: str | None = None) -> dict:
    """The eval-time image preprocessing of (model, pretrained) as plain JSON."""
    import open_clip

    pre: dict = {}
    if model.startswith(LOCAL_DIR):
        pre = dict(_read(Path(model[len(LOCAL_DIR):])).get("preprocess_cfg") or {})
    elif pretrained:
        pre = {k: v for k, v in (open_clip.get_pretrained_cfg(model, pretrained) or {}).items()
               if k in ("mean", "std", "interpolation", "resize_mode")}
    size = pre.get("size") or model_config(model)["vision_cfg"]["image_size"]
    return {"size": size, "mean": list(pre.get("mean") or _MEAN), "std": list(pre.get("std") or _STD),
            "interpolation": pre.get("interpolation") or "bicubic", "resize_mode": pre.get("resize_mode") or "shortest"}


def image_transform(pre: dict):
    import open_clip

    return open_clip.image_transform(pre["size"], is_train=False, mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                                     resize_mode=pre.get("resize_mode"), interpolation=pre.get("interpolation"))


def save_clip_config(model: str, pretrained: str | None, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"model_cfg": model_config(model), "preprocess_cfg": preprocess_config(model, pretrained)}
    (out / CONFIG).write_text(json.dumps(doc, indent=1, sort_keys=True))


def clip_from_config(folder: str | Path) -> torch.nn.Module:
    import open_clip

    return open_clip.create_model(f"{LOCAL_DIR}{Path(folder)}", load_weights=False)


def _read(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise ConfigError(f"{folder} holds no {CONFIG} (not an open_clip local-dir model)")
    return json.loads(path.read_text())
