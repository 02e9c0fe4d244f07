"""The tiny checkpoints load through the same calls as real ones, deterministically, quickly, idempotently."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirflow.models.tiny import MARKER, build_tiny_open_clip, build_tiny_qwen25vl


def _digest(d: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir())}


def test_tiny_qwen_is_deterministic_idempotent_and_loads(tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    t0 = time.monotonic()
    a = build_tiny_qwen25vl(tmp_path / "a", seed=0)
    first_build = time.monotonic() - t0
    assert first_build < 10  # < 3 s warm; the first call also pays for importing transformers
    t0 = time.monotonic()
    b = build_tiny_qwen25vl(tmp_path / "b", seed=0)
    assert time.monotonic() - t0 < 3
    assert _digest(a) == _digest(b)
    c = build_tiny_qwen25vl(tmp_path / "c", seed=1)
    assert _digest(a)["model.safetensors"] != _digest(c)["model.safetensors"]

    # Idempotent: the same call again does not rewrite anything.
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_qwen25vl(a, seed=0) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime
    # Another seed into the same directory rebuilds it.
    build_tiny_qwen25vl(a, seed=1)
    assert json.loads((a / MARKER).read_text())["seed"] == 1
    assert _digest(a)["model.safetensors"] == _digest(c)["model.safetensors"]

    proc = AutoProcessor.from_pretrained(b)
    model = AutoModelForImageTextToText.from_pretrained(b).eval()
    assert proc.tokenizer.padding_side == "left"
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the edit."}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
    inputs = proc(text=[text], images=[img], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    decoded = proc.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    assert decoded.strip(), "the random model should produce visible text, not only special tokens"


def test_tiny_qwen_refuses_to_overwrite_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("not a checkpoint")
    with pytest.raises(FileExistsError):
        build_tiny_qwen25vl(tmp_path, seed=0)
    assert (tmp_path / "mine.txt").exists()


def test_tiny_open_clip_is_deterministic_and_loads(tmp_path):
    import open_clip
    import torch

    t0 = time.monotonic()
    a = build_tiny_open_clip(tmp_path / "a", seed=0, embed_dim=32)
    assert time.monotonic() - t0 < 10
    b = build_tiny_open_clip(tmp_path / "b", seed=0, embed_dim=32)
    assert _digest(a) == _digest(b)
    assert _digest(build_tiny_open_clip(tmp_path / "c", seed=1, embed_dim=32)) != _digest(a)
    t0 = time.monotonic()
    assert build_tiny_open_clip(a, seed=0, embed_dim=32) == a  # already built: returns at once
    assert time.monotonic() - t0 < 0.5

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{a}")
    tok = open_clip.get_tokenizer(f"local-dir:{a}")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    with torch.no_grad():
        fi = model.encode_image(preprocess(img)[None], normalize=True)
        ft = model.encode_text(tok(["make it red", "a dog"]), normalize=True)
    assert fi.shape == (1, 32) and ft.shape == (2, 32)
    assert torch.allclose(ft.norm(dim=-1), torch.ones(2), atol=1e-5)
