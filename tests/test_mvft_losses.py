"""MVFT-JI token-level similarity and losses (models/mvft/losses.py) against hand computations with loops, and the
in-batch negatives under torch.distributed (2 gloo processes at half batch = 1 process at full batch)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from cirflow.models.mvft import MVFTLoss, MVFTModel, build_tiny_mvft, info_nce, loss_fn, token_similarity

TEXTS = ["make the red circle blue", "a green square", "turn the star into a triangle", "the same but pink",
         "a yellow star on a black background", "change the square to a circle"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_mvft(tmp_path_factory.mktemp("mvft-loss") / "tiny")


def _batch(model, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.image_processor.size["height"]
    enc = [model.tokenize(TEXTS[(i + s) % len(TEXTS)] for i in range(n)) for s in (0, 2, 4)]
    return {"pixel_values": torch.randn(n, 3, size, size, generator=g),
            "modification_ids": enc[0]["input_ids"], "modification_mask": enc[0]["attention_mask"],
            "target_ids": enc[1]["input_ids"], "target_mask": enc[1]["attention_mask"],
            "caption_ids": enc[2]["input_ids"], "caption_mask": enc[2]["attention_mask"],
            "index": torch.arange(n)}


def _s_loops(a, b):
    """Eqs. 11-12 literally: mean over A's tokens of the max cosine over B's tokens."""
    out = [[0.0] * len(b) for _ in a]
    for i, ai in enumerate(a.tolist()):
        for j, bj in enumerate(b.tolist()):
            total = 0.0
            for x in ai:
                best = -math.inf
                for y in bj:
                    cos = sum(u * v for u, v in zip(x, y)) / (math.sqrt(sum(u * u for u in x)) *
                                                               math.sqrt(sum(v * v for v in y)))
                    best = max(best, cos)
                total += best
            out[i][j] = total / len(ai)
    return out


def _info_nce_loops(s, tau):
    """One-directional InfoNCE: anchor i (row) against every candidate j (column), positive j = i."""
    return sum(-s[i][i] / tau + math.log(sum(math.exp(v / tau) for v in s[i])) for i in range(len(s))) / len(s)


def test_token_similarity_equals_loops():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(5, 3, 8, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(4, 6, 8, generator=g), dim=-1)
    torch.testing.assert_close(token_similarity(a, b), torch.tensor(_s_loops(a, b)))
    assert not torch.allclose(token_similarity(a, a[:, :2]), token_similarity(a[:, :2], a).T)  # asymmetric


def test_losses_equal_hand_computation(tiny):
    model = MVFTModel.from_pretrained(tiny)
    batch = _batch(model)
    tau = 0.05
    with torch.no_grad():
        f = model(**batch)
        out = MVFTLoss(temperature=tau)(model, batch)
    l_t = _info_nce_loops(_s_loops(f["composed"], f["target"]), tau)
    l_c = _info_nce_loops(_s_loops(f["caption"], f["image"]), tau)
    assert out["L_t"].item() == pytest.approx(l_t, rel=1e-5)
    assert out["L_c"].item() == pytest.approx(l_c, rel=1e-5)
    assert out["loss"].item() == pytest.approx(l_t + l_c, rel=1e-5)
    # the direction matters: the transposed (image -> caption) softmax is a different number
    s = token_similarity(f["caption"], f["image"])
    assert info_nce(s.T, tau).item() != pytest.approx(out["L_c"].item(), rel=1e-3)
    # the softmaxes are far from uniform (scores differ by > tau within rows): the checks above are not vacuous
    assert ((s.amax(1) - s.amin(1)) / tau).min() > 1


def test_ablation_switches(tiny):
    model = MVFTModel.from_pretrained(tiny)
    batch = _batch(model)
    with torch.no_grad():
        full = loss_fn(model, batch)
        no_lc = MVFTLoss(use_Lc=False)(model, batch)
        no_lt = MVFTLoss(use_Lt=False)(model, batch)
    assert no_lc["L_c"].item() == 0 and no_lc["loss"].item() == pytest.approx(full["L_t"].item(), rel=1e-6)
    assert no_lt["L_t"].item() == 0 and no_lt["loss"].item() == pytest.approx(full["L_c"].item(), rel=1e-6)
    assert MVFTLoss(use_Lt=False).needs() == ("caption", "image")
    assert MVFTLoss(use_Lt=False).key_fields() != loss_fn.key_fields()
    with pytest.raises(ValueError, match="nothing to train"):
        MVFTLoss(use_Lt=False, use_Lc=False)(model, batch)


@pytest.mark.parametrize("switches", [{}, {"use_Lc": False}, {"use_Lt": False}])
def test_every_trainable_parameter_gets_a_gradient(tiny, switches):
    """No unused trainable parameter in any table 4 variant, so DDP needs no find_unused_parameters."""
    model = MVFTModel.from_pretrained(tiny).train()
    MVFTLoss(**switches)(model, _batch(model))["loss"].backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


_WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from safetensors.torch import save_file
    sys.path.insert(0, sys.argv[5])
    from test_mvft_losses import _batch
    from cirflow.models.mvft import MVFTModel, loss_fn
    torch.set_num_threads(1)
    rank, world, model_dir, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method="file://" + out + ".store", rank=rank, world_size=world)
    model = MVFTModel.from_pretrained(model_dir).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    full = _batch(model)
    n = len(full["index"]) // world
    half = {k: v[rank * n:(rank + 1) * n] for k, v in full.items()}
    res = loss_fn(ddp, half)
    res["loss"].backward()
    if rank == 0:
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        save_file(grads | {"__loss": res["loss"].detach().reshape(1)}, out)
    dist.destroy_process_group()
    sys.stdout.flush()
    import os
    os._exit(0)  # skip the teardown where gloo's / Arrow's threads can abort a finished process (arrow#34314)
""")


@pytest.mark.slow
def test_two_processes_at_half_batch_equal_one_process(tiny, tmp_path):
    """Under DDP the features of every rank are gathered, so the in-batch negatives (and hence the loss and the
    averaged gradients) are those of the global batch."""
    from safetensors.torch import load_file

    model = MVFTModel.from_pretrained(tiny).train()
    res = loss_fn(model, _batch(model))
    res["loss"].backward()
    want = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    out = str(tmp_path / "grads.safetensors")
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    here = os.path.dirname(__file__)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(tiny), out, here], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    got = load_file(out)
    assert got.pop("__loss").item() == pytest.approx(res["loss"].item(), rel=1e-5)
    assert set(got) == set(want) and len(want) > 10
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=k)
