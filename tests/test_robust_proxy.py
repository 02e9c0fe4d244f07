"""IP-CIR Eq. 1 (robust proxy) against a direct numpy transcription of the authors' code, on random features."""

from __future__ import annotations

import numpy as np
import pytest

from cirflow.retrieval.robust_proxy import (align_rows, proxy_feature, robust_proxy, semantic_perturbation,
                                            zero_proxy_count)

rng = np.random.default_rng(0)


def norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def features(nq=7, n=5, d=16, slots=4):
    proxies = rng.normal(size=(nq, n, d)).astype(np.float32)
    f_q = norm(rng.normal(size=(nq, d))).astype(np.float32)
    f_t, f_o = rng.normal(size=(slots, nq, d)), rng.normal(size=(slots, nq, d))
    return proxies, f_q, f_t.astype(np.float32), f_o.astype(np.float32)


def test_proxy_feature_is_the_mean_of_normalised_features_not_renormalised():
    proxies, *_ = features()
    f_p = proxy_feature(proxies)
    np.testing.assert_allclose(f_p, norm(proxies).mean(axis=1), rtol=1e-5, atol=1e-6)
    assert np.all(np.linalg.norm(f_p, axis=1) < 1.0)  # a mean of unit vectors is shorter


def test_proxy_feature_masks_missing_proxies_and_zero_fills_empty_queries():
    proxies, *_ = features()
    mask = np.ones(proxies.shape[:2], bool)
    mask[1, 3:] = False  # 3 of 5 proxies
    mask[4] = False  # none
    proxies[1, 3:] = np.nan  # whatever a failed slot holds is ignored
    f_p = proxy_feature(proxies, mask)
    np.testing.assert_allclose(f_p[1], norm(proxies[1, :3]).mean(axis=0), rtol=1e-5, atol=1e-6)
    assert np.all(f_p[4] == 0) and zero_proxy_count(f_p) == 1 and np.isfinite(f_p).all()
    with pytest.raises(ValueError):
        proxy_feature(proxies[0])


def test_semantic_perturbation():
    _, _, f_t, f_o = features()
    np.testing.assert_allclose(semantic_perturbation(f_t, f_o), (norm(f_t) - norm(f_o)).mean(axis=0), rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError):
        semantic_perturbation(f_t, f_o[:2])


def reference(f_p, f_q, f_s, a_w, s_w, t_w, per_query):
    """The authors' retrieval_circo.py, transcribed: torch.max over the whole tensor (or per row)."""
    if per_query:
        mp, mq, ms = f_p.max(1, keepdims=True), f_q.max(1, keepdims=True), f_s.max(1, keepdims=True)
    else:
        mp, mq, ms = f_p.max(), f_q.max(), f_s.max()
    return s_w * (mp / mq) * f_q + t_w * (mp / ms) * f_s + a_w * f_p


@pytest.mark.parametrize("mode", ["global", "per_query"])
@pytest.mark.parametrize("w", [(1.0, 1.0, 1.0), (0.5, 2.0, 0.25), (1.0, 0.0, 1.0)])
def test_robust_proxy_matches_the_formula(mode, w):
    proxies, f_q, f_t, f_o = features()
    f_p, f_s = proxy_feature(proxies), semantic_perturbation(f_t, f_o)
    got = robust_proxy(f_p, f_q, f_s, a_w=w[0], s_w=w[1], t_w=w[2], max_mode=mode)
    want = reference(f_p.astype(np.float64), f_q, f_s, *w, per_query=mode == "per_query")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32 and got.shape == f_q.shape


def test_global_and_per_query_max_differ():
    proxies, f_q, f_t, f_o = features()
    f_p, f_s = proxy_feature(proxies), semantic_perturbation(f_t, f_o)
    g = robust_proxy(f_p, f_q, f_s, max_mode="global")
    p = robust_proxy(f_p, f_q, f_s, max_mode="per_query")
    assert not np.allclose(g, p)
    with pytest.raises(ValueError, match="max_mode"):
        robust_proxy(f_p, f_q, f_s, max_mode="row")


@pytest.mark.parametrize("mode", ["global", "per_query"])
def test_zero_proxy_queries_keep_query_and_perturbation_terms(mode):
    proxies, f_q, f_t, f_o = features()
    mask = np.ones(proxies.shape[:2], bool)
    mask[2] = False
    f_p, f_s = proxy_feature(proxies, mask), semantic_perturbation(f_t, f_o)
    got = robust_proxy(f_p, f_q, f_s, max_mode=mode)
    has = np.arange(len(f_p)) != 2
    mp_global = f_p[has].max()  # over the queries that have proxies
    mq = f_q.max() if mode == "global" else f_q[2].max()
    ms = f_s.max() if mode == "global" else f_s[2].max()
    np.testing.assert_allclose(got[2], (mp_global / mq) * f_q[2] + (mp_global / ms) * f_s[2], rtol=1e-5, atol=1e-6)
    if mode == "per_query":  # the others are unaffected by the empty query
        want = robust_proxy(f_p[has], f_q[has], f_s[has], max_mode=mode)
    else:  # global maxima of f_q and f_s still run over every query
        want = f_p[has] + (mp_global / f_q.max()) * f_q[has] + (mp_global / f_s.max()) * f_s[has]
    np.testing.assert_allclose(got[has], want, rtol=1e-5, atol=1e-6)
    # no proxies anywhere: nothing to scale by, f_RP = 0 rather than NaN
    z = robust_proxy(np.zeros_like(f_p), f_q, f_s, max_mode=mode)
    assert np.isfinite(z).all() and np.all(z == 0)


def test_zero_perturbation_drops_its_term_instead_of_dividing_by_zero():
    proxies, f_q, *_ = features()
    f_p = proxy_feature(proxies)
    got = robust_proxy(f_p, f_q, np.zeros_like(f_q))
    np.testing.assert_allclose(got, f_p + (f_p.max() / f_q.max()) * f_q, rtol=1e-5, atol=1e-6)


def test_align_rows_fills_missing_queries_with_zeros():
    emb = rng.normal(size=(2, 4)).astype(np.float32)
    out, missing = align_rows(["a", "b", "c"], ["c", "a"], emb)
    assert missing == 1 and np.array_equal(out[0], emb[1]) and np.all(out[1] == 0) and np.array_equal(out[2], emb[0])
