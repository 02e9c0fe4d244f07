"""Exact top-k by inner product with a deterministic tie rule, chunked so memory stays bounded.

Tie rule: score descending, then gallery index ascending -- also at the k-th boundary. torch.topk alone does not
promise which of several equal scores it keeps, so we ask for k+1: if the (k+1)-th value is strictly smaller
than the k-th, the chosen set is forced and only its order needs fixing; otherwise (a tie straddles the boundary,
rare with real embeddings) that row is redone by hand: everything above the boundary value plus the
lowest-index entries equal to it. The final order comes from an index sort followed by a *stable* value sort.

Scores are computed block by block (a block of query rows against the whole gallery) on the GPU when there is
one; a block never exceeds `_BLOCK_ELEMS` scores (256 MB as float32), whatever `chunk` says.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

_BLOCK_ELEMS = 1 << 26


def topk(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    chunk: int = 1024,
    device: str | torch.device | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores [nQ, k] float32, indices [nQ, k] int64) of the k best gallery rows per query.

    exclude: optional int array [nQ] or [nQ, m] of gallery indices to drop per query (-1 = none); they get
    score -inf, i.e. they can only appear when k exceeds the number of remaining gallery rows.
    k is clipped to the gallery size.
    """
    dev = _device(device)
    g = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32)).to(dev)
    q_all = np.ascontiguousarray(queries, dtype=np.float32)
    if q_all.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q_all.shape[1]} != gallery dim {g.shape[1]}")

    def block(lo: int, hi: int) -> torch.Tensor:
        return torch.from_numpy(q_all[lo:hi]).to(dev) @ g.T

    return _run(block, len(q_all), g.shape[0], k, chunk, exclude)


def topk_scores(
    scores: np.ndarray | torch.Tensor,
    k: int,
    *,
    chunk: int = 1024,
    device: str | torch.device | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Same selection and tie rule on a precomputed score matrix [nQ, nG] (e.g. fused similarities)."""
    dev = _device(device)
    s = torch.as_tensor(scores)
    if s.dtype != torch.float32:
        s = s.float()

    def block(lo: int, hi: int) -> torch.Tensor:
        return s[lo:hi].to(dev, copy=True)  # a copy: masking must not write into the caller's matrix

    return _run(block, s.shape[0], s.shape[1], k, chunk, exclude)


def select_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of `scores` [r, n] under the tie rule (score desc, index asc). k <= n."""
    n = scores.shape[1]
    kk = min(k + 1, n)
    vals, idx = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
    if kk > k:
        # the (k+1)-th equal to the k-th means equal scores straddle the boundary: topk's pick is arbitrary
        for r in torch.nonzero(vals[:, k] == vals[:, k - 1]).flatten().tolist():
            idx[r, :k] = _boundary_fix(scores[r], vals[r, k - 1], k)
        idx = idx[:, :k]
    idx, _ = torch.sort(idx, dim=1)  # index ascending ...
    vals = torch.gather(scores, 1, idx)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)  # ... then score descending, stably
    return vals, torch.gather(idx, 1, order)


def _boundary_fix(row: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
    above = torch.nonzero(row > t).flatten()
    at = torch.nonzero(row == t).flatten()[: k - above.numel()]  # nonzero is index-ascending
    return torch.cat([above, at])


def _run(
    block: Callable[[int, int], torch.Tensor], n_q: int, n_g: int, k: int, chunk: int, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    k = min(int(k), n_g)
    out_s = np.empty((n_q, k), np.float32)
    out_i = np.empty((n_q, k), np.int64)
    if k == 0 or n_q == 0:
        return out_s, out_i
    excl = None
    if exclude is not None:
        excl = np.asarray(exclude, dtype=np.int64).reshape(n_q, -1)
    rows = max(1, min(chunk, _BLOCK_ELEMS // max(n_g, 1)))
    for lo in range(0, n_q, rows):
        hi = min(lo + rows, n_q)
        s = block(lo, hi)
        if excl is not None:
            _mask(s, excl[lo:hi])
        vals, idx = select_topk(s, k)
        out_s[lo:hi] = vals.cpu().numpy()
        out_i[lo:hi] = idx.cpu().numpy()
    return out_s, out_i


def _mask(s: torch.Tensor, excl: np.ndarray) -> None:
    r, c = np.nonzero(excl >= 0)
    if len(r):
        rr = torch.from_numpy(r).to(s.device)
        cc = torch.from_numpy(excl[r, c]).to(s.device)
        s[rr, cc] = float("-inf")


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
