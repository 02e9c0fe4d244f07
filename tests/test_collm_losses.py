"""CoLLM's synthesis and losses against direct computations on fixed batches: Slerp (eq. 2), the in-batch
neighbour (eq. 1, table 6c), template texts (supp. 7.1, fig. 7 ratio), HN-NCE and InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch

from cirflow.models.collm import ContrastiveSettings, contrastive, hn_nce, neighbours, slerp, synthesize_texts
from cirflow.models.collm.synthesis import augment, fill_template, paper_data, templates


def test_slerp_is_eq2():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        out = slerp(a, b, alpha)
        for i in range(5):
            u, v = a[i] / a[i].norm(), b[i] / b[i].norm()
            th = math.acos(float(u @ v))
            want = math.sin(alpha * th) / math.sin(th) * u + math.sin((1 - alpha) * th) / math.sin(th) * v
            assert torch.allclose(out[i], want, atol=1e-5)
        assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)  # stays on the sphere
    assert torch.allclose(slerp(a, b, 1.0), a / a.norm(dim=-1, keepdim=True), atol=1e-5)  # α = 1: h'_i
    same = slerp(a, a.clone(), 0.5)  # θ = 0: the linear limit, no NaN
    assert torch.isfinite(same).all() and torch.allclose(same, a / a.norm(dim=-1, keepdim=True), atol=1e-4)


def test_neighbours_nearest_and_random():
    h = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.95], [-1.0, 0.0]])
    assert neighbours(h, "nearest").tolist() == [1, 0, 3, 2, 2]  # argmax cosine over j ≠ i (row 4: [0,1] beats ...)
    u = torch.nn.functional.normalize(h, dim=-1)
    sim = u @ u.T - 10 * torch.eye(5)
    assert neighbours(h, "nearest").tolist() == sim.argmax(1).tolist()
    torch.manual_seed(0)
    draws = torch.stack([neighbours(h, "random") for _ in range(400)])
    assert not (draws == torch.arange(5)).any()  # never itself
    assert all(set(draws[:, i].tolist()) == set(range(5)) - {i} for i in range(5))  # every other sample
    with pytest.raises(ValueError):
        neighbours(h[:1])


def test_template_texts_and_ratio():
    data = paper_data()
    assert len(templates()) == 15 and data["source"]["templates"].startswith("supplementary 7.1")
    assert data["instruction"] == "Find the image that matches the query."
    assert fill_template(templates()[12], "a dog.", "a cat") == "remove a cat, add a dog"
    caps = [f"caption {i}" for i in range(200)]
    j = torch.roll(torch.arange(200), 1)
    assert synthesize_texts(caps, j, ratio=0.0) == caps  # supp. 7.3: no synthesis → w*_i = w_i
    torch.manual_seed(1)
    full = synthesize_texts(caps, j, ratio=1.0)
    filled = {fill_template(t, caps[i], caps[(i - 1) % 200]) for i in range(200) for t in templates()}
    assert all(t in filled for t in full)
    torch.manual_seed(2)
    part = synthesize_texts(caps, j, ratio=0.75)
    share = sum(t != c for t, c in zip(part, caps)) / 200
    assert 0.65 < share < 0.85


def _hn_nce_loop(s, tau, alpha, beta):
    b = s.shape[0]
    total = 0.0
    for m in (s, s.T):
        m = m / tau
        for i in range(b):
            others = [j for j in range(b) if j != i]
            z = sum(math.exp(beta * float(m[i, k])) for k in others)
            den = alpha * math.exp(float(m[i, i])) + sum(
                (b - 1) * math.exp(beta * float(m[i, j])) / z * math.exp(float(m[i, j])) for j in others)
            total += (math.log(den) - float(m[i, i])) / b
    return total


def test_hn_nce_and_infonce_are_the_formulas():
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    s = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T
    for alpha, beta in ((1.0, 0.5), (0.5, 1.0), (1.0, 0.0)):
        got = hn_nce(s, 0.1, alpha, beta)
        assert abs(float(got) - _hn_nce_loop(s, 0.1, alpha, beta)) < 1e-4
    ce = torch.nn.functional.cross_entropy
    lab = torch.arange(6)
    sym = ce(s / 0.1, lab) + ce(s.T / 0.1, lab)
    assert torch.allclose(hn_nce(s, 0.1, 1.0, 0.0), sym, atol=1e-5)  # α = 1, β = 0: symmetric InfoNCE
    assert torch.allclose(contrastive(q, t, ContrastiveSettings(kind="hnnce", temperature=0.1, hn_beta=0.0)), sym,
                          atol=1e-5)
    one_way = contrastive(q, t, ContrastiveSettings(kind="infonce", temperature=0.1))
    assert torch.allclose(one_way, ce(s / 0.1, lab), atol=1e-5)


def test_augment_keeps_shape_and_changes_pixels():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    y = augment(x)
    assert y.shape == x.shape and not torch.equal(x, y)
