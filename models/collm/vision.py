"""open_clip towers for the trained CIR models (CoLLM's vision encoder f, InstructCIR's reformulation backbone).

    clip = load_clip("ViT-L-14", "openai")                  # or ("local-dir:/models/clip", None); pretrained weights
    cfg = preprocess_config("ViT-L-14", "openai")          # {"size", "mean", "std", "interpolation", "resize_mode"}
    save_clip_config(clip, "ViT-L-14", "openai", out_dir)   # open_clip_config.json: architecture + preprocessing
    clip = clip_from_config(out_dir)                         # the same architecture, weights not loaded

A trained model folder carries the architecture (open_clip_config.json) but not a second copy of the base
weights: its model.safetensors holds the trained tower, so `clip_from_config` + loading model.safetensors rebuilds
it without the base checkpoint.

BLIP towers (CoLLM's "BLIP-L ViT", supp. 9.1 / table 14) through transformers, no remote code:

    tower = load_tower("blip", "/models/blip-itm-large-coco")   # BlipForImageTextRetrieval, BlipModel or
                                                                # BlipVisionModel folder; .output_dim, tower(pixels)
    pre = tower_preprocess("blip", "/models/blip-itm-large-coco")   # its preprocessor_config.json (squash resize)
    save_tower_config("blip", "/models/...", None, out_dir, tower)  # config.json (BlipVisionConfig) + blip_tower.json
    tower = tower_from_config(out_dir)                               # either kind, weights not loaded

f(v) of a BLIP tower is BLIP's ITC image feature: the CLS token of the last layer (after post_layernorm) through
`vision_proj` (BlipForImageTextRetrieval) or `visual_projection` (BlipModel); a bare BlipVisionModel gives the CLS
token itself. The paper does not print which BLIP feature f is; ITC's is the one BLIP retrieves images with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cirflow.schemas.errors import ConfigError
# the preprocessing / config readers are torch-free (training keys hold them, computed at `--plan` time)
from cirflow.models.tower_preprocess import (BLIP_CONFIG, CONFIG, LOCAL_DIR, _blip_config, _read,  # noqa: F401
                                             blip_preprocess, model_config, preprocess_config, tower_preprocess)

# peft target names of every BLIP ViT block (attention qkv + output projection, MLP): table 14's "ViT LoRA" row
BLIP_LORA_TARGETS = ["qkv", "projection", "fc1", "fc2"]
CLIP_LORA_TARGETS = ["attn", "c_fc", "c_proj"]  # every open_clip ViT block: attention + MLP


def load_clip(model: str, pretrained: str | None = None) -> torch.nn.Module:
    import open_clip

    try:
        return open_clip.create_model(model, pretrained=pretrained)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        raise ConfigError(f"cannot load the open_clip model {model!r} (pretrained {pretrained!r}): "
                          f"{str(e).splitlines()[0][:300]}") from None


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


# ---- towers of either kind (CoLLM's f) ----------------------------------------------------------------------------


class BlipTower(torch.nn.Module):
    """A BLIP ViT as f: pixels [B, 3, S, S] -> [B, output_dim] (the CLS token, through BLIP's ITC projection when the
    checkpoint has one)."""

    def __init__(self, vision_model: torch.nn.Module, vision_proj: torch.nn.Linear | None = None):
        super().__init__()
        self.vision_model = vision_model
        self.vision_proj = vision_proj
        self.output_dim = int(vision_proj.out_features if vision_proj is not None else vision_model.config.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # last_hidden_state is post_layernorm'd once; transformers' pooler_output applies it a second time, which
        # BLIP's own ITC (image_embeds[:, 0, :] -> vision_proj) does not
        cls = self.vision_model(pixel_values=pixels).last_hidden_state[:, 0]
        return self.vision_proj(cls) if self.vision_proj is not None else cls


def load_blip(path: str | Path) -> BlipTower:
    """A BLIP tower from a local checkpoint: BlipForImageTextRetrieval (vision_model + vision_proj), BlipModel
    (vision_model + visual_projection) or BlipVisionModel (no projection)."""
    from transformers import BlipForImageTextRetrieval, BlipModel, BlipVisionModel

    path = Path(path)
    cfg = _blip_config(path)
    kind, archs = cfg.get("model_type"), cfg.get("architectures") or []
    if kind == "blip_vision_model":
        return BlipTower(BlipVisionModel.from_pretrained(path, dtype=torch.float32))
    if kind == "blip" and "BlipForImageTextRetrieval" in archs:
        full = BlipForImageTextRetrieval.from_pretrained(path, dtype=torch.float32)
        return BlipTower(full.vision_model, full.vision_proj)  # the text encoder and ITM head are dropped
    if kind == "blip" and "BlipModel" in archs:
        full = BlipModel.from_pretrained(path, dtype=torch.float32)
        return BlipTower(full.vision_model, full.visual_projection)
    raise ConfigError(f"BLIP vision tower: {path} holds {kind!r} {archs}; use a BlipForImageTextRetrieval, BlipModel "
                      "or BlipVisionModel checkpoint")


def load_tower(kind: str, model: str, pretrained: str | None = None) -> torch.nn.Module:
    """f with pretrained weights: an open_clip model's `.visual`, or a BlipTower."""
    return load_blip(model) if kind == "blip" else load_clip(model, pretrained).visual


def lora_targets(kind: str) -> list[str]:
    return BLIP_LORA_TARGETS if kind == "blip" else CLIP_LORA_TARGETS


def save_tower_config(kind: str, model: str, pretrained: str | None, out_dir: str | Path,
                      tower: torch.nn.Module | None = None) -> None:
    """The tower's architecture + preprocessing in `out_dir` (a trained folder's vision/), no weights."""
    if kind != "blip":
        save_clip_config(model, pretrained, out_dir)
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blip = _unwrap(tower)
    blip.vision_model.config.save_pretrained(out)
    proj = blip.vision_proj.out_features if blip.vision_proj is not None else None
    doc = {"projection": proj, "preprocess_cfg": blip_preprocess(model)}
    (out / BLIP_CONFIG).write_text(json.dumps(doc, indent=1, sort_keys=True))


def copy_tower_config(src: str | Path, out_dir: str | Path) -> None:
    """A trained folder's vision/ configs into another one (fine-tuning from `init`): either kind."""
    import shutil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(src).glob("*.json"):
        shutil.copyfile(f, out / f.name)


def tower_from_config(folder: str | Path) -> torch.nn.Module:
    """The tower a trained folder's vision/ describes, weights not loaded (the trained model.safetensors has them)."""
    folder = Path(folder)
    if not (folder / BLIP_CONFIG).is_file():
        return clip_from_config(folder).visual
    from transformers import BlipVisionConfig, BlipVisionModel

    doc = json.loads((folder / BLIP_CONFIG).read_text())
    vm = BlipVisionModel(BlipVisionConfig.from_pretrained(folder))
    proj = torch.nn.Linear(vm.config.hidden_size, doc["projection"]) if doc["projection"] else None
    return BlipTower(vm, proj)


def _unwrap(tower):
    from peft import PeftModel

    return tower.get_base_model() if isinstance(tower, PeftModel) else tower
