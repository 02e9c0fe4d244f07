"""Config of the image/text encoder (open_clip) and the part of it that goes into a stage key.

`key_fields()` answers "which weights produced these embeddings?": model name, pretrained tag or file,
precision, and a *revision* that pins the weights. For weights on disk the revision is a sha256 of the
files, so overwriting a fine-tuned checkpoint in place changes the stage key. Hashing a 1-2 GB checkpoint
takes seconds, so hashes are cached by (path, size, mtime_ns), in memory and in a small JSON file
(`$CIRFLOW_HASH_CACHE`, default `~/.cache/cirflow/file-sha256.json`) so that every new process stays cheap.

Batch size, workers and device are left out of the key on purpose: they change speed, not the result
(up to float noise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cirflow.schemas.paths import LocalDirModel, LocalPath, ModelPath

# weight identity lives beside the loaders (models/weights.py); re-exported for callers of the old names
from cirflow.models.weights import HF_HUB, LOCAL_DIR, _dir_digest, file_sha256, weights_revision  # noqa: F401


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: LocalDirModel  # open_clip name ("ViT-B-32", "ViT-B-16-SigLIP2", "hf-hub:org/repo") or "local-dir:/path"
    pretrained: ModelPath | None = None  # open_clip pretrained tag ("laion2b_s34b_b79k") or a checkpoint file path
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(2, ge=0)  # 0 = decode in the main process; DataLoader workers that decode and preprocess images
    tokenizer: LocalPath | None = None  # local HF tokenizer dir (SigLIP/SigLIP2 offline, environment.md 3a)
    # Image preprocessing before open_clip's own transform (resize, centre crop, normalise). "target_pad":
    # CIReVL's (and CLIP4Cir's) targetpad: an image whose longer/shorter side ratio exceeds target_pad_ratio is
    # zero-padded on its short sides to that ratio first, so the centre crop keeps more of it
    # (metrics-and-methods B.3: ratio 1.25). "resize": open_clip's transform alone.
    preprocess: Literal["resize", "target_pad"] = "resize"
    target_pad_ratio: float = Field(1.25, ge=1.0)

    def key_fields(self) -> dict:
        fields = {
            "model": self.model,
            "pretrained": self.pretrained,
            "precision": self.precision,
            "revision": weights_revision(self.model, self.pretrained),
        }
        if self.tokenizer is not None:
            # the tokenizer decides the token ids, so a different vocabulary is a different text encoder
            fields["tokenizer"] = _dir_digest(Path(self.tokenizer), suffixes=None)
        if self.preprocess != "resize":
            # other pixels, other image features (the default adds nothing: keys stored before stay valid)
            fields["preprocess"] = self.preprocess
            fields["target_pad_ratio"] = self.target_pad_ratio
        return fields
