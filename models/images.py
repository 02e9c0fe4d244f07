"""Reading benchmark images: any fsspec path, RGB, with the GeneCIS attribute-item crop.

The crop follows the GeneCIS reference loader (facebookresearch/genecis datasets/vaw_dataset.py, benchmarks
README 5.1) step for step, because published GeneCIS numbers depend on it:
  left = max(0, x - 0.7 w), top = max(0, y - 0.7 h)                      (clipped first ...)
  right = min(W, left + 1.7 w), bottom = min(H, top + 1.7 h)             (... then the size is measured from there)
  PIL crop with those float coordinates (PIL rounds them), then pad with black to a square, the crop centred
  on the long side (offset (long - short) // 2), exactly like the reference's expand2square.
The window is not centred on the box: it starts 0.7 box-sizes before the box and only extends 0.3 past it
(less where the start was clipped at 0).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

DILATION = 0.7


def load_image(path: str, crop_box: Sequence[float] | None = None) -> Image.Image:
    """Open `path` (local or fsspec URL) as RGB; apply the GeneCIS crop when `crop_box` = [x, y, w, h] is given."""
    if "://" in path:
        import fsspec

        with fsspec.open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # decode now: the remote file handle closes when the block ends
    else:
        img = Image.open(path)
        img.load()
    img = img.convert("RGB")
    if crop_box is not None:
        img = genecis_crop(img, crop_box)
    return img


def crop_window(image_size: tuple[int, int], box: Sequence[float]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the dilated window, before PIL's rounding."""
    im_w, im_h = image_size
    x, y, w, h = (float(v) for v in box)
    left = max(0.0, x - DILATION * w)
    top = max(0.0, y - DILATION * h)
    right = min(float(im_w), left + (1 + DILATION) * w)
    bottom = min(float(im_h), top + (1 + DILATION) * h)
    return left, top, right, bottom


def genecis_crop(img: Image.Image, box: Sequence[float]) -> Image.Image:
    cropped = img.crop(crop_window(img.size, box))
    return pad_to_square(cropped)


def pad_to_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), (0,) * len(img.getbands()))
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out
