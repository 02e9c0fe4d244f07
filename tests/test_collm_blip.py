"""CoLLM with a BLIP ViT as f (collm.txt supp. 9.1, table 14: "BLIP-L ViT frozen"): tiny random BLIP checkpoints
(BlipVisionModel and BlipForImageTextRetrieval) saved with save_pretrained and loaded like real ones; shapes, BLIP's
ITC image feature, the frozen tower, save / load of a trained folder, LoRA on the BLIP blocks, and a short
pre-training stage on it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from cirflow.models.collm import CoLLMModel, build_collm, vision
from cirflow.models.collm.tiny import build_tiny_llm
from cirflow.schemas.errors import ConfigError
from cirflow.storage import ArtifactStore
from cirflow.tasks.stage import execute
from cirflow.tasks.training import TrainRuntime, resolve_model_ref
from cirflow.tasks.training.train_collm import TrainCoLLM, base_identity, collm_params, collm_train_config

_spec = importlib.util.spec_from_file_location("collm_shapes", Path(__file__).with_name("test_collm_shapes.py"))
shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes)

SIZE = 64  # the tiny ViT's image size: 16 patches of 16 px
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": SIZE, "patch_size": 16}


def build_tiny_blip(out: Path, retrieval: bool = False, seed: int = 0) -> Path:
    """A random BLIP checkpoint folder: a BlipVisionModel, or (retrieval) a whole BlipForImageTextRetrieval with a
    preprocessor_config.json, as the hub's Salesforce/blip-itm-large-coco is laid out."""
    from transformers import (
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipVisionConfig,
        BlipVisionModel,
    )

    if (out / "config.json").is_file():
        return out
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if retrieval:
            cfg = BlipConfig(vision_config=VISION, image_text_hidden_size=16,
                             text_config={"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64,
                                          "num_hidden_layers": 1, "num_attention_heads": 2, "encoder_hidden_size": 32})
            model = BlipForImageTextRetrieval(cfg)
            BlipImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5, 0.5, 0.5],
                               image_std=[0.5, 0.5, 0.5]).save_pretrained(out)
        else:
            model = BlipVisionModel(BlipVisionConfig(**VISION))
    model.eval().save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("collm-blip")
    return {"vision": build_tiny_blip(root / "blip-vision"), "itm": build_tiny_blip(root / "blip-itm", retrieval=True),
            "llm": str(build_tiny_llm(root / "llm"))}


def _settings(parts, which="itm", **kw):
    return {"vision_tower": "blip", "vision_model": str(parts[which]), "llm": parts["llm"], "lora_rank": 8,
            "lora_vision": False, **kw}


def test_blip_tower_is_the_itc_feature_and_frozen(parts, tmp_path):
    from transformers import BlipForImageTextRetrieval

    model = build_collm(**_settings(parts))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"adapter", "llm", "projection"}  # supp. 9.1: the BLIP ViT is frozen
    assert model.embed_dim == 16  # image_text_hidden_size: BLIP's ITC space
    x = torch.randn(3, 3, SIZE, SIZE)
    full = BlipForImageTextRetrieval.from_pretrained(parts["itm"]).eval()
    with torch.no_grad():
        want = full.vision_proj(full.vision_model(pixel_values=x).last_hidden_state[:, 0])
        model.eval()
        got = model.encode_image(x)
        c = model.encode_query(got, ["make it red", "blue", "a dog"])
    torch.testing.assert_close(got, want)
    assert c.shape == (3, 16)

    bare = build_collm(**_settings(parts, "vision"))  # a BlipVisionModel: the CLS token itself
    assert bare.embed_dim == 32 and bare.encode_image(x).shape == (3, 32)

    pre = vision.tower_preprocess("blip", str(parts["itm"]))
    assert pre == {"size": SIZE, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                   "resize_mode": "squash"}  # the checkpoint's own processor, resized without a crop

    from safetensors.torch import save_model

    save_model(model, str(tmp_path / "model.safetensors"))
    model.export_extras(tmp_path)
    assert not (tmp_path / "vision_adapter").exists() and (tmp_path / "vision" / vision.BLIP_CONFIG).is_file()
    assert vision.preprocess_config(f"local-dir:{tmp_path / 'vision'}") == pre  # what the embed stages read
    again = CoLLMModel.from_trained(tmp_path)  # no BLIP checkpoint needed
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(x), got)
        torch.testing.assert_close(again.encode_query(again.encode_image(x), ["make it red", "blue", "a dog"]), c)


def test_blip_lora_targets_every_block(parts):
    model = build_collm(**_settings(parts, lora_vision=True))  # table 14's "ViT LoRA" BLIP row
    lora = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("visual")]
    for target in vision.BLIP_LORA_TARGETS:
        assert any(f".{target}.lora_A" in n for n in lora), target
    assert all("lora_" in n for n in lora)


def test_not_a_blip_folder_is_one_config_line(parts, tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        build_collm(**_settings(parts, vision_model=str(tmp_path)))
    with pytest.raises(ConfigError, match="BlipForImageTextRetrieval, BlipModel"):
        build_collm(**_settings(parts, vision_model=str(Path(parts["llm"]))))


def test_pretraining_on_a_blip_tower_keeps_it_frozen(parts, tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    rows = shapes.make_images(tmp_path / "img", copies=1)
    coll = shapes.ingest(store, tmp_path / "img", rows)
    settings = _settings(parts)
    train = collm_train_config(epochs=1, lr=3e-3, effective_batch_size=16, per_device_batch_size=16,
                               checkpoint_every=100, progress=False)
    params = collm_params(settings, train)
    assert params.dataset.kwargs["preprocess"]["size"] == SIZE
    ident = base_identity(settings)
    assert ident["vision"] == "blip-itm" and ident["vision_revision"].startswith("sha256:")

    art = execute(TrainCoLLM, store, {"collection": coll, "captions": None}, params, TrainRuntime(progress=False))
    assert art.report.status == "computed" and art.read("log").num_rows == len(rows) // 16
    folder = resolve_model_ref(store, f"key:{art.key}")
    trained = CoLLMModel.from_trained(folder)
    base = build_collm(**settings)
    for (n, a), (_, b) in zip(trained.visual.state_dict().items(), base.visual.state_dict().items()):
        torch.testing.assert_close(a, b, msg=f"the frozen BLIP ViT changed: {n}")
    changed = [n for (n, a), (_, b) in zip(trained.adapter.state_dict().items(), base.adapter.state_dict().items())
               if not torch.equal(a, b)]
    assert changed  # g was trained
    assert json.loads((folder / "collm_config.json").read_text())["vision_tower"] == "blip"
