"""Token-level top-K and joint inference vs a naive einsum + full sort (retrieval/token_topk.py, retrieval/joint.py).

Features are small dyadic numbers, so every score is exact in float32 whatever the summation order: the chunked
path and the naive one must agree bit for bit, and ties (many here) must follow the documented rule.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

import cirflow.retrieval.token_topk as tt
from cirflow.retrieval.joint import average_features, fuse, joint_scores, joint_topk, mode_terms, rank_joint
from cirflow.retrieval.rules import rank_from_scores, ranking_info
from cirflow.retrieval.token_topk import rank_token_queries, token_score_matrix, token_topk
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.tables import QUERIES


def _dyadic(rng, *shape):
    return (rng.integers(-2, 3, size=shape) / 4).astype(np.float32)  # {-0.5, ..., 0.5}: exact products and sums


def _naive_scores(q, g):
    return torch.einsum("aid,bjd->abij", torch.from_numpy(q), torch.from_numpy(g)).amax(dim=3).mean(dim=2).numpy()


def _naive_topk(s, k, exclude=None):
    s = s.astype(np.float64).copy()
    if exclude is not None:
        for r, e in enumerate(exclude):
            if e >= 0:
                s[r, e] = -np.inf
    idx = np.stack([np.lexsort((np.arange(s.shape[1]), -row))[:k] for row in s])  # score desc, index asc
    return np.take_along_axis(s, idx, 1).astype(np.float32), idx


@pytest.fixture
def small_blocks(monkeypatch):
    """Force many query blocks and gallery chunks on small data."""
    monkeypatch.setattr(tt, "_TOKEN_ELEMS", 7 * 4 * 3)


def test_token_scores_equal_naive_einsum(small_blocks):
    rng = np.random.default_rng(0)
    q, g = _dyadic(rng, 23, 4, 8), _dyadic(rng, 57, 3, 8)  # kq != kg
    np.testing.assert_array_equal(token_score_matrix(q, g, device="cpu"), _naive_scores(q, g))


@pytest.mark.parametrize("k", [1, 5, 57, 80])
def test_token_topk_equals_full_sort_with_ties(small_blocks, k):
    rng = np.random.default_rng(1)
    q, g = _dyadic(rng, 19, 4, 6), _dyadic(rng, 57, 4, 6)
    g[30:40] = g[5]  # duplicated gallery items: exact ties straddling the top-k boundary
    s, i = token_topk(q, g, k, chunk=4, device="cpu")
    ns, ni = _naive_topk(_naive_scores(q, g), min(k, 57))
    np.testing.assert_array_equal(i, ni)
    np.testing.assert_array_equal(s, ns)


def test_token_topk_exclusion_and_weights(small_blocks):
    rng = np.random.default_rng(2)
    q1, q2, g = _dyadic(rng, 11, 4, 6), _dyadic(rng, 11, 2, 6), _dyadic(rng, 40, 4, 6)
    excl = rng.integers(-1, 40, size=11)
    s, i = token_topk([q1, q2], g, 10, weights=[1.0, 0.5], exclude=excl, chunk=3, device="cpu")
    ref = _naive_scores(q1, g) + np.float32(0.5) * _naive_scores(q2, g)
    ns, ni = _naive_topk(ref, 10, excl)
    np.testing.assert_array_equal(i, ni)
    np.testing.assert_array_equal(s, ns)
    assert not any(e in row for e, row in zip(excl, i) if e >= 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_token_topk_gpu_equals_cpu():
    rng = np.random.default_rng(3)
    q, g = _dyadic(rng, 50, 8, 16), _dyadic(rng, 3000, 8, 16)
    s_c, i_c = token_topk(q, g, 20, device="cpu")
    s_g, i_g = token_topk(q, g, 20, device="cuda")
    np.testing.assert_array_equal(i_c, i_g)
    np.testing.assert_array_equal(s_c, s_g)


def _queries(rows):
    base = {f.name: None for f in QUERIES} | {"modification": "m", "captions": [], "target_ids": [], "members": [],
                                              "candidate_ids": []}
    return pa.Table.from_pylist([base | r for r in rows], schema=QUERIES)


@pytest.mark.parametrize("bench", ["cirr", "circo", "fashioniq", "genecis"])
def test_benchmark_rules_equal_the_matrix_path(small_blocks, bench):
    """rank_token_queries (chunked token scores) == rank_from_scores on the naive matrix: reference removal, CIRR
    subsets, GeneCIS candidates, gallery subsets and ties all come from the same rules."""
    rng = np.random.default_rng(4)
    n_img, n_q = 30, 12
    ids = [f"img{i}" for i in range(n_img)]
    q, g = _dyadic(rng, n_q, 4, 6), _dyadic(rng, n_img, 4, 6)
    g[20:25] = g[3]  # ties
    in_gallery = np.ones(n_img, bool)
    if bench == "fashioniq":
        in_gallery[::3] = False
    rows = []
    for qi in range(n_q):
        members = [ids[j] for j in rng.choice(n_img, 6, replace=False)]
        rows.append({"query_id": str(qi), "reference_id": members[0], "members": members,
                     "candidate_ids": [ids[j] for j in rng.choice(n_img, 8, replace=False)] + ["absent"]})
    queries = _queries(rows)
    got = rank_token_queries(bench, queries, q, ids, g, in_gallery, k=10, device="cpu")
    want = rank_from_scores(bench, queries, _naive_scores(q, g), ids, in_gallery, k=10)
    for col in ("query_id", "ranked_ids", "scores", "subset_ids"):
        assert got.column(col).to_pylist() == want.column(col).to_pylist(), col
    info = ranking_info(got)
    assert info["scores"] == "tokens" and info["tie_rule"] == ranking_info(want)["tie_rule"]


def test_joint_modes_and_fusion(small_blocks):
    rng = np.random.default_rng(5)
    feats = {"composed": _dyadic(rng, 9, 4, 6), "target_text": _dyadic(rng, 9, 4, 6),
             "reference": _dyadic(rng, 9, 4, 6), "modification": _dyadic(rng, 9, 1, 6)}
    g = _dyadic(rng, 25, 4, 6)
    s_hat, s_tilde = _naive_scores(feats["composed"], g), _naive_scores(feats["target_text"], g)
    for lam in (1.0, 0.5, 0.0):
        joint = joint_scores("joint", feats, g, lam=lam, device="cpu")
        np.testing.assert_array_equal(joint, fuse(s_hat, s_tilde, lam))  # a λ change is fusion only
        s, i = joint_topk("joint", feats, g, 5, lam=lam, device="cpu")
        np.testing.assert_array_equal(i, _naive_topk(fuse(s_hat, s_tilde, lam), 5)[1])
    np.testing.assert_array_equal(joint_scores("composed", feats, g, device="cpu"), s_hat)
    np.testing.assert_array_equal(joint_scores("target_text", feats, g, device="cpu"), s_tilde)
    np.testing.assert_array_equal(joint_scores("image_only", feats, g, device="cpu"),
                                  _naive_scores(feats["reference"], g))
    avg = average_features(feats["reference"], feats["modification"])
    assert avg.shape == (9, 4, 6)
    m = (feats["reference"][0, 2] + feats["modification"][0, 0]) / 2
    np.testing.assert_allclose(avg[0, 2], m / max(np.linalg.norm(m), 1e-12), rtol=1e-6)
    np.testing.assert_allclose(joint_scores("image_text", feats, g, device="cpu"), _naive_scores(avg, g), rtol=1e-6)
    with pytest.raises(ConfigError, match="missing"):
        mode_terms("joint", {"composed": feats["composed"]})
    with pytest.raises(ConfigError, match="unknown"):
        mode_terms("nope", feats)
    queries = _queries([{"query_id": str(i), "reference_id": f"img{i}"} for i in range(9)])
    t = rank_joint("circo", queries, "joint", feats, [f"img{i}" for i in range(25)], g, np.ones(25, bool), k=5,
                   lam=0.5, device="cpu")
    want = rank_from_scores("circo", queries, fuse(s_hat, s_tilde, 0.5), [f"img{i}" for i in range(25)],
                            np.ones(25, bool), k=5)
    assert t.column("ranked_ids").to_pylist() == want.column("ranked_ids").to_pylist()
