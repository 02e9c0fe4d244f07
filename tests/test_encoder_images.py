"""load_image: RGB, fsspec paths, and the GeneCIS attribute crop checked pixel by pixel."""

from __future__ import annotations

import io

import fsspec
import numpy as np
import pytest
from PIL import Image

from cirflow.models.images import crop_window, load_image

W, H = 100, 80


@pytest.fixture()
def coded_png(tmp_path):
    """Every pixel encodes its own coordinates: R = x, G = y, B = 255 (never black)."""
    a = np.zeros((H, W, 3), np.uint8)
    a[..., 0] = np.arange(W)[None, :]
    a[..., 1] = np.arange(H)[:, None]
    a[..., 2] = 255
    p = tmp_path / "coded.png"
    Image.fromarray(a).save(p)
    return str(p)


def _expect(img: Image.Image, left: int, top: int, right: int, bottom: int) -> None:
    """The output is the window [left, right) x [top, bottom) padded with black to a centred square."""
    cw, ch = right - left, bottom - top
    side = max(cw, ch)
    a = np.asarray(img)
    assert img.mode == "RGB" and a.shape == (side, side, 3)
    ox, oy = (side - cw) // 2, (side - ch) // 2
    inner = a[oy : oy + ch, ox : ox + cw]
    np.testing.assert_array_equal(inner[..., 0], np.broadcast_to(np.arange(left, right)[None, :], (ch, cw)))
    np.testing.assert_array_equal(inner[..., 1], np.broadcast_to(np.arange(top, bottom)[:, None], (ch, cw)))
    mask = np.ones((side, side), bool)
    mask[oy : oy + ch, ox : ox + cw] = False
    assert not a[mask].any(), "padding must be black"


def test_window_starts_before_the_box_and_is_1_7_times_its_size(coded_png):
    # box x=40 y=30 w=20 h=10: start 0.7 box-sizes earlier (26, 23), size 1.7 x (34 x 17), padded to 34 x 34
    _expect(load_image(coded_png, [40, 30, 20, 10]), 26, 23, 60, 40)


def test_window_clipped_at_the_top_left_keeps_its_size_from_the_clipped_start(coded_png):
    # the start clips to 0, then the 1.7x size is measured from 0 (reference behaviour): 0..34 x 0..17
    _expect(load_image(coded_png, [5, 4, 20, 10]), 0, 0, 34, 17)


def test_window_clipped_at_the_bottom_right(coded_png):
    _expect(load_image(coded_png, [90, 75, 20, 10]), 76, 68, 100, 80)


def test_fractional_and_negative_boxes_round_like_pil(coded_png):
    assert crop_window((W, H), [40.4, 30.6, 20.2, 10.2]) == pytest.approx((26.26, 23.46, 60.6, 40.8))
    _expect(load_image(coded_png, [40.4, 30.6, 20.2, 10.2]), 26, 23, 61, 41)
    _expect(load_image(coded_png, [-2.5, 10, 30, 40]), 0, 0, 51, 68)  # VG has slightly negative boxes


def test_no_box_means_whole_image_rgb(tmp_path):
    p = tmp_path / "gray.png"
    Image.fromarray(np.full((7, 9), 200, np.uint8), mode="L").save(p)
    img = load_image(str(p))
    assert img.mode == "RGB" and img.size == (9, 7) and np.asarray(img)[0, 0].tolist() == [200, 200, 200]


def test_fsspec_url(coded_png):
    buf = io.BytesIO()
    Image.open(coded_png).save(buf, format="PNG")
    with fsspec.open("memory://cirflow-test/coded.png", "wb") as f:
        f.write(buf.getvalue())
    _expect(load_image("memory://cirflow-test/coded.png", [40, 30, 20, 10]), 26, 23, 60, 40)
    assert load_image("file://" + coded_png).size == (W, H)
