"""IP-CIR Eq. 2 (balance metric) against numpy, whole and block by block; the per-dataset λ table."""

from __future__ import annotations

import numpy as np
import pytest

from cirflow.retrieval.balance import DEFAULT_LAMBDA, balance_scores, balanced_blocks, default_lambda

rng = np.random.default_rng(1)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8, 1.0])
def test_balance_matches_the_formula(lam):
    s_t, s_p = rng.uniform(-1, 1, (5, 9)), rng.uniform(-1, 1, (5, 9))
    got = balance_scores(s_t, s_p, lam)
    np.testing.assert_allclose(got, lam * s_t + (1 - lam) * s_t * s_p, rtol=1e-12)
    if lam == 0.0:
        np.testing.assert_allclose(got, s_t * s_p)  # CIRR: the product term alone
    if lam == 1.0:
        np.testing.assert_allclose(got, s_t)


def test_balance_prefers_candidates_both_sides_like():
    # the paper's example: (0.999, 0.001) vs (0.5, 0.5) average the same, the balance metric separates them
    s_t, s_p = np.array([[0.999, 0.5]]), np.array([[0.001, 0.5]])
    assert (s_t + s_p)[0, 0] == pytest.approx((s_t + s_p)[0, 1])
    for lam in (0.0, 0.3):
        got = balance_scores(s_t, s_p, lam)
        assert got[0, 1] > got[0, 0]


def test_blocks_equal_the_whole_and_in_place_works():
    q_t, q_p = rng.normal(size=(11, 8)).astype(np.float32), rng.normal(size=(11, 8)).astype(np.float32)
    g = rng.normal(size=(20, 8)).astype(np.float32)
    whole = balance_scores(q_t @ g.T, q_p @ g.T, 0.3)
    parts = dict(balanced_blocks(q_t, q_p, g, 0.3, block=4))
    assert sorted(parts) == [0, 4, 8]
    np.testing.assert_allclose(np.concatenate([parts[k] for k in sorted(parts)]), whole, rtol=1e-5, atol=1e-6)
    s_t = q_t @ g.T
    out = balance_scores(s_t, q_p @ g.T, 0.3, out=s_t)
    assert out is s_t
    np.testing.assert_allclose(s_t, whole, rtol=1e-5, atol=1e-6)


def test_errors_and_defaults():
    with pytest.raises(ValueError, match="shape"):
        balance_scores(np.zeros((2, 3)), np.zeros((3, 2)), 0.5)
    with pytest.raises(ValueError, match="lam"):
        balance_scores(np.zeros(2), np.zeros(2), 1.5)
    assert DEFAULT_LAMBDA == {"circo": 0.3, "cirr": 0.0, "fashioniq": 0.8}
    assert default_lambda("cirr") == 0.0
    with pytest.raises(KeyError, match="genecis"):
        default_lambda("genecis")
