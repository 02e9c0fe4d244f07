"""Batched MVFT feature extraction to numpy, for embedding galleries and queries ([N, k, d] float32 rows).

    encode_images(model, paths, crop_boxes=None)      # eq. 10 / 16
    encode_texts(model, texts, tokens="query"|"cls")  # eq. 9 / 18 ("cls": BLIP-2's own text feature, [N, 1, d])
    encode_composed(model, paths, texts)              # eq. 8 / 15

Stored as Parquet they are fixed-size lists of k*d floats (`flatten` / `unflatten`). Inference runs in eval mode
under inference_mode; `precision` "bf16"/"fp16" autocasts on the model's device (the Q-Former stays fp32 weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cirflow.models.images import load_image

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def encode_images(model, paths: Sequence[str], crop_boxes: Sequence | None = None, *, batch_size: int = 64,
                  precision: str = "fp32") -> np.ndarray:
    out = []
    for lo in range(0, len(paths), batch_size):
        boxes = [None] * len(paths[lo:lo + batch_size]) if crop_boxes is None else crop_boxes[lo:lo + batch_size]
        px = model.preprocess([load_image(str(p), b) for p, b in zip(paths[lo:lo + batch_size], boxes)])
        with _ctx(model, precision):
            out.append(model.encode_image(px).float().cpu().numpy())
    return _cat(out, model, model.num_tokens)


def encode_texts(model, texts: Sequence[str], *, tokens: str = "query", batch_size: int = 256,
                 precision: str = "fp32") -> np.ndarray:
    out = []
    for lo in range(0, len(texts), batch_size):
        enc = model.tokenize(list(texts[lo:lo + batch_size]))
        with _ctx(model, precision):
            out.append(model.encode_text(enc["input_ids"], enc["attention_mask"], tokens=tokens).float().cpu().numpy())
    return _cat(out, model, 1 if tokens == "cls" else model.num_tokens)


def encode_composed(model, paths: Sequence[str], texts: Sequence[str], crop_boxes: Sequence | None = None, *,
                    batch_size: int = 64, precision: str = "fp32") -> np.ndarray:
    if len(paths) != len(texts):
        raise ValueError(f"{len(paths)} reference images for {len(texts)} modification texts")
    out = []
    for lo in range(0, len(paths), batch_size):
        hi = min(lo + batch_size, len(paths))
        boxes = [None] * (hi - lo) if crop_boxes is None else crop_boxes[lo:hi]
        px = model.preprocess([load_image(str(p), b) for p, b in zip(paths[lo:hi], boxes)])
        enc = model.tokenize(list(texts[lo:hi]))
        with _ctx(model, precision):
            out.append(model.encode_composed(px, enc["input_ids"], enc["attention_mask"]).float().cpu().numpy())
    return _cat(out, model, model.num_tokens)


def flatten(feats: np.ndarray) -> np.ndarray:
    """[N, k, d] -> [N, k*d] (a Parquet fixed_size_list<float32> column per row)."""
    return np.ascontiguousarray(feats, dtype=np.float32).reshape(len(feats), -1)


def unflatten(rows: np.ndarray, k: int) -> np.ndarray:
    """[N, k*d] -> [N, k, d]."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.shape[1] % k:
        raise ValueError(f"rows of {rows.shape[1]} floats are not k = {k} tokens")
    return rows.reshape(len(rows), k, rows.shape[1] // k)


class _ctx:
    def __init__(self, model, precision: str):
        self.model, self.dtype = model, _DTYPES.get(precision)

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.inf = torch.inference_mode()
        self.inf.__enter__()
        self.ac = torch.autocast(self.model.device.type, dtype=self.dtype, enabled=self.dtype is not None)
        self.ac.__enter__()

    def __exit__(self, *exc):
        self.ac.__exit__(*exc)
        self.inf.__exit__(*exc)
        self.model.train(self.was_training)


def _cat(parts: list[np.ndarray], model, k: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, k, model.dim), np.float32)
