"""CIReVL's target-pad preprocessing (metrics-and-methods B.3, ratio 1.25) as an encoder option: the padding
itself, its use before open_clip's transform (a padded file encodes the same as the unpadded file with
`preprocess: target_pad`), and its place in the stage key (the default adds nothing to it)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cirflow.models.encoder import OpenClipEncoder, target_pad
from cirflow.schemas.encoder import EncoderConfig


def _img(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(1, 255, (h, w, 3), dtype=np.uint8))


def test_target_pad_geometry():
    wide = _img(200, 100)
    out = target_pad(wide, 1.25)  # short side padded to 200 / 1.25 = 160: 30 rows above and below
    assert out.size == (200, 160)
    a = np.asarray(out)
    assert not a[:30].any() and not a[130:].any() and np.array_equal(a[30:130], np.asarray(wide))
    tall = target_pad(_img(50, 150), 1.25)  # 150 / 1.25 = 120: 35 columns each side
    assert tall.size == (120, 150)
    square = _img(100, 90)  # ratio 1.11 < 1.25: unchanged
    assert target_pad(square, 1.25) is square
    assert target_pad(wide, 3.0) is wide


@pytest.fixture(scope="module")
def encoders(tiny_models):
    base = dict(model=f"local-dir:{tiny_models['encoder']}", device="cpu", num_workers=0)
    return OpenClipEncoder(EncoderConfig(**base)), OpenClipEncoder(EncoderConfig(**base, preprocess="target_pad"))


def test_encoder_pads_before_open_clip_transform(tmp_path, encoders):
    plain, padded = encoders
    wide = _img(96, 40, seed=3)
    wide.save(tmp_path / "wide.png")
    target_pad(wide, 1.25).save(tmp_path / "wide_padded.png")
    square = _img(40, 40, seed=4)
    square.save(tmp_path / "square.png")
    by_pad = padded.encode_images([tmp_path / "wide.png", tmp_path / "square.png"], progress=False)
    by_file = plain.encode_images([tmp_path / "wide_padded.png", tmp_path / "square.png"], progress=False)
    np.testing.assert_allclose(by_pad, by_file, atol=1e-6)
    resized = plain.encode_images([tmp_path / "wide.png"], progress=False)
    assert not np.allclose(by_pad[0], resized[0], atol=1e-4)  # the padding changes what the model sees
    # texts do not go through image preprocessing
    np.testing.assert_array_equal(padded.encode_texts(["a red car"]), plain.encode_texts(["a red car"]))
    assert padded.describe()["preprocess"] == "target_pad"


def test_target_pad_is_in_the_key(tiny_models):
    base = dict(model=f"local-dir:{tiny_models['encoder']}")
    plain = EncoderConfig(**base).key_fields()
    assert "preprocess" not in plain  # keys stored before the option existed stay valid
    pad = EncoderConfig(**base, preprocess="target_pad").key_fields()
    assert pad["preprocess"] == "target_pad" and pad["target_pad_ratio"] == 1.25
    assert EncoderConfig(**base, preprocess="target_pad", target_pad_ratio=1.5).key_fields() != pad
    with pytest.raises(ValueError):
        EncoderConfig(**base, target_pad_ratio=0.5)
