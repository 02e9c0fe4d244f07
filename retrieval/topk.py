"""Exact top-k by inner product with a deterministic tie rule, chunked so memory stays bounded.

Tie rule: score descending, then gallery index ascending -- also at the k-th boundary. torch.topk alone does not
promise which of several equal scores it keeps, so we ask for k+1: if the (k+1)-th value is strictly smaller
than the k-th, the chosen set is forced and only its order needs fixing; otherwise (a tie straddles the boundary,
rare with real embeddings) that row is redone by hand: everything above the boundary value plus the
lowest-index entries equal to it. The final order comes from an index sort followed by a *stable* value sort.

Scores are computed block by block (a block of query rows against the whole gallery) on the GPU when there is
one; a block never exceeds `_BLOCK_ELEMS` scores (256 MB as float32), whatever `chunk` says.

On CPU, `topk` on embeddings takes a faster route with the same rule (issue 14): FAISS's brute-force kernel
(`faiss.knn`, blocked sgemm + heap, which never materialises a score block and beats torch's matmul alone)
returns the k + m + margin best candidates per query (m = that query's masked ids), and the candidates are
re-ranked by the tie rule. Every gallery row outside the candidates scores <= the last candidate, so the set
is forced whenever the k-th kept score is strictly above the best score left after it; a row where they are
equal (a tie straddles the candidate boundary) is redone on the exact path. Scores are FAISS's float32 sums,
which may differ from torch's in the last bit: the ids equal the exact top-k up to that rounding.
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
    g_np = np.ascontiguousarray(gallery, dtype=np.float32)
    q_all = np.ascontiguousarray(queries, dtype=np.float32)
    if q_all.shape[1] != g_np.shape[1]:
        raise ValueError(f"query dim {q_all.shape[1]} != gallery dim {g_np.shape[1]}")
    if dev.type == "cpu":
        fast = _faiss_topk(q_all, g_np, k, exclude, chunk)
        if fast is not None:
            return fast
    g = torch.from_numpy(g_np).to(dev)

    def block(lo: int, hi: int) -> torch.Tensor:
        return torch.from_numpy(q_all[lo:hi]).to(dev) @ g.T

    return _run(block, len(q_all), g.shape[0], k, chunk, exclude)


# candidates beyond k + m: a tie at the k-th score spanning this many more rows still resolves without the
# exact path; larger costs FAISS more heap work for nothing on real embeddings
_TIE_MARGIN = 4
_FAISS_DB_BLOCK = 16384


def _faiss_topk(q: np.ndarray, g: np.ndarray, k: int, exclude, chunk: int):
    """The FAISS-candidates route (module docstring); None when it does not apply (k + m + margin covers the
    whole gallery, or nothing to do), so the caller takes the exact path."""
    n_q, n_g = len(q), len(g)
    k = min(int(k), n_g)
    excl = None if exclude is None else np.asarray(exclude, dtype=np.int64).reshape(n_q, -1)
    m = 0 if excl is None else int((excl >= 0).sum(axis=1).max(initial=0))
    kc = k + m + _TIE_MARGIN
    if k == 0 or n_q == 0 or kc >= n_g:
        return None
    import faiss  # lazy: importing faiss costs ~0.3 s that commands which never rank should not pay

    # FAISS scores 1024 gallery rows per sgemm by default; 16,384 (a <= 256 MB block, like _BLOCK_ELEMS) means
    # 16x fewer thread barriers and measured 1.3-2x faster on the shared 2-core box (bench/README.md). A global
    # setting, so it is put back at once; it changes how the scores are blocked, and the ids still follow the rule.
    bs = faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_database_bs = max(bs, _FAISS_DB_BLOCK)
    try:
        cand_s, cand_i = faiss.knn(q, g, kc, faiss.METRIC_INNER_PRODUCT)
    finally:
        faiss.cvar.distance_compute_blas_database_bs = bs
    if excl is not None and m:
        # masked ids drop out of the candidate list (same effect as -inf: k <= kc - m rows are left)
        hit = (cand_i[:, :, None] == excl[:, None, :]).any(axis=2)
        cand_s = np.where(hit, np.float32(-np.inf), cand_s)
    # re-rank each row by the rule: index ascending, then a stable sort on score descending
    by_id = np.argsort(cand_i, axis=1, kind="stable")
    cand_i = np.take_along_axis(cand_i, by_id, 1)
    cand_s = np.take_along_axis(cand_s, by_id, 1)
    by_s = np.argsort(-cand_s, axis=1, kind="stable")
    cand_i = np.take_along_axis(cand_i, by_s, 1)
    cand_s = np.take_along_axis(cand_s, by_s, 1)
    # forced when the k-th kept score beats the next one (every non-candidate scores <= every candidate)
    redo = np.flatnonzero(~(cand_s[:, k] < cand_s[:, k - 1]))
    out_s, out_i = np.ascontiguousarray(cand_s[:, :k]), np.ascontiguousarray(cand_i[:, :k])
    if len(redo):
        gt = torch.from_numpy(g)
        rs, ri = _run(lambda lo, hi: torch.from_numpy(q[redo[lo:hi]]) @ gt.T, len(redo), n_g, k, chunk,
                      None if excl is None else excl[redo])
        out_s[redo], out_i[redo] = rs, ri
    return out_s, out_i


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


def topk_blocks(
    block: Callable[[int, int], torch.Tensor],
    n_q: int,
    n_g: int,
    k: int,
    *,
    chunk: int = 1024,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Same selection and tie rule on scores a caller produces: `block(lo, hi)` returns query rows lo..hi against
    the whole gallery, a fresh [hi - lo, n_g] float32 tensor (it is masked in place), e.g. token-level scores."""
    return _run(block, n_q, n_g, k, chunk, exclude)


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
