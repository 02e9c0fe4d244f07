"""The MVFT-JI Q-Former model (models/mvft): a tiny random BLIP-2 saved and loaded like a real checkpoint, its three
encoders checked against transformers' own BLIP-2 retrieval model, persistence, frozen parts, training data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from cirflow.models.mvft import MVFTDataset, MVFTModel, build_tiny_mvft, collate, loss_fn, weights_sha256
from cirflow.models.mvft.encode import encode_composed, encode_images, encode_texts, flatten, unflatten
from cirflow.schemas.errors import CirflowError

TEXTS = ["make the red circle blue", "a green square on a white background", "turn the star into a triangle"]
COLOURS = [(220, 30, 30), (30, 170, 60), (40, 70, 220), (240, 210, 30)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_mvft(tmp_path_factory.mktemp("mvft") / "tiny")


@pytest.fixture(scope="module")
def model(tiny):
    return MVFTModel.from_pretrained(tiny)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("mvft-images")
    paths = []
    for i, c in enumerate(COLOURS):
        img = Image.new("RGB", (40, 40), (245, 245, 245))
        img.paste(c, (5 + 3 * i, 5, 30, 30 - 2 * i))
        paths.append(str(root / f"im{i}.png"))
        img.save(paths[-1])
    return paths


def _inputs(model, images, n=3):
    px = model.preprocess([Image.open(p).convert("RGB") for p in images[:n]])
    enc = model.tokenize(TEXTS[:n])
    return px, enc["input_ids"], enc["attention_mask"]


def test_folder_layout_and_shapes(tiny, model, images):
    names = {p.name for p in tiny.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "mvft_config.json"} <= names
    assert json.loads((tiny / "config.json").read_text())["qformer_config"]["use_qformer_text_input"] is True
    px, ids, mask = _inputs(model, images)
    assert model.tokenizer.convert_ids_to_tokens(ids[0, :3].tolist()) == ["[CLS]", "make", "the"]
    with torch.no_grad():
        feats = [model.encode_image(px), model.encode_text(ids, mask), model.encode_composed(px, ids, mask)]
    for f in feats:
        assert f.shape == (3, model.num_tokens, model.dim) == (3, 4, 16)
        torch.testing.assert_close(f.norm(dim=-1), torch.ones(3, 4))
    assert model.encode_text(ids, mask, tokens="cls").shape == (3, 1, 16)
    assert not torch.allclose(feats[2], feats[0]) and not torch.allclose(feats[2], feats[1])


def test_encoders_match_transformers_blip2(model, images):
    """encode_image / encode_text(cls) are BLIP-2's ITC features; encode_composed is the ITM fusion's query
    outputs (eq. 8), all as transformers' Blip2ForImageTextRetrieval computes them."""
    px, ids, mask = _inputs(model, images)
    blip = model.blip
    with torch.no_grad():
        itc = blip(pixel_values=px, input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
        torch.testing.assert_close(model.encode_image(px), itc.image_embeds)
        torch.testing.assert_close(model.encode_text(ids, mask, tokens="cls")[:, 0], itc.text_embeds)
        itm = blip(pixel_values=px, input_ids=ids, attention_mask=mask, use_image_text_matching_head=True)
        h = itm.text_model_output.last_hidden_state[:, : model.num_tokens]
        want = torch.nn.functional.normalize(blip.vision_projection(h), dim=-1)
        torch.testing.assert_close(model.encode_composed(px, ids, mask), want)


def test_text_encoding_sees_no_image_weights(tiny, images):
    """Eq. 9: text + query tokens only -- the cross-attention weights must not matter; they do for images."""
    m = MVFTModel.from_pretrained(tiny)
    px, ids, mask = _inputs(m, images)
    with torch.no_grad():
        t0, i0 = m.encode_text(ids, mask), m.encode_image(px)
        for layer in m.blip.qformer.encoder.layer:
            layer.crossattention.attention.value.weight.add_(0.5)
        t1, i1 = m.encode_text(ids, mask), m.encode_image(px)
    torch.testing.assert_close(t0, t1, rtol=0, atol=0)
    assert not torch.allclose(i0, i1)
    assert all(layer.has_cross_attention for layer in m.blip.qformer.encoder.layer)  # switch restored


def test_save_load_round_trip_and_weight_identity(tiny, model, images, tmp_path):
    px, ids, mask = _inputs(model, images)
    a = model.save_pretrained(tmp_path / "a")
    b = MVFTModel.from_pretrained(a).save_pretrained(tmp_path / "b")
    assert weights_sha256(a) == weights_sha256(b) == weights_sha256(tiny)  # deterministic bytes
    m2 = MVFTModel.from_pretrained(b)
    with torch.no_grad():
        torch.testing.assert_close(m2.encode_composed(px, ids, mask), model.encode_composed(px, ids, mask),
                                   rtol=0, atol=0)
        m2.blip.query_tokens.add_(1e-3)
    assert weights_sha256(m2.save_pretrained(tmp_path / "c")) != weights_sha256(a)
    assert m2.settings == model.settings


def test_only_the_qformer_side_trains(tiny, images, tmp_path):
    m = MVFTModel.from_pretrained(tiny).train()
    assert not m.blip.vision_model.training  # frozen ViT stays in eval mode
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith(("blip.vision_model.", "blip.itm_head.")) for n in trainable)
    assert {"blip.query_tokens", "blip.text_projection.weight", "blip.vision_projection.weight"} <= trainable
    ds = _dataset(m, images, tmp_path)
    out = loss_fn(m, collate([ds[i] for i in range(len(ds))]))
    out["loss"].backward()
    assert all(p.grad is None for p in m.blip.vision_model.parameters())
    assert m.blip.query_tokens.grad.abs().sum() > 0
    assert m.blip.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert len(m.trainable_parameters()) == len(trainable)


