"""The candidate strip of the refinement's validation (collm.txt supp. 8.2): "the target image and all hard
negative samples ... are concatenated horizontally in random order as [CANDIDATE IMAGES]". The MLLM sees two
images, the reference and one strip; the candidates are numbered 1..n left to right in a band above them.

Each candidate is fitted (aspect kept) into a `cell` x `cell` square on white, so a cell's pixels depend only
on that image; the strip is PNG, so the same candidates in the same order give the same bytes (the request
cache keys on image bytes, and a resumed run asks the same).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from PIL import Image, ImageDraw, ImageFont

from cirflow.models.images import load_image
from cirflow.tasks.stage import Context

GAP = 8  # white pixels between cells, so two candidates never read as one picture
BAND = 40  # the label band above the cells


def fit_cell(img: Image.Image, cell: int) -> Image.Image:
    """`img` scaled to fit a cell x cell square (aspect kept), centred on white."""
    img = img.convert("RGB")
    scale = cell / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    out = Image.new("RGB", (cell, cell), "white")
    out.paste(img.resize((w, h), Image.Resampling.BICUBIC), ((cell - w) // 2, (cell - h) // 2))
    return out


def cell_box(k: int, cell: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of candidate k's (0-based) image area in the strip."""
    left = k * (cell + GAP)
    return left, BAND, left + cell, BAND + cell


def strip(images: list[Image.Image], cell: int) -> Image.Image:
    n = len(images)
    out = Image.new("RGB", (n * cell + (n - 1) * GAP, BAND + cell), "white")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=BAND * 3 // 4)
    for k, img in enumerate(images):
        left, top, right, _ = cell_box(k, cell)
        out.paste(fit_cell(img, cell), (left, top))
        draw.text(((left + right) // 2, BAND // 2), str(k + 1), fill="black", font=font, anchor="mm")
    return out


def strip_file(ctx: Context, paths: list[str], cell: int) -> str:
    """The strip of `paths` (in this order) as a PNG in a scratch folder that lives as long as the stage run."""
    if "strips" not in ctx.scratch:
        ctx.scratch["strips"] = tempfile.TemporaryDirectory(prefix="cirflow-strips-")
    name = hashlib.sha256("\0".join([str(cell), *paths]).encode()).hexdigest()[:32] + ".png"
    path = os.path.join(ctx.scratch["strips"].name, name)
    if not os.path.exists(path):
        strip([load_image(p) for p in paths], cell).save(path + ".tmp.png")
        os.replace(path + ".tmp.png", path)  # never a half-written file under the final name
    return path
