"""The image file an MLLM sees for an images-table row: the file itself, or the benchmark's crop (GeneCIS)."""

from __future__ import annotations

import hashlib
import os
import tempfile

from cirflow.models.images import load_image
from cirflow.tasks.stage import Context


def image_for(ctx: Context, image: dict) -> str:
    """The file the MLLM sees: the image itself, or (GeneCIS attribute items) the benchmark's crop, written once
    per run into a scratch folder that lives as long as the stage run."""
    if not image["crop_box"]:
        return image["path"]
    if "crops" not in ctx.scratch:
        ctx.scratch["crops"] = tempfile.TemporaryDirectory(prefix="cirflow-crops-")
    path = os.path.join(ctx.scratch["crops"].name, hashlib.sha1(image["image_id"].encode()).hexdigest() + ".png")
    if not os.path.exists(path):
        load_image(image["path"], image["crop_box"]).save(path)
    return path
