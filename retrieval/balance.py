"""IP-CIR balance metric (Imagine and Seek, Li et al. CVPR 2025, Eq. 2; docs/metrics-and-methods.md B.1):

    S = λ·S_t + (1 − λ)·(S_t ⊙ S_p)

S_t: the baseline (text-side) similarity of queries to the gallery, S_p: the robust-proxy similarity
(f_RP · galleryᵀ), ⊙ the element-wise product; the product rewards candidates that both sides like. The authors'
code: `scale*sim + (1-scale)*robust_sim*sim`.

Element-wise, so it works on any row block: compute S_t and S_p for a block of queries against the gallery,
balance, take the top-k, move on (memory stays bounded like cirflow.retrieval.topk).

λ per dataset, from the paper (`DEFAULT_LAMBDA`): CIRCO 0.3, CIRR 0.0 (the product term alone), Fashion-IQ
0.8. The authors' CIRCO script comments "0.3 for G, 0.65 for L" (CLIP ViT-G vs ViT-L), so λ depends on the
backbone too: treat the table as a starting point, not a constant.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

DEFAULT_LAMBDA: dict[str, float] = {"circo": 0.3, "cirr": 0.0, "fashioniq": 0.8}


def default_lambda(benchmark: str) -> float:
    try:
        return DEFAULT_LAMBDA[benchmark]
    except KeyError:
        raise KeyError(f"no default λ for benchmark {benchmark!r}; known: {sorted(DEFAULT_LAMBDA)}") from None


def balance_scores(S_t: np.ndarray, S_p: np.ndarray, lam: float, out: np.ndarray | None = None) -> np.ndarray:
    """λ·S_t + (1 − λ)·S_t·S_p for same-shaped blocks (any shape). `out` may be S_t itself (in place)."""
    S_t, S_p = np.asarray(S_t), np.asarray(S_p)
    if S_t.shape != S_p.shape:
        raise ValueError(f"S_t {S_t.shape} and S_p {S_p.shape} differ in shape")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    res = lam * S_t + (1.0 - lam) * (S_t * S_p)
    if out is None:
        return res
    out[...] = res
    return out


def balanced_blocks(q_text: np.ndarray, q_proxy: np.ndarray, gallery: np.ndarray, lam: float, *,
                    block: int = 1024) -> Iterator[tuple[int, np.ndarray]]:
    """(row start, balanced scores [rows, nG]) for row blocks of the queries: S_t = q_text·Gᵀ,
    S_p = q_proxy·Gᵀ. Feed each block to a top-k; never holds more than one block of scores."""
    if len(q_text) != len(q_proxy):
        raise ValueError(f"{len(q_text)} text queries but {len(q_proxy)} proxy queries")
    g = np.asarray(gallery, dtype=np.float32)
    for s in range(0, len(q_text), max(1, block)):
        st = np.asarray(q_text[s:s + block], dtype=np.float32) @ g.T
        sp = np.asarray(q_proxy[s:s + block], dtype=np.float32) @ g.T
        yield s, balance_scores(st, sp, lam, out=st)
