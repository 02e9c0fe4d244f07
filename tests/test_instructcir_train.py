"""InstructCIR with a tiny random open_clip: the reformulation blocks (cross-attention, Xavier, head count), eq. 2
against a direct computation, the EMA update, the λ combiner (eq. 3), save/load like a real checkpoint, and both
training stages stored / cached / keyed, the short training beating the untrained model on held-out triplets."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from cirflow.models.instructcir import (InstructCIRCombiner, InstructCIRModel, ReformulationBlock, build_instructcir,
                                        combine, contrastive, load_trained, loss)
from cirflow.storage import ArtifactStore
from cirflow.storage.keys import canonical, stage_key
from cirflow.tasks.stage import execute, key_params
from cirflow.tasks.training import TrainRuntime, resolve_model_ref
from cirflow.tasks.training.train_instructcir import TrainInstructCIR, instructcir_params, instructcir_train_config
from cirflow.tasks.training.train_instructcir_combiner import (TrainInstructCIRCombiner, combiner_params,
                                                              combiner_train_config)

_spec = importlib.util.spec_from_file_location("collm_shapes", Path(__file__).with_name("test_collm_shapes.py"))
shapes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shapes)


@pytest.fixture(scope="module")
def clip(tiny_models):
    return f"local-dir:{tiny_models['encoder']}"


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"reference_pixels": torch.randn(n, 3, 224, 224, generator=g),
            "target_pixels": torch.randn(n, 3, 224, 224, generator=g),
            "modification": ["make it red", "turn the circle into a star", "blue", "on a black background"][:n]}


def test_reformulation_network_shapes_and_cross_attention(clip):
    model = build_instructcir(clip_model=clip)
    blocks = model.visual.transformer.resblocks
    assert all(isinstance(b, ReformulationBlock) for b in blocks)
    heads = blocks[0].block.attn.num_heads
    assert all(b.cross_attn.num_heads == heads and b.cross_attn.kdim == model.text.width for b in blocks)
    assert all(b.cross_attn.out_proj.bias.abs().sum() == 0 for b in blocks)  # Xavier weights, zero biases
    model.eval()
    b = _batch()
    with torch.no_grad():
        e_r = model.encode_query(b["reference_pixels"], b["modification"])
        e_t = model.encode_target(b["target_pixels"])
        assert e_r.shape == e_t.shape == (4, model.embed_dim)
        assert torch.allclose(e_r.norm(dim=-1), torch.ones(4), atol=1e-5)
        # the text reaches the image tokens (cross-attention), not only the predictor
        z1 = model.reformulate(model.visual, b["reference_pixels"][:1], *model.text(model.tokenize(["red"]))[1:])
        z2 = model.reformulate(model.visual, b["reference_pixels"][:1], *model.text(model.tokenize(["a star"]))[1:])
        assert not torch.allclose(z1, z2)
    plain = build_instructcir(clip_model=clip, cross_attention=False, ema=False)  # table V: plain CLIP
    assert plain.target_visual is None and not any(isinstance(b, ReformulationBlock)
                                                   for b in plain.visual.transformer.resblocks)


def test_contrastive_ema_and_combiner_are_the_formulas(clip, tmp_path):
    g = torch.Generator().manual_seed(0)
    e_r, e_t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    tau = 20.0
    want = 0.0
    for i in range(5):  # eq. 2
        k = [tau * float(torch.cosine_similarity(e_r[i], e_t[j], dim=0)) for j in range(5)]
        want += -(k[i] - math.log(sum(math.exp(x) for x in k))) / 5
    assert abs(float(contrastive(e_r, e_t, tau)) - want) < 1e-4

    model = build_instructcir(clip_model=clip, ema_momentum=0.9)
    online = {n: p.detach().clone() for n, p in model.visual.named_parameters()}
    target = {n: p.detach().clone() for n, p in model.target_visual.named_parameters()}
    assert all(torch.equal(online[n], target[n]) for n in online)  # θ' starts as θ
    assert not any(p.requires_grad for p in model.target_visual.parameters())
    out = loss(model, _batch(), tau=tau)
    out["loss"].backward()
    assert all(p.grad is None for p in model.target_visual.parameters())  # no gradient into the EMA encoder
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.5)
    model.on_step_end(1)
    for n, p in model.target_visual.named_parameters():  # θ' ← m θ' + (1 − m) θ
        assert torch.allclose(p, 0.9 * target[n] + 0.1 * (online[n] + 0.5), atol=1e-6)

    lam = torch.tensor(0.3)
    a, b = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    assert torch.allclose(combine(a, b, lam), 0.3 * a + 0.7 * b)
    from safetensors.torch import save_model

    save_model(model, str(tmp_path / "model.safetensors"))
    model.export_extras(tmp_path)
    comb = InstructCIRCombiner(InstructCIRModel.from_trained(tmp_path), lambda_init=0.25)
    assert [n for n, p in comb.named_parameters() if p.requires_grad] == ["lam"]
    batch = _batch()
    with torch.no_grad():
        e_r2, phi = comb.backbone.query_parts(batch["reference_pixels"], batch["modification"])
        assert torch.allclose(comb.encode_query(batch["reference_pixels"], batch["modification"]),
                              0.25 * e_r2 + 0.75 * phi, atol=1e-6)
        model.eval()
        assert torch.allclose(e_r2, model.encode_query(batch["reference_pixels"], batch["modification"]), atol=1e-5)
        assert torch.allclose(comb.encode_target(batch["target_pixels"]), model.encode_target(batch["target_pixels"]),
                              atol=1e-5)  # the EMA encoder came back from model.safetensors


@torch.no_grad()
def _held_out_loss(model, rows, trip, tau: float) -> float:
    """Eq. 2 over held-out triplets (new drawings, new pairs): lower = queries nearer their own targets."""
    from cirflow.models.collm.vision import image_transform
    from cirflow.models.images import load_image

    model.eval()
    tf = image_transform(shapes.PRE)
    by_id = {r["image_id"]: r for r in rows}
    batch = {"reference_pixels": torch.stack([tf(load_image(by_id[t["ref_id"]]["path"])) for t in trip]),
             "target_pixels": torch.stack([tf(load_image(by_id[t["tgt_id"]]["path"])) for t in trip]),
             "modification": [t["text"] for t in trip]}
    return float(loss(model, batch, tau=tau)["loss"])


@torch.no_grad()
def _triplet_recall(model, rows, trip) -> float:
    from cirflow.models.collm.vision import image_transform
    from cirflow.models.images import load_image

    model.eval()
    tf = image_transform(shapes.PRE)
    by_id = {r["image_id"]: r for r in rows}
    gallery_ids = sorted({t["tgt_id"] for t in trip})
    gallery = model.encode_target(torch.stack([tf(load_image(by_id[i]["path"])) for i in gallery_ids]))
    ref = torch.stack([tf(load_image(by_id[t["ref_id"]]["path"])) for t in trip])
    q = model.encode_query(ref, [t["text"] for t in trip])
    return shapes.recall_at_1(q, gallery, [gallery_ids.index(t["tgt_id"]) for t in trip])


def test_stages_learn_are_cached_and_keyed(clip, tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    rows = shapes.make_images(tmp_path / "img", copies=2)
    coll = shapes.ingest(store, tmp_path / "img", rows)
    texts = shapes.texts_artifact(store, shapes.triplet_rows(rows, 256, seed=1))
    held_rows = shapes.make_images(tmp_path / "held", copies=1, seed=7)
    held = shapes.triplet_rows(held_rows, 24, seed=5)

    train = instructcir_train_config(epochs=2, lr=3e-3, effective_batch_size=32, per_device_batch_size=32,
                                     checkpoint_every=100, progress=False)
    params = instructcir_params({"clip_model": clip}, train, tau=30.0)
    inputs = {"texts": texts, "collection": coll}
    art = execute(TrainInstructCIR, store, inputs, params, TrainRuntime(progress=False))
    assert art.report.status == "computed" and art.read("log").num_rows == 2 * (256 // 32)
    trained = load_trained(resolve_model_ref(store, f"key:{art.key}"))
    torch.manual_seed(0)
    untrained = build_instructcir(clip_model=clip)
    before, after = _held_out_loss(untrained, held_rows, held, 30.0), _held_out_loss(trained, held_rows, held, 30.0)
    assert after < before - 0.2, (before, after)
    assert _triplet_recall(trained, held_rows, held) >= _triplet_recall(untrained, held_rows, held)
    assert execute(TrainInstructCIR, store, inputs, params, TrainRuntime(progress=False)).report.status == "cached"

    def key(p):
        return stage_key(TrainInstructCIR.name, TrainInstructCIR.version, canonical(key_params(p)),
                         {"collection": coll.key, "texts": texts.key})

    variants = {"base": params, "no_ema": instructcir_params({"clip_model": clip, "ema": False}, train, tau=30.0),
                "plain": instructcir_params({"clip_model": clip, "ema": False, "cross_attention": False}, train,
                                            tau=30.0),
                "momentum": instructcir_params({"clip_model": clip, "ema_momentum": 0.99}, train, tau=30.0),
                "tau": instructcir_params({"clip_model": clip}, train, tau=10.0),
                "scale": instructcir_params({"clip_model": clip}, train, tau=30.0, limit=128)}
    keys = {k: key(p) for k, p in variants.items()}
    assert keys["base"] == art.key and len(set(keys.values())) == len(keys)

    cparams = combiner_params(art, combiner_train_config(epochs=1, lr=5e-2, progress=False))
    comb = execute(TrainInstructCIRCombiner, store, {**inputs, "backbone": art}, cparams, TrainRuntime(progress=False))
    assert comb.report.status == "computed"
    lam = comb.read("log").column("lambda").to_pylist()
    assert lam[-1] != pytest.approx(0.5)  # λ moved; the backbone did not
    loaded = load_trained(resolve_model_ref(store, f"key:{comb.key}"))
    assert isinstance(loaded, InstructCIRCombiner)
    for (n, p), (_, q) in zip(loaded.backbone.state_dict().items(), trained.state_dict().items()):
        assert torch.equal(p, q), n
    again = execute(TrainInstructCIRCombiner, store, {**inputs, "backbone": art}, cparams, TrainRuntime(progress=False))
    assert again.report.status == "cached" and again.key == comb.key
