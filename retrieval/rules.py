"""Benchmark retrieval rules: from query/image similarities to a RANKINGS table (metrics-and-methods A).

- CIRR: rank the gallery with the reference masked to -inf (so top-k lists are reference-free, SEARLE's
  "remove the reference" semantics); subset_ids = the img_set members other than the reference, ranked.
- CIRCO: raw top-k over the gallery, reference kept (every reference implementation does so); the opt-in
  `circo_exclude_reference` removes it and is recorded in the metadata, since it is a protocol deviation.
- Fashion-IQ: raw top-k over the gallery given by `in_gallery` (the caller passes one category at a time).
- GeneCIS: each sample ranks its own candidate_ids ([target] + gallery); ranked_ids are candidate positions
  as strings ("0" = target) and all candidates are ranked.

Tie rules (deterministic, written into the metadata):
- gallery rankings and the CIRR subset: score descending, then image index ascending (IMAGES table order);
- GeneCIS: score descending, then candidate position *descending*, so on equal scores the target ranks last:
  a degenerate model that scores everything equally gets Recall@1 = 0, never a free hit.

Images absent from image_ids (the retrieve stage leaves out images that failed to embed) cannot be scored:
they get score -inf, so a missing CIRR member or GeneCIS candidate ranks last (a missing target is a miss,
never a crash or a silent hit), and a missing reference needs no removal. Their count is in the metadata.

The table's schema metadata (key b"cirflow.ranking", JSON; read it with `ranking_info`) records which search
produced the lists: {"search": {"kind": "exact" | "flat" | "ivf" | "hnsw", "approximate": bool, "gpu": bool, ...},
"benchmark", "k", "reference_removed", "circo_exclude_reference", "tie_rule", "scores", "missing_images"}. Parquet written with
pyarrow keeps it; polars drops schema metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from cirflow.schemas.errors import CirflowError, ConfigError
from cirflow.schemas.index import IndexConfig
from cirflow.schemas.tables import RANKINGS

META_KEY = b"cirflow.ranking"
GALLERY_TIE_RULE = "score desc, then image index asc"
GENECIS_TIE_RULE = "score desc, then candidate position desc (target last on ties)"


def benchmark_family(name: str) -> str:
    """'cirr' | 'circo' | 'fashioniq' | 'genecis' from a benchmark name such as 'cirr', 'FIQ', 'genecis/focus_object'."""
    n = name.lower().replace("-", "").replace("_", "")
    for prefix, family in (("circo", "circo"), ("cirr", "cirr"), ("fashioniq", "fashioniq"), ("fiq", "fashioniq"),
                           ("genecis", "genecis")):
        if n.startswith(prefix):
            return family
    raise ConfigError(f"unknown benchmark {name!r}: expected cirr, circo, fashioniq or genecis")


def score_matrix(query_emb: np.ndarray, image_emb: np.ndarray, *, chunk: int = 1024, device=None) -> np.ndarray:
    """Full similarity matrix [nQ, nImages] float32 (for fusion stages; CIRCO scale is 800 x 123k = 400 MB)."""
    # torch (and retrieval.topk) inside the functions that rank: `cirflow run --plan` imports this module
    # through the stages, and must not pay ~2 s for torch
    import torch

    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.from_numpy(np.ascontiguousarray(image_emb, dtype=np.float32)).to(dev)
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    out = np.empty((len(q), len(g)), np.float32)
    for lo in range(0, len(q), chunk):
        out[lo : lo + chunk] = (torch.from_numpy(q[lo : lo + chunk]).to(dev) @ g.T).cpu().numpy()
    return out


def rank_queries(
    benchmark: str,
    queries: pa.Table,
    query_emb: np.ndarray | None,
    image_ids: Sequence[str],
    image_emb: np.ndarray | None,
    in_gallery: np.ndarray,
    *,
    k: int = 50,
    index_cfg: IndexConfig | None = None,
    circo_exclude_reference: bool = False,
    query_scores_override: np.ndarray | None = None,
) -> pa.Table:
    """RANKINGS table for `queries` (rows aligned with query_emb) against the benchmark's images.

    query_scores_override: a ready [nQ, nImages] similarity matrix (columns in image_ids order, e.g. fused
    scores); when given, the embeddings are not used and the ranking is exact.
    """
    if query_scores_override is not None:
        return rank_from_scores(benchmark, queries, query_scores_override, image_ids, in_gallery, k=k,
                                circo_exclude_reference=circo_exclude_reference)
    cfg = index_cfg or IndexConfig()
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    g = np.ascontiguousarray(image_emb, dtype=np.float32)
    _check_rows(queries, len(q), "query_emb")
    if len(g) != len(image_ids):
        raise ValueError(f"image_emb has {len(g)} rows for {len(image_ids)} image_ids")
    return _rank(benchmark, queries, _EmbeddingScores(q, g), image_ids, in_gallery, k, cfg, circo_exclude_reference)


def rank_from_scores(
    benchmark: str,
    queries: pa.Table,
    scores: np.ndarray,
    image_ids: Sequence[str],
    in_gallery: np.ndarray,
    *,
    k: int = 50,
    circo_exclude_reference: bool = False,
) -> pa.Table:
    """Same rules on a precomputed similarity matrix [nQ, nImages] (columns in image_ids order); always exact."""
    s = np.asarray(scores, dtype=np.float32)
    _check_rows(queries, len(s), "scores")
    if s.shape[1] != len(image_ids):
        raise ValueError(f"scores has {s.shape[1]} columns for {len(image_ids)} image_ids")
    return _rank(benchmark, queries, _MatrixScores(s), image_ids, in_gallery, k, IndexConfig(), circo_exclude_reference)


def rank_with_source(
    benchmark: str,
    queries: pa.Table,
    source,
    image_ids: Sequence[str],
    in_gallery: np.ndarray,
    *,
    k: int = 50,
    circo_exclude_reference: bool = False,
) -> pa.Table:
    """Same rules on another score source, e.g. token-level scores (retrieval/token_topk.py). `source` has
    `kind` (str, recorded as "scores"), `n_queries`, `pairs(qi, cols) -> float32 [len(cols)]` and
    `gallery_topk(gallery_idx, k, exclude, cfg) -> (scores [nQ, k], gallery positions [nQ, k], search dict)`."""
    _check_rows(queries, source.n_queries, "scores")
    return _rank(benchmark, queries, source, image_ids, in_gallery, k, IndexConfig(), circo_exclude_reference)


def ranking_info(table: pa.Table) -> dict:
    """The retrieval metadata rank_queries attached to a RANKINGS table (empty dict if absent)."""
    meta = table.schema.metadata or {}
    return json.loads(meta[META_KEY]) if META_KEY in meta else {}


# ---- score sources: embeddings (q . g) or a precomputed matrix ------------------------------------------------


class _EmbeddingScores:
    kind = "embeddings"

    def __init__(self, q: np.ndarray, g: np.ndarray):
        self.q, self.g = q, g

    def pairs(self, qi: int, cols: np.ndarray) -> np.ndarray:
        return self.g[cols] @ self.q[qi]

    def gallery_topk(self, gallery_idx, k, exclude, cfg: IndexConfig):
        g = self.g if len(gallery_idx) == len(self.g) else self.g[gallery_idx]
        if cfg.kind == "exact":
            import torch

            from cirflow.retrieval.topk import topk

            s, i = topk(self.q, g, k, exclude=exclude)
            return s, i, {"kind": "exact", "approximate": False, "gpu": torch.cuda.is_available()}
        return _faiss_topk(self.q, g, k, exclude, cfg)


class _MatrixScores:
    kind = "matrix"

    def __init__(self, s: np.ndarray):
        self.s = s

    def pairs(self, qi: int, cols: np.ndarray) -> np.ndarray:
        return self.s[qi, cols]

    def gallery_topk(self, gallery_idx, k, exclude, cfg: IndexConfig):
        s = self.s if len(gallery_idx) == self.s.shape[1] else self.s[:, gallery_idx]
        import torch

        from cirflow.retrieval.topk import topk_scores

        sc, i = topk_scores(s, k, exclude=exclude)
        return sc, i, {"kind": "exact", "approximate": False, "gpu": torch.cuda.is_available()}


def _faiss_topk(q, g, k, exclude, cfg: IndexConfig):
    from cirflow.retrieval.index import build_index, describe_index, search

    index = build_index(g, cfg)
    extra = 0 if exclude is None else 1  # one excluded image per query at most (the reference)
    s, i = search(index, q, k + extra)
    if exclude is not None:
        drop = (i == exclude[:, None]) & (exclude[:, None] >= 0)
        # keep the first k surviving entries of each row; -1 ids (IVF/HNSW padding) are dropped by the caller
        keep = ~drop & (np.cumsum(~drop, axis=1) <= k)
        s = np.stack([row[m][:k] for row, m in zip(s, keep)]) if len(s) else s[:, :k]
        i = np.stack([row[m][:k] for row, m in zip(i, keep)]) if len(i) else i[:, :k]
    return s, i, describe_index(index, cfg)


# ---- the rules ------------------------------------------------------------------------------------------------


def _rank(benchmark, queries, source, image_ids, in_gallery, k, cfg, circo_exclude_reference) -> pa.Table:
    family = benchmark_family(benchmark)
    ids = np.asarray([str(x) for x in image_ids], dtype=object)
    pos = _Lookup(ids)
    meta = {"benchmark": family, "benchmark_name": benchmark, "k": int(k), "scores": source.kind,
            "reference_removed": family == "cirr" or (family == "circo" and circo_exclude_reference),
            "circo_exclude_reference": bool(circo_exclude_reference) if family == "circo" else None}
    qids = [str(x) for x in queries.column("query_id").to_pylist()]
    if family == "genecis":
        ranked, scores = _genecis(queries, source, pos)
        subset = [[] for _ in qids]
        meta |= {"k": None, "search": {"kind": "exact", "per_sample": True, "approximate": False},
                 "tie_rule": GENECIS_TIE_RULE}
    else:
        ranked, scores, subset, search = _gallery(family, queries, source, ids, pos, in_gallery, k, cfg,
                                                  meta["reference_removed"])
        meta |= {"search": search, "tie_rule": GALLERY_TIE_RULE}
    meta["missing_images"] = len(pos.missing)  # referenced ids absent from image_ids, scored -inf
    meta["missing_examples"] = sorted(pos.missing)[:5]
    table = pa.table(
        {"query_id": qids, "ranked_ids": ranked, "scores": scores, "subset_ids": subset}, schema=RANKINGS
    )
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})


def _gallery(family, queries, source, ids, pos, in_gallery, k, cfg, remove_reference):
    gallery_mask = np.asarray(in_gallery, dtype=bool)
    if len(gallery_mask) != len(ids):
        raise ValueError(f"in_gallery has {len(gallery_mask)} entries for {len(ids)} image_ids")
    gallery_idx = np.flatnonzero(gallery_mask)
    if len(gallery_idx) == 0:
        raise CirflowError(f"{family}: the gallery is empty (no image has in_gallery = true)")
    refs = [str(r) for r in queries.column("reference_id").to_pylist()]
    exclude = None
    k_sel = min(int(k), len(gallery_idx))
    if remove_reference:
        # reference position inside the gallery (-1 when the reference is not a gallery image: nothing to remove)
        in_gal_pos = np.full(len(ids), -1, np.int64)
        in_gal_pos[gallery_idx] = np.arange(len(gallery_idx))
        # (a reference absent from image_ids cannot be ranked either: nothing to remove)
        exclude = np.array([in_gal_pos[i] if (i := pos(r)) >= 0 else -1 for r in refs], dtype=np.int64)
        if (exclude >= 0).any():
            k_sel = min(int(k), len(gallery_idx) - 1)  # never let a masked -inf reference fill the last slot
    s, gi, search = source.gallery_topk(gallery_idx, k_sel, exclude, cfg)
    ranked, scores = [], []
    for row_s, row_i in zip(s, gi):
        ok = row_i >= 0  # FAISS pads with -1 when an approximate search finds fewer than k
        ranked.append(ids[gallery_idx[row_i[ok]]].tolist())
        scores.append(row_s[ok].tolist())
    subset = [[] for _ in refs]
    if family == "cirr":
        subset = [_cirr_subset(qi, refs[qi], m, source, pos) for qi, m in enumerate(queries.column("members").to_pylist())]
    return ranked, scores, subset, search


def _cirr_subset(qi: int, ref: str, members, source, pos) -> list[str]:
    others = [str(m) for m in (members or []) if str(m) != ref]
    if not others:
        return []
    cols = np.array([pos(m) for m in others], dtype=np.int64)
    s = pos.scores(source, qi, cols)
    # score desc, then image index asc (absent members: -inf, last, in annotation order)
    order = np.lexsort((np.where(cols >= 0, cols, np.iinfo(np.int64).max), -s.astype(np.float64)))
    return [others[j] for j in order]


def _genecis(queries, source, pos):
    ranked, scores = [], []
    for qi, cands in enumerate(queries.column("candidate_ids").to_pylist()):
        if not cands:
            raise CirflowError(f"genecis query row {qi}: candidate_ids is empty")
        cols = np.array([pos(c) for c in cands], dtype=np.int64)
        s = pos.scores(source, qi, cols)
        positions = np.arange(len(cols))
        order = np.lexsort((-positions, -s.astype(np.float64)))  # score desc, then position desc
        ranked.append([str(p) for p in positions[order]])
        scores.append(s[order].tolist())
    return ranked, scores


class _Lookup:
    """image_id -> row in image_ids; ids that are absent (e.g. images that failed to embed) map to -1 and are
    counted, so the metadata shows how many referenced images could not be scored."""

    def __init__(self, ids: np.ndarray):
        self.pos = {x: i for i, x in enumerate(ids)}
        if len(self.pos) != len(ids):
            raise CirflowError("image_ids contains duplicates: every image must appear once in the IMAGES table")
        self.missing: set[str] = set()

    def __call__(self, image_id) -> int:
        i = self.pos.get(str(image_id), -1)
        if i < 0:
            self.missing.add(str(image_id))
        return i

    def scores(self, source, qi: int, cols: np.ndarray) -> np.ndarray:
        """Similarities of query qi to image rows `cols`; -inf for absent images (they rank last)."""
        out = np.full(len(cols), -np.inf, np.float32)
        ok = cols >= 0
        if ok.any():
            out[ok] = source.pairs(qi, cols[ok])
        return out


def _check_rows(queries: pa.Table, n: int, what: str) -> None:
    if queries.num_rows != n:
        raise ValueError(f"{what} has {n} rows for {queries.num_rows} queries")