def _dataset(m, images, tmp_path):
    # rows out of order; i2 has no modification, i1 no caption: only i0 and i3 qualify (both texts and a caption)
    trip = pa.table({"reference_id": ["i3", "i2", "i1", "i0"], "reference_path": images[::-1],
                     "modification": ["turn it red", None, "add a star", "make it blue"],
                     "target_text": ["a red square", "x", "a star", "a blue square"]})
    caps = pa.table({"image_id": ["i0", "i2", "i3"], "path": [images[0], images[2], images[3]],
                     "caption": ["a red square", "a blue square", "a yellow square"]})
    return MVFTDataset.from_tables(trip, caps, m.tokenizer, m.image_processor, m.settings.max_text_length)


def test_dataset_and_collate(model, images, tmp_path):
    ds = _dataset(model, images, tmp_path)
    assert [r["image_id"] for r in ds.rows] == ["i0", "i3"]  # image-id order
    assert ds.stats["dropped_no_caption"] == 1
    assert ds.rows[1]["caption"] == "a yellow square" and ds.rows[0]["target_text"] == "a blue square"
    batch = collate([ds[i] for i in range(len(ds))])
    L = model.settings.max_text_length
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    for f in ("modification", "target", "caption"):
        assert batch[f"{f}_ids"].shape == batch[f"{f}_mask"].shape == (2, L)
    assert batch["index"].tolist() == [0, 1]
    again = collate([ds[i] for i in range(len(ds))])
    assert all(torch.equal(batch[k], again[k]) for k in batch)  # deterministic
    want = model.tokenize(["turn it red"])["input_ids"][0]
    assert torch.equal(batch["modification_ids"][1], want)
    px = model.preprocess([Image.open(images[3]).convert("RGB")])
    assert torch.equal(batch["pixel_values"][1], px[0])
    with torch.no_grad():
        feats = model(**batch)
    assert set(feats) == {"composed", "target", "caption", "image"}
    with pytest.raises(CirflowError, match="lacks columns"):
        MVFTDataset.from_tables(pa.table({"x": [1]}), pa.table({"image_id": ["a"], "caption": ["c"]}),
                                model.tokenizer, model.image_processor, 8)


def test_batched_numpy_encoders(model, images):
    f_img = encode_images(model, images, batch_size=3)
    f_txt = encode_texts(model, TEXTS, batch_size=2)
    f_cls = encode_texts(model, TEXTS, tokens="cls")
    f_cq = encode_composed(model, images[:3], TEXTS, batch_size=2)
    assert f_img.shape == (4, 4, 16) and f_txt.shape == f_cq.shape == (3, 4, 16) and f_cls.shape == (3, 1, 16)
    px, ids, mask = _inputs(model, images)
    with torch.no_grad():
        np.testing.assert_allclose(f_cq, model.encode_composed(px, ids, mask).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(unflatten(flatten(f_img), 4), f_img)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(CirflowError, match="config.json"):
        MVFTModel.from_pretrained(tmp_path)
