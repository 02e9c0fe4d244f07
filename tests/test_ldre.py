"""LDRE's weighted divergent-caption ensemble (metrics-and-methods.md B.2) against a direct numpy transcription."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cirflow.retrieval.ldre import ldre_mean_query, ldre_query, ldre_weights


def _norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _data(seed=0, n=6, nq=7, ng=40, d=16):
    rng = np.random.default_rng(seed)
    f_o = _norm(rng.normal(size=(n, nq, d))).astype(np.float32)
    # edits are perturbed captions, as LLM edits are close to the caption they edit
    f_t = _norm(f_o + 0.7 * rng.normal(size=(n, nq, d))).astype(np.float32)
    g = _norm(rng.normal(size=(ng, d))).astype(np.float32)
    return f_t, f_o, g


def _reference(f_t, f_o, g, k, T, per_query):
    """B.2 line by line, full matrices, float64."""
    f_t, f_o, g = (x.astype(np.float64) for x in (f_t, f_o, g))
    n = f_t.shape[0]
    drops = []
    for i in range(n):
        d_i = f_t[i] @ g.T - f_o[i] @ g.T                       # [nQ, nG]
        neg = np.maximum(0.0, -d_i)
        topk = -np.sort(-neg, axis=1)[:, :k]                    # top-k per query
        drops.append(topk.sum(axis=1))                          # [nQ]
    drop = np.stack(drops)                                      # [n, nQ]
    if not per_query:
        drop = drop.sum(axis=1)                                 # sum over queries → [n]
        z = (drop / drop.max()) / T
        e = np.exp(z - z.max())
        return e / e.sum()
    out = []
    for q in range(drop.shape[1]):
        z = (drop[:, q] / drop[:, q].max()) / T
        e = np.exp(z - z.max())
        out.append(e / e.sum())
    return np.stack(out)                                        # [nQ, n]


@pytest.mark.parametrize("per_query", [False, True])
@pytest.mark.parametrize("k, T", [(5, 0.04), (1, 1.0), (50, 0.01)])
def test_weights_match_transcription(per_query, k, T):
    f_t, f_o, g = _data()
    w = ldre_weights(f_t, f_o, g, k=k, temperature=T, per_query=per_query)
    want = _reference(f_t, f_o, g, min(k, g.shape[0]), T, per_query)
    assert w.shape == ((7, 6) if per_query else (6,))
    np.testing.assert_allclose(w, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, atol=1e-9)
    # not a trivial uniform answer: the slots really get different weights
    assert np.ptp(w, axis=-1).min() > 1e-3


@pytest.mark.parametrize("per_query", [False, True])
def test_chunked_equals_unchunked(per_query):
    f_t, f_o, g = _data(seed=1, nq=23, ng=300)
    whole = ldre_weights(f_t, f_o, g, per_query=per_query, chunk=10_000)
    for chunk in (1, 4, 7):
        # equal up to float32 BLAS summation order (a block's shape picks the kernel)
        np.testing.assert_allclose(ldre_weights(f_t, f_o, g, per_query=per_query, chunk=chunk), whole, rtol=2e-5, atol=1e-8)


def test_torch_inputs_and_shapes():
    f_t, f_o, g = _data(seed=2)
    w_np = ldre_weights(f_t, f_o, g)
    w_t = ldre_weights(torch.from_numpy(f_t), torch.from_numpy(f_o), torch.from_numpy(g))
    assert isinstance(w_t, torch.Tensor)
    np.testing.assert_allclose(w_t.numpy(), w_np, rtol=1e-6)
    with pytest.raises(ValueError):
        ldre_weights(f_t, f_o[:, :3], g)
    with pytest.raises(ValueError):
        ldre_weights(f_t, f_o, g[:, :5])


def test_query_is_weighted_sum_not_renormalised():
    f_t, f_o, g = _data(seed=3)
    w = ldre_weights(f_t, f_o, g)
    q = ldre_query(f_t, w)
    assert q.shape == (7, 16) and q.dtype == np.float32
    np.testing.assert_allclose(q, np.einsum("i,iqd->qd", w, f_t.astype(np.float64)), rtol=1e-5, atol=1e-6)
    assert np.all(np.linalg.norm(q, axis=1) < 1.0 - 1e-3)  # a convex mix of distinct unit vectors: shorter than 1
    wq = ldre_weights(f_t, f_o, g, per_query=True)
    qq = ldre_query(f_t, wq)
    for j in range(7):
        np.testing.assert_allclose(qq[j], (wq[j][:, None] * f_t[:, j]).sum(0), rtol=1e-5, atol=1e-6)
    # one-hot weights pick one slot exactly
    onehot = np.zeros(6)
    onehot[2] = 1
    np.testing.assert_allclose(ldre_query(f_t, onehot), f_t[2], atol=1e-7)
    with pytest.raises(ValueError):
        ldre_query(f_t, np.ones(5) / 5)


def test_mean_variant():
    f_t, _, _ = _data(seed=4)
    m = ldre_mean_query(f_t)
    np.testing.assert_allclose(m, _norm(f_t.mean(0)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ldre_mean_query(f_t, normalize=False), f_t.mean(0), rtol=1e-6)


def test_no_drop_gives_uniform_weights():
    # edits identical to the captions: every d_i is 0, the released code would divide 0 by 0
    f_t, _, g = _data(seed=5)
    w = ldre_weights(f_t, f_t, g)
    np.testing.assert_allclose(w, np.full(6, 1 / 6))
    assert np.isfinite(ldre_weights(f_t, f_t, g, per_query=True)).all()


def test_blocks_bound_memory():
    """d_i is computed one slot and one block of queries at a time: the largest single allocation is one
    [chunk, nG] block, never [nQ, nG] (let alone [n, nQ, nG]), and the result does not depend on the block."""
    from torch.profiler import ProfilerActivity, profile

    rng = np.random.default_rng(6)
    n, nq, ng, d = 3, 40, 20_000, 8
    f_o = _norm(rng.normal(size=(n, nq, d))).astype(np.float32)
    f_t = _norm(f_o + rng.normal(size=(n, nq, d))).astype(np.float32)
    g = _norm(rng.normal(size=(ng, d))).astype(np.float32)

    def peak_alloc(chunk):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            w = ldre_weights(f_t, f_o, g, chunk=chunk)
        return w, max(e.cpu_memory_usage for e in prof.events())

    w5, peak5 = peak_alloc(5)
    w40, peak40 = peak_alloc(40)
    assert peak5 <= 5 * ng * 4 < peak40  # float32 block of 5 queries; all 40 at once is 8x larger
    np.testing.assert_allclose(w5, _reference(f_t, f_o, g, 5, 0.04, False), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(w5, w40, rtol=2e-5, atol=1e-8)
