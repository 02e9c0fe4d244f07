"""OpenClipEncoder on the tiny random open_clip (cirflow.models.tiny, environment.md 3a), fully offline."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cirflow.models.encoder import ImageReadError, OpenClipEncoder
from cirflow.models.tiny import build_tiny_open_clip
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.errors import CirflowError

SIZES = [(64, 64), (96, 128), (224, 224), (80, 60), (300, 40)]  # (w, h): squares, portrait, landscape, extreme


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_open_clip(tmp_path_factory.mktemp("tiny") / "clip", seed=0)


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for n, (w, h) in enumerate(SIZES * 2):  # 10 images, so batches of 2 and 64 really differ
        p = d / f"img{n}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _enc(tiny_dir, **kw):
    return OpenClipEncoder(EncoderConfig(model=f"local-dir:{tiny_dir}", device="cpu", **{"num_workers": 0, **kw}))


@pytest.fixture(scope="module")
def encoder(tiny_dir):
    return _enc(tiny_dir, batch_size=64)


def test_images_normalised_float32_right_dim(encoder, image_paths):
    emb = encoder.encode_images(image_paths, progress=False)
    assert encoder.dim == 64 and emb.shape == (len(image_paths), 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3  # different pictures, different vectors


def test_texts_normalised_and_deterministic(encoder):
    texts = ["make it red", "add a dog", "make it red", ""]
    emb = encoder.encode_texts(texts)
    assert emb.shape == (4, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(emb[0], emb[2])
    assert np.abs(emb[0] - emb[1]).max() > 1e-3


def test_batch_size_invariance(tiny_dir, encoder, image_paths):
    small = _enc(tiny_dir, batch_size=2)
    np.testing.assert_allclose(small.encode_images(image_paths, progress=False),
                               encoder.encode_images(image_paths, progress=False), atol=1e-5)
    texts = [f"caption number {i}" for i in range(7)]
    np.testing.assert_allclose(small.encode_texts(texts), encoder.encode_texts(texts), atol=1e-5)


def test_dataloader_workers_match_in_process(tiny_dir, encoder, image_paths):
    boxes = [None, [10, 10, 20, 20]] * (len(image_paths) // 2)
    workers = _enc(tiny_dir, batch_size=3, num_workers=2)
    np.testing.assert_allclose(workers.encode_images(image_paths, boxes, progress=False),
                               encoder.encode_images(image_paths, boxes, progress=False), atol=1e-5)


def test_crop_boxes_change_the_embedding(encoder, image_paths):
    plain = encoder.encode_images(image_paths[:2], progress=False)
    cropped = encoder.encode_images(image_paths[:2], [None, [5, 5, 30, 30]], progress=False)
    np.testing.assert_allclose(cropped[0], plain[0], atol=1e-6)
    assert np.abs(cropped[1] - plain[1]).max() > 1e-3


def test_unreadable_images_are_reported_by_name(encoder, image_paths, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    missing = str(tmp_path / "missing.jpg")
    paths = [image_paths[0], str(broken), image_paths[1], missing]
    emb, failures = encoder.encode_images_safe(paths, progress=False)
    assert [i for i, _ in failures] == [1, 3]
    assert "UnidentifiedImageError" in failures[0][1] and "FileNotFoundError" in failures[1][1]
    assert not emb[1].any() and not emb[3].any()
    np.testing.assert_allclose(emb[[0, 2]], encoder.encode_images([paths[0], paths[2]], progress=False), atol=1e-6)
    with pytest.raises(ImageReadError, match="broken.png") as err:
        encoder.encode_images(paths, progress=False)
    assert isinstance(err.value, CirflowError) and "missing.jpg" in str(err.value)


def test_key_fields_follow_the_weights(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRFLOW_HASH_CACHE", str(tmp_path / "hashes.json"))
    from safetensors.torch import load_file, save_file

    d = tmp_path / "copy"
    shutil.copytree(tiny_dir, d)
    cfg = EncoderConfig(model=f"local-dir:{d}")
    before = cfg.key_fields()
    assert before["revision"].startswith("sha256:")
    # speed/placement settings are not part of the key
    assert EncoderConfig(model=f"local-dir:{d}", batch_size=7, num_workers=0, device="cpu").key_fields() == before
    assert EncoderConfig(model=f"local-dir:{d}", precision="bf16").key_fields()["precision"] == "bf16"

    weights = d / "open_clip_model.safetensors"
    sd = load_file(str(weights))
    name = next(iter(sd))
    sd[name] = sd[name] + 1.0  # same shapes, so the file size does not change: only content and mtime do
    save_file(sd, str(weights))
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # robust on coarse-mtime filesystems
    after = cfg.key_fields()
    assert after["revision"] != before["revision"]
    assert cfg.key_fields() == after  # cached path gives the same answer


def test_describe(encoder, tiny_dir):
    d = encoder.describe()
    assert d["model"] == f"local-dir:{tiny_dir}" and d["dim"] == 64 and d["device"] == "cpu"
    assert d["revision"] == EncoderConfig(model=f"local-dir:{tiny_dir}").key_fields()["revision"]
    assert d["open_clip"] and d["precision"] == "fp32"


def test_bf16_autocast_close_to_fp32(tiny_dir, encoder, image_paths):
    bf16 = _enc(tiny_dir, precision="bf16")
    a = bf16.encode_images(image_paths[:3], progress=False)
    assert a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    cos = (a * encoder.encode_images(image_paths[:3], progress=False)).sum(1)
    assert (cos > 0.95).all()
