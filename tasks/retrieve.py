"""retrieve / fuse_scores: query features × gallery features → top-K rankings under the benchmark's rules
(CIRR reference removal and subset ranking, CIRCO raw top-50, Fashion-IQ per-category gallery, GeneCIS
per-sample candidates).

`retrieve` scores one pair of feature artifacts (T→I: composed-text features × image features; T→T: composed
text × gallery-caption features; ...). `fuse_scores` combines several pairs at the similarity level, so any two
stored retrieval variants can be fused without recomputing either: the rule is a parameter
(`cirflow.retrieval.fusion`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cirflow.retrieval.fusion import fuse
from cirflow.retrieval.rules import rank_queries, ranking_info, score_matrix
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.index import IndexConfig
from cirflow.schemas.tables import RANKINGS
from cirflow.storage import Artifact, ArtifactStore, begin

VERSION = "1"


@dataclass(frozen=True)
class ScoreTerm:
    """One similarity source: query features (keyed by query_id) against gallery features (keyed by image_id)."""

    queries: Artifact
    gallery: Artifact
    weight: float = 1.0


def run(store: ArtifactStore, bench: Artifact, query_emb: Artifact, image_emb: Artifact, *, k: int = 50,
        index: IndexConfig | None = None, circo_exclude_reference: bool = False) -> Artifact:
    index = index or IndexConfig()
    benchmark = bench.manifest.params["benchmark"]
    params = {"benchmark": benchmark, "k": k, "index": index,
              "circo_exclude_reference": circo_exclude_reference if benchmark == "circo" else None}
    run_ = begin(store, "retrieve", VERSION, params, inputs={"bench": bench, "queries": query_emb, "images": image_emb},
                 schemas={"data": RANKINGS})
    if run_.cached:
        return run_.artifact
    t0 = time.perf_counter()
    queries, (qemb,), ids, (gemb,), in_gallery, dropped = _aligned(bench, [ScoreTerm(query_emb, image_emb)])
    rankings = rank_queries(benchmark, queries, qemb, ids, gemb, in_gallery, k=k, index_cfg=index,
                            circo_exclude_reference=circo_exclude_reference)
    return _finish(run_, rankings, queries, in_gallery, dropped, time.perf_counter() - t0)


def fuse_scores(store: ArtifactStore, bench: Artifact, terms: list[ScoreTerm], *, rule: str = "weighted_sum",
                rule_params: dict | None = None, k: int = 50, circo_exclude_reference: bool = False) -> Artifact:
    """Similarity-level fusion: S = rule(S_1..S_n) with S_i = q_i · g_iᵀ; exact ranking of the fused scores."""
    if len(terms) < 1:
        raise CirflowError("fuse_scores needs at least one score term")
    benchmark = bench.manifest.params["benchmark"]
    params = {"benchmark": benchmark, "k": k, "rule": rule, "rule_params": rule_params or {},
              "weights": [t.weight for t in terms],
              "circo_exclude_reference": circo_exclude_reference if benchmark == "circo" else None}
    inputs = {"bench": bench} | {f"q{i}": t.queries for i, t in enumerate(terms)} | {
        f"g{i}": t.gallery for i, t in enumerate(terms)}
    run_ = begin(store, "fuse_scores", VERSION, params, inputs=inputs, schemas={"data": RANKINGS})
    if run_.cached:
        return run_.artifact
    t0 = time.perf_counter()
    queries, qembs, ids, gembs, in_gallery, dropped = _aligned(bench, terms)
    scores = fuse([score_matrix(q, g) for q, g in zip(qembs, gembs)], [t.weight for t in terms], rule,
                  rule_params or {})
    rankings = rank_queries(benchmark, queries, None, ids, None, in_gallery, k=k,
                            circo_exclude_reference=circo_exclude_reference, query_scores_override=scores)
    return _finish(run_, rankings, queries, in_gallery, dropped, time.perf_counter() - t0)


def _aligned(bench: Artifact, terms: list[ScoreTerm]):
    """Rows in the benchmark's query order; columns = images that have features in every term."""
    queries = bench.read("queries")
    qids = queries.column("query_id").to_pylist()
    images = bench.read("images", columns=["image_id", "in_gallery"])
    all_ids = images.column("image_id").to_pylist()
    flags = dict(zip(all_ids, images.column("in_gallery").to_pylist()))
    qembs, galleries = [], []
    for t in terms:
        ids, emb = t.queries.embeddings()
        row = {q: i for i, q in enumerate(ids)}
        missing = [q for q in qids if q not in row]
        if missing:
            raise CirflowError(f"{len(missing)} queries have no feature in {t.queries!r} (first: {missing[:3]})")
        qembs.append(emb[[row[q] for q in qids]])
        gids, gemb = t.gallery.embeddings()
        galleries.append(({g: i for i, g in enumerate(gids)}, gemb))
    # Images whose features failed (unreadable file, failed caption) were recorded upstream; they cannot be
    # ranked, so they leave the gallery here and the count is reported rather than hidden.
    present = [x for x in all_ids if all(x in rows for rows, _ in galleries)]
    gembs = [emb[[rows[x] for x in present]] for rows, emb in galleries]
    in_gallery = np.array([flags[x] for x in present], dtype=bool)
    return queries, qembs, present, gembs, in_gallery, len(all_ids) - len(present)


def _finish(run_, rankings, queries, in_gallery, dropped: int, seconds: float) -> Artifact:
    run_.write_table("data", rankings)
    info = ranking_info(rankings)
    return run_.finish(stats={"queries": queries.num_rows, "gallery": int(in_gallery.sum()),
                              "images_without_features": dropped, "search": info.get("search"),
                              "tie_rule": info.get("tie_rule")},
                       timings={"retrieve_seconds": round(seconds, 4)})
