"""Exact token-level top-K (mvft-ji.txt eqs. 11-12): queries [Q, kq, d] against a gallery [G, kg, d].

    s(q, g) = 1/kq * sum over query tokens i of max over gallery tokens j of <q_i, g_j>

(tokens are L2-normalised, so the inner product is the cosine). Several query feature sets can be scored at once
with weights, score = sum_t w_t * s(Q_t, g) -- MVFT-JI's joint inference ŝ + λ·s̃ (retrieval/joint.py).

Scores are produced block by block -- a block of query rows against the whole gallery, that block itself built
gallery chunk by gallery chunk so that the [rows * kq, chunk * kg] token similarities never exceed
`_TOKEN_ELEMS` floats -- and each block goes through the single-vector path's selection (`topk.topk_blocks`):
the same tie rule (score desc, then gallery index asc) and the same exclusion masking. Benchmark rules
(reference removal, CIRR subsets, GeneCIS candidates) come from `rules.rank_with_source` with `TokenScores`.
Runs on the GPU when there is one (torch), else on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from cirflow.retrieval.rules import rank_with_source
from cirflow.retrieval.topk import topk_blocks

_TOKEN_ELEMS = 1 << 25  # token-pair similarities held at once (128 MB as float32)

Terms = np.ndarray | Sequence[np.ndarray]


class TokenScorer:
    """Weighted token-level scores of query feature sets against one gallery, computed in bounded memory."""

    def __init__(self, queries: Terms, gallery: np.ndarray, *, weights: Sequence[float] | None = None,
                 device: str | torch.device | None = None):
        self.dev = _device(device)
        qs = [queries] if isinstance(queries, np.ndarray | torch.Tensor) else list(queries)
        if not qs:
            raise ValueError("no query features given")
        self.weights = [1.0] * len(qs) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(qs):
            raise ValueError(f"{len(self.weights)} weights for {len(qs)} query feature sets")
        self.g = _tensor(gallery).to(self.dev)
        if self.g.ndim != 3:
            raise ValueError(f"gallery features must be [G, k, d], got shape {tuple(self.g.shape)}")
        self.q = [_tensor(q) for q in qs]  # stay on the CPU; moved block by block
        for q in self.q:
            if q.ndim != 3 or q.shape[2] != self.g.shape[2] or q.shape[0] != self.q[0].shape[0]:
                raise ValueError(f"query features {tuple(q.shape)} do not match [Q, k, {self.g.shape[2]}] "
                                 f"(gallery {tuple(self.g.shape)})")
        self.n_queries, self.n_gallery = int(self.q[0].shape[0]), int(self.g.shape[0])

    def block(self, lo: int, hi: int, gallery_idx: torch.Tensor | None = None, *,
              g: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of query rows lo..hi against the gallery (or its rows gallery_idx, or the given gallery
        tensor g): a new [hi - lo, G'] tensor."""
        if g is None:
            g = self.g if gallery_idx is None else self.g[gallery_idx.to(self.dev)]
        out = torch.zeros((hi - lo, g.shape[0]), dtype=torch.float32, device=self.dev)
        for q, w in zip(self.q, self.weights):
            if w == 0.0:
                continue
            out += w * _token_block(q[lo:hi].to(self.dev), g)
        return out

    def topk(self, k: int, *, chunk: int = 1024, exclude: np.ndarray | None = None,
             gallery_idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        g = self.g
        if gallery_idx is not None:  # the gallery subset is gathered once, not per block
            g = self.g[torch.from_numpy(np.asarray(gallery_idx, dtype=np.int64)).to(self.dev)]
        return topk_blocks(lambda lo, hi: self.block(lo, hi, g=g), self.n_queries, int(g.shape[0]), k, chunk=chunk,
                           exclude=exclude)

    def matrix(self, *, chunk: int = 256) -> np.ndarray:
        """The full [Q, G] score matrix (fusion stages, small galleries)."""
        out = np.empty((self.n_queries, self.n_gallery), np.float32)
        for lo in range(0, self.n_queries, chunk):
            hi = min(lo + chunk, self.n_queries)
            out[lo:hi] = self.block(lo, hi).cpu().numpy()
        return out


def token_topk(queries: Terms, gallery: np.ndarray, k: int, *, weights: Sequence[float] | None = None,
               chunk: int = 1024, device: str | torch.device | None = None,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k] float32, gallery indices [Q, k] int64) of the k best gallery items per query.

    queries: [Q, kq, d] or a list of such arrays scored as sum_t weights[t] * s(queries[t], g); gallery [G, kg, d].
    exclude: as `topk.topk` (int [Q] or [Q, m] gallery indices to drop, -1 = none). k is clipped to G."""
    return TokenScorer(queries, gallery, weights=weights, device=device).topk(k, chunk=chunk, exclude=exclude)


def token_score_matrix(queries: Terms, gallery: np.ndarray, *, weights: Sequence[float] | None = None,
                       device: str | torch.device | None = None) -> np.ndarray:
    """Full [Q, G] token-level score matrix (same sum of weighted terms as token_topk)."""
    return TokenScorer(queries, gallery, weights=weights, device=device).matrix()


class TokenScores:
    """A `rules.rank_with_source` score source over token features (exact search)."""

    kind = "tokens"

    def __init__(self, scorer: TokenScorer):
        self.scorer = scorer
        self.n_queries = scorer.n_queries

    def pairs(self, qi: int, cols: np.ndarray) -> np.ndarray:
        gi = torch.from_numpy(np.asarray(cols, dtype=np.int64))
        return self.scorer.block(qi, qi + 1, gi)[0].cpu().numpy()

    def gallery_topk(self, gallery_idx, k, exclude, cfg):
        full = len(gallery_idx) == self.scorer.n_gallery
        s, i = self.scorer.topk(k, exclude=exclude, gallery_idx=None if full else gallery_idx)
        return s, i, {"kind": "exact", "approximate": False, "token_level": True, "gpu": self.scorer.dev.type == "cuda"}


def rank_token_queries(benchmark: str, queries: pa.Table, query_feats: Terms, image_ids: Sequence[str],
                       image_feats: np.ndarray, in_gallery: np.ndarray, *, weights: Sequence[float] | None = None,
                       k: int = 50, circo_exclude_reference: bool = False,
                       device: str | torch.device | None = None) -> pa.Table:
    """RANKINGS table for token features under the benchmark's rules (rules.rank_queries, token-level and exact).
    query_feats rows align with `queries`, image_feats rows with `image_ids`."""
    scorer = TokenScorer(query_feats, image_feats, weights=weights, device=device)
    if scorer.n_gallery != len(image_ids):
        raise ValueError(f"image_feats has {scorer.n_gallery} rows for {len(image_ids)} image_ids")
    return rank_with_source(benchmark, queries, TokenScores(scorer), image_ids, in_gallery, k=k,
                            circo_exclude_reference=circo_exclude_reference)


def _token_block(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """s(q_r, g_c) for a query block q [r, kq, d] and gallery g [G, kg, d] -> [r, G], gallery chunk by chunk."""
    r, kq, d = q.shape
    n, kg, _ = g.shape
    out = torch.empty((r, n), dtype=torch.float32, device=q.device)
    if r == 0 or n == 0:
        return out
    rows = max(1, min(r, _TOKEN_ELEMS // (kq * kg)))  # query rows per step, when even one gallery item is large
    cols = max(1, _TOKEN_ELEMS // (rows * kq * kg))  # gallery items per step
    for a in range(0, r, rows):
        qa = q[a:a + rows].reshape(-1, d)
        ra = qa.shape[0] // kq
        for c in range(0, n, cols):
            gc = g[c:c + cols]
            cos = (qa @ gc.reshape(-1, d).T).view(ra, kq, gc.shape[0], kg)
            out[a:a + ra, c:c + gc.shape[0]] = cos.amax(dim=3).mean(dim=1)
    return out


def _tensor(x) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.dtype == torch.float32 else t.float()


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
