"""retrieval.topk: exact, deterministic tie rule (score desc, index asc) even at the k-th boundary."""

from __future__ import annotations

import numpy as np
import pytest

from cirflow.retrieval.topk import topk, topk_scores


def _brute(S: np.ndarray, k: int) -> np.ndarray:
    n = S.shape[1]
    return np.stack([np.lexsort((np.arange(n), -row))[: min(k, n)] for row in S])


@pytest.fixture(scope="module")
def tied():
    # small integer vectors: every dot product is exact in float32 and ties are everywhere
    rng = np.random.default_rng(1)
    return rng.integers(-2, 3, (120, 6)).astype(np.float32), rng.integers(-2, 3, (400, 6)).astype(np.float32)


@pytest.mark.parametrize("k", [1, 3, 50, 399, 400, 1000])
def test_equals_lexsort_with_ties(tied, k):
    q, g = tied
    S = q @ g.T
    ref = _brute(S, k)
    s, i = topk(q, g, k, chunk=17)
    assert i.dtype == np.int64 and s.dtype == np.float32
    np.testing.assert_array_equal(i, ref)
    np.testing.assert_array_equal(s, np.take_along_axis(S, ref, 1))


def test_boundary_tie_takes_lowest_indices():
    # 1 clear winner, then 8 equal scores spread over the gallery: k=4 must take the 3 lowest-index ties
    g = np.zeros((50, 2), np.float32)
    g[:, 1] = -1.0
    tie_rows = [45, 3, 30, 12, 7, 49, 20, 0]
    g[tie_rows] = [1.0, 0.0]
    g[25] = [2.0, 0.0]
    s, i = topk(np.array([[1.0, 0.0]], np.float32), g, 4)
    assert i.tolist() == [[25, 0, 3, 7]] and s.tolist() == [[2.0, 1.0, 1.0, 1.0]]


def test_chunk_invariance_random(tied):
    rng = np.random.default_rng(2)
    q = rng.standard_normal((300, 32)).astype(np.float32)
    g = rng.standard_normal((1000, 32)).astype(np.float32)
    base = topk(q, g, 20, chunk=1024)
    for chunk in (1, 7, 64):
        s, i = topk(q, g, 20, chunk=chunk)
        np.testing.assert_array_equal(i, base[1])
        np.testing.assert_allclose(s, base[0], rtol=1e-6)
    np.testing.assert_array_equal(base[1], _brute(q.astype(np.float64) @ g.T.astype(np.float64), 20))


def test_exclude_masks_per_query(tied):
    q, g = tied
    S = q @ g.T
    excl = np.stack([_brute(S, 1)[:, 0], np.full(len(q), -1)], axis=1)  # drop each query's best; -1 = no-op
    S_masked = S.copy()
    S_masked[np.arange(len(q)), excl[:, 0]] = -np.inf
    _, i = topk(q, g, 10, exclude=excl)
    np.testing.assert_array_equal(i, _brute(S_masked, 10))
    assert not (i == excl[:, :1]).any()


def test_precomputed_scores_same_rule_and_untouched(tied):
    q, g = tied
    S = q @ g.T
    S_copy = S.copy()
    s, i = topk_scores(S, 25, chunk=9, exclude=np.zeros(len(q), np.int64))
    np.testing.assert_array_equal(S, S_copy)  # masking happens on a copy
    S_copy[:, 0] = -np.inf
    np.testing.assert_array_equal(i, _brute(S_copy, 25))


@pytest.mark.parametrize("k", [1, 4, 50, 300])
def test_faiss_route_keeps_tie_rule_and_masks(tied, k):
    # the CPU route (FAISS candidates + re-rank + exact redo of boundary ties) on data that is all ties, with up
    # to three masked ids per query: it must apply (not decline) and equal the brute-force rule exactly
    from cirflow.retrieval.topk import _faiss_topk

    q, g = tied
    rng = np.random.default_rng(3)
    excl = rng.integers(-1, len(g), (len(q), 3))
    excl[:, 0] = _brute(q @ g.T, 1)[:, 0]  # always mask the best, like CIRR's reference removal
    S = q @ g.T
    S_masked = S.copy()
    for r, row in enumerate(excl):
        S_masked[r, row[row >= 0]] = -np.inf
    out = _faiss_topk(q, g, k, excl, chunk=16)
    assert out is not None
    s, i = out
    ref = _brute(S_masked, k)
    np.testing.assert_array_equal(i, ref)
    np.testing.assert_array_equal(s, np.take_along_axis(S, ref, 1))
    np.testing.assert_array_equal(topk(q, g, k, exclude=excl)[1], ref)


def test_faiss_route_declines_when_candidates_cover_gallery(tied):
    from cirflow.retrieval.topk import _faiss_topk

    q, g = tied
    assert _faiss_topk(q, g, len(g) - 4, None, chunk=16) is None  # k + margin >= gallery: exact path instead
    assert _faiss_topk(q, g, 10, None, chunk=16) is not None
