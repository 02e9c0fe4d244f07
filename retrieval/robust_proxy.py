"""IP-CIR robust proxy feature (Imagine and Seek, Li et al. CVPR 2025, Eq. 1), in the form of the authors' code
(docs/metrics-and-methods.md B.1):

    f_RP = a_w·f_p + s_w·(max f_p / max f_q)·f_q + t_w·(max f_p / max f_s)·f_s

* f_q: the normalised image feature of the query (reference) image, [nQ, D].
* f_p: proxy feature = mean of the *normalised* features of a query's proxy images, not re-normalised
  (`proxy_feature`).
* f_s: semantic perturbation = mean over caption slots i of (f_t,i − f_o,i), the normalised text features of
  the i-th edited target caption and the i-th reference caption (`semantic_perturbation`).
* max(·) is a signed maximum. max_mode="global" (default, the authors' code): one scalar over the whole
  [nQ, D] tensor of each feature. max_mode="per_query": the maximum of each query's own row (a reading of the
  paper's notation).
* f_RP is not re-normalised (cosine ranking against a normalised gallery is unaffected by a per-row scale,
  but the balance metric S_t·S_p sees the magnitude, as in the authors' code).

Queries with no proxy image (all failed) have f_p = 0: the proxy term vanishes and f_RP is made of the query
image and the perturbation only. In per_query mode their ratios would be 0/… and silence the other terms as
well, so such queries use the global maximum of f_p over the queries that do have proxies. A ratio whose
denominator is 0 (a whole feature is zero, e.g. no perturbation) is taken as 0: that term is dropped.
`zero_proxy_count` reports how many queries are affected.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

MaxMode = Literal["global", "per_query"]


def _normalise(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def proxy_feature(features: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """[nQ, N, D] proxy image features -> [nQ, D]: each feature L2-normalised, then the mean over the valid
    proxies of a query (`mask` [nQ, N] bool; default: all valid). A query without a valid proxy gets zeros.
    Entries where the mask is False are ignored whatever they hold (NaN included)."""
    f = np.asarray(features, dtype=np.float32)
    if f.ndim != 3:
        raise ValueError(f"features must be [nQ, N, D], got shape {f.shape}")
    m = np.ones(f.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != f.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match features {f.shape[:2]}")
    f = np.where(m[..., None], f, 0.0)
    f = _normalise(f) * m[..., None]
    counts = m.sum(axis=1, keepdims=True)
    return (f.sum(axis=1) / np.maximum(counts, 1)).astype(np.float32)


def semantic_perturbation(f_t: np.ndarray, f_o: np.ndarray) -> np.ndarray:
    """[n, nQ, D] edited-caption and reference-caption text features -> [nQ, D] = mean_i (f_t,i − f_o,i).
    Each feature is L2-normalised first (a no-op for features that already are)."""
    f_t, f_o = np.asarray(f_t, dtype=np.float32), np.asarray(f_o, dtype=np.float32)
    if f_t.shape != f_o.shape or f_t.ndim != 3:
        raise ValueError(f"f_t and f_o must both be [n, nQ, D], got {f_t.shape} and {f_o.shape}")
    return (_normalise(f_t) - _normalise(f_o)).mean(axis=0).astype(np.float32)


def zero_proxy_count(f_p: np.ndarray) -> int:
    """Queries whose proxy feature is all zeros (no proxy image)."""
    return int((~np.any(np.asarray(f_p) != 0, axis=1)).sum())


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    den = np.asarray(den, dtype=np.float64)
    return np.where(den != 0, np.asarray(num, dtype=np.float64) / np.where(den != 0, den, 1.0), 0.0)


def robust_proxy(f_p: np.ndarray, f_q: np.ndarray, f_s: np.ndarray, *, a_w: float = 1.0, s_w: float = 1.0,
                 t_w: float = 1.0, max_mode: MaxMode = "global") -> np.ndarray:
    """Eq. 1 (code form, see module doc). All inputs [nQ, D]; returns float32 [nQ, D]."""
    f_p, f_q, f_s = (np.asarray(x, dtype=np.float32) for x in (f_p, f_q, f_s))
    if not f_p.shape == f_q.shape == f_s.shape or f_p.ndim != 2:
        raise ValueError(f"f_p, f_q, f_s must share one [nQ, D] shape, got {f_p.shape}, {f_q.shape}, {f_s.shape}")
    has_proxy = np.any(f_p != 0, axis=1)
    if max_mode == "global":
        mp = f_p[has_proxy].max() if has_proxy.any() else 0.0
        rq, rs = _ratio(mp, f_q.max()), _ratio(mp, f_s.max())
        rq, rs = np.full((len(f_p), 1), rq), np.full((len(f_p), 1), rs)
    elif max_mode == "per_query":
        mp = f_p.max(axis=1)
        fallback = f_p[has_proxy].max() if has_proxy.any() else 0.0
        mp = np.where(has_proxy, mp, fallback)
        rq, rs = _ratio(mp, f_q.max(axis=1))[:, None], _ratio(mp, f_s.max(axis=1))[:, None]
    else:
        raise ValueError(f"max_mode must be 'global' or 'per_query', got {max_mode!r}")
    out = a_w * f_p.astype(np.float64) + s_w * rq * f_q + t_w * rs * f_s
    return out.astype(np.float32)


def align_rows(query_ids: list[str], ids: list[str], features: np.ndarray) -> tuple[np.ndarray, int]:
    """Features ([len(ids), D], keyed by `ids`) laid out in `query_ids` order; a query without a row gets zeros
    (e.g. f_p of a query whose proxies all failed: embed_generated leaves it out). Returns (array, missing)."""
    features = np.asarray(features, dtype=np.float32)
    pos = {i: k for k, i in enumerate(ids)}
    out = np.zeros((len(query_ids), features.shape[1]), np.float32)
    missing = 0
    for r, q in enumerate(query_ids):
        k = pos.get(q)
        if k is None:
            missing += 1
        else:
            out[r] = features[k]
    return out, missing
