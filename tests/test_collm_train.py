"""CoLLM models and training stages with tiny random models (open_clip ViT + a Qwen2-shaped decoder): shapes and the
LLEM query layout, save/load like a real checkpoint, pre-training stored / cached / keyed, a short training beating
the untrained model on held-out queries, and MTCIR-style fine-tuning on top of the stored pre-training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from cirflow.models.collm import CoLLMModel, build_collm
from cirflow.models.collm.tiny import build_tiny_llm
from cirflow.storage import ArtifactStore
from cirflow.storage.keys import canonical, stage_key
from cirflow.tasks.stage import execute, key_params
from cirflow.tasks.training import TrainRuntime, resolve_model_ref
from cirflow.tasks.training.train_collm import (TrainCoLLM, TrainCoLLMTriplets, collm_params, collm_train_config,
                                                finetune_settings)

_spec = importlib.util.spec_from_file_location("collm_shapes", Path(__file__).with_name("test_collm_shapes.py"))
shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes)


@pytest.fixture(scope="module")
def base(tiny_models, tmp_path_factory):
    return {"vision_model": f"local-dir:{tiny_models['encoder']}",
            "llm": str(build_tiny_llm(tmp_path_factory.mktemp("collm") / "llm")), "lora_rank": 8}


def _train(**kw):
    return collm_train_config(**{"epochs": 3, "lr": 3e-3, "effective_batch_size": 16, "per_device_batch_size": 16,
                                 "checkpoint_every": 100, "progress": False, **kw})


def _pixels(rows):
    from cirflow.models.collm.vision import image_transform
    from cirflow.models.images import load_image

    tf = image_transform(shapes.PRE)
    return torch.stack([tf(load_image(r["path"])) for r in rows])


@torch.no_grad()
def _held_out_loss(model: CoLLMModel, rows) -> float:
    """The text-query (eq. 4) InfoNCE over held-out drawings: lower = captions nearer their own images."""
    from cirflow.models.collm import ContrastiveSettings, contrastive

    model.eval()
    gallery = model.encode_image(_pixels(rows))
    return float(contrastive(model.encode_query(None, [r["caption"] for r in rows]), gallery,
                             ContrastiveSettings(kind="infonce")))


@torch.no_grad()
def _text_recall(model: CoLLMModel, rows) -> float:
    model.eval()
    gallery = model.encode_image(_pixels(rows))
    return shapes.recall_at_1(model.encode_query(None, [r["caption"] for r in rows]), gallery, list(range(len(rows))))


def test_model_shapes_layout_and_checkpoint(base, tmp_path):
    model = build_collm(**base)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"visual", "adapter", "llm", "projection"}
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad and n.startswith(("llm", "visual")))
    x = torch.randn(3, 3, 224, 224)
    h = model.encode_image(x)
    assert h.shape == (3, model.embed_dim)
    ids, at, lengths = model._layout(2, ["make it red", "blue"], image=True)
    text = model.tokenizer.decode(ids[0][:lengths[0]])
    assert text.startswith("Instruct: Find the image that matches the query.\nQuery:\nImage: ")
    assert "\nText: make it red" in text and text.endswith(model.tokenizer.eos_token)
    only_text = model.tokenizer.decode(model._layout(1, ["blue"], image=False)[0][0])
    assert "Image:" not in only_text and "\nText: blue" in only_text  # absent lines are dropped (supp. 7.2)
    only_image = model.tokenizer.decode(model._layout(1, None, image=True)[0][0])
    assert "Text:" not in only_image
    model.eval()
    c = model.encode_query(h, ["a", "b c", "d"])
    assert c.shape == (3, model.embed_dim) and torch.allclose(c.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(c, model.encode_query(h, ["x", "y", "z"]))  # the text matters
    assert not torch.allclose(c, model.encode_query(h.flip(0), ["a", "b c", "d"]))  # the image matters

    from safetensors.torch import save_model

    save_model(model, str(tmp_path / "model.safetensors"))
    model.export_extras(tmp_path)
    assert json.loads((tmp_path / "llm_adapter" / "adapter_config.json").read_text())["r"] == 8
    assert (tmp_path / "vision_adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "llm" / "tokenizer.json").is_file() and (tmp_path / "vision" / "open_clip_config.json").is_file()
    again = CoLLMModel.from_trained(tmp_path)  # no base checkpoint needed
    with torch.no_grad():
        assert torch.allclose(again.encode_query(again.encode_image(x), ["a", "b c", "d"]), c, atol=1e-5)


def test_pretrain_stage_learns_is_cached_and_keyed_then_finetunes(base, tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    rows = shapes.make_images(tmp_path / "img", copies=2)
    coll = shapes.ingest(store, tmp_path / "img", rows)
    held_out = shapes.make_images(tmp_path / "held", copies=1, seed=9)[::3]  # new drawings, 16 scenes

    params = collm_params(base, _train())
    art = execute(TrainCoLLM, store, {"collection": coll, "captions": None}, params, TrainRuntime(progress=False))
    assert art.report.status == "computed"
    log = art.read("log")
    assert {"L_composed", "L_image_query", "L_text_query"} <= set(log.column_names)
    assert log.num_rows == 3 * (len(rows) // 16)
    folder = resolve_model_ref(store, f"key:{art.key}")
    trained = CoLLMModel.from_trained(folder)
    torch.manual_seed(0)
    untrained = build_collm(**base)
    before, after = _held_out_loss(untrained, held_out), _held_out_loss(trained, held_out)
    assert after < before - 0.2, (before, after)
    assert _text_recall(trained, held_out) >= _text_recall(untrained, held_out)

    again = execute(TrainCoLLM, store, {"collection": coll, "captions": None}, params, TrainRuntime(progress=False))
    assert again.report.status == "cached" and again.key == art.key

    def key(p):
        return stage_key(TrainCoLLM.name, TrainCoLLM.version, canonical(key_params(p)), {"collection": coll.key})

    variants = {"base": params, "alpha": collm_params(base, _train(), loss={"alpha": 0.7}),
                "random": collm_params(base, _train(), loss={"neighbour": "random"}),
                "ratio": collm_params(base, _train(), loss={"text_ratio": 0.5}),
                "rank": collm_params({**base, "lora_rank": 4}, _train()),
                "lr": collm_params(base, _train(lr=1e-3))}
    keys = {k: key(p) for k, p in variants.items()}
    assert keys["base"] == art.key and len(set(keys.values())) == len(keys)

    trip = shapes.triplet_rows(rows, 48, seed=1)
    texts = shapes.texts_artifact(store, trip)
    ft_params = collm_params(finetune_settings(base), _train(epochs=1), triplets=True)
    ft = execute(TrainCoLLMTriplets, store, {"texts": texts, "collection": coll, "init": art}, ft_params,
                 TrainRuntime(progress=False))
    assert ft.report.status == "computed" and "L_composed" in ft.read("log").column_names
    tuned = CoLLMModel.from_trained(resolve_model_ref(store, f"key:{ft.key}"))
    assert tuned.settings.lora_rank == 16 and tuned.settings.init == str(folder)
    fresh = build_collm(**{**finetune_settings(base), "init": str(folder)})
    assert {n.split(".")[0] for n, p in fresh.named_parameters() if p.requires_grad} == {"llm"}  # supp. 9.2
    fresh.eval()
    x = _pixels(held_out[:4])
    with torch.no_grad():  # merged pre-trained LoRA + fresh LoRA (B = 0) computes what the pre-trained model did
        assert torch.allclose(fresh.encode_query(fresh.encode_image(x), ["make it red"] * 4),
                              trained.encode_query(trained.encode_image(x), ["make it red"] * 4), atol=1e-4)
    cached = execute(TrainCoLLMTriplets, store, {"texts": texts, "collection": coll, "init": art}, ft_params,
                     TrainRuntime(progress=False))
    assert cached.report.status == "cached" and cached.key == ft.key
