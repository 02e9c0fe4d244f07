"""Similarity-level fusion rules: combine score matrices [nQ, nImages] computed from different query and
gallery modalities (PEFUSE's conversion modes, IP-CIR's balance metric, MVFT-JI's joint inference).

- weighted_sum:  S = Σ_i w_i · norm(S_i)
- balance (IP-CIR Eq. 2, metrics-and-methods B.1): S = λ·S_t + (1 − λ)·(S_t ⊙ S_p), terms = [S_t, S_p]
- product: S = Π_i S_i

`normalize` (weighted_sum only): "none" keeps raw cosines (their scales differ across modality pairs, which
the weights then absorb), "zscore" standardises each query's row first so weights mean shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cirflow.schemas.errors import ConfigError

RULES = ("weighted_sum", "balance", "product")


def _normalize(s: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return s
    if how == "zscore":
        mu = s.mean(axis=1, keepdims=True)
        sd = s.std(axis=1, keepdims=True)
        return (s - mu) / np.where(sd > 0, sd, 1.0)
    raise ConfigError(f"unknown score normalisation {how!r}: expected none or zscore")


def fuse(scores: Sequence[np.ndarray], weights: Sequence[float], rule: str = "weighted_sum",
         params: dict | None = None) -> np.ndarray:
    params = dict(params or {})
    if rule == "weighted_sum":
        how = params.pop("normalize", "none")
        _no_extra(rule, params)
        out = np.zeros_like(scores[0], dtype=np.float32)
        for s, w in zip(scores, weights):
            out += np.float32(w) * _normalize(s.astype(np.float32, copy=False), how)
        return out
    if rule == "balance":
        if len(scores) != 2:
            raise ConfigError("the balance rule takes exactly two terms: [baseline S_t, proxy S_p]")
        lam = float(params.pop("lam"))
        _no_extra(rule, params)
        s_t, s_p = scores
        return (lam * s_t + (1.0 - lam) * (s_t * s_p)).astype(np.float32)
    if rule == "product":
        _no_extra(rule, params)
        out = np.ones_like(scores[0], dtype=np.float32)
        for s in scores:
            out *= s
        return out
    raise ConfigError(f"unknown fusion rule {rule!r}: expected one of {', '.join(RULES)}")


def _no_extra(rule: str, params: dict) -> None:
    if params:
        raise ConfigError(f"fusion rule {rule!r} takes no parameter(s) {sorted(params)}")
