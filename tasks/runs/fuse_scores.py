"""fuse_scores: several stored (query features, gallery features) pairs → one top-K ranking, fused at the
similarity level, so any two stored retrieval variants can be fused without recomputing either: the rule is a
parameter (`cirflow.retrieval.fusion`). Ranking rules and alignment are retrieve's (tasks/runs/retrieve.py).
"""

from __future__ import annotations

import time

from cirflow.retrieval.fusion import fuse
from cirflow.retrieval.rules import rank_queries, score_matrix
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.tables import RANKINGS
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.runs.retrieve import Retrieve, ScoreTerm, aligned, write_rankings
from cirflow.tasks.stage import Context, Params, Stage, execute


class FuseScoresParams(Params):
    benchmark: str
    k: int
    rule: str
    rule_params: dict
    weights: list[float]
    circo_exclude_reference: bool | None


class FuseScores(Stage):
    """Inputs: `bench`, and per score term i its query features `q<i>` and gallery features `g<i>`."""

    name, version = "fuse_scores", "1"
    Params = FuseScoresParams
    inputs = ("bench",)
    outputs = {"data": RANKINGS}

    def produce(self, ctx: Context) -> None:
        p, i = ctx.params, ctx.inputs
        terms = [ScoreTerm(i[f"q{n}"], i[f"g{n}"], w) for n, w in enumerate(p.weights)]
        t0 = time.perf_counter()
        queries, qembs, ids, gembs, in_gallery, dropped = aligned(i["bench"], terms)
        scores = fuse([score_matrix(q, g) for q, g in zip(qembs, gembs)], p.weights, p.rule, p.rule_params)
        rankings = rank_queries(p.benchmark, queries, None, ids, None, in_gallery, k=p.k,
                                circo_exclude_reference=bool(p.circo_exclude_reference), query_scores_override=scores)
        write_rankings(ctx, rankings, queries, in_gallery, dropped, time.perf_counter() - t0)

    stats, timings = Retrieve.stats, Retrieve.timings


def fuse_scores(store: ArtifactStore, bench: Artifact, terms: list[ScoreTerm], *, rule: str = "weighted_sum",
                rule_params: dict | None = None, k: int = 50, circo_exclude_reference: bool = False) -> Artifact:
    """Similarity-level fusion: S = rule(S_1..S_n) with S_i = q_i · g_iᵀ; exact ranking of the fused scores."""
    if len(terms) < 1:
        raise CirflowError("fuse_scores needs at least one score term")
    benchmark = bench.manifest.params["benchmark"]
    params = FuseScoresParams(benchmark=benchmark, k=k, rule=rule, rule_params=rule_params or {},
                              weights=[t.weight for t in terms],
                              circo_exclude_reference=circo_exclude_reference if benchmark == "circo" else None)
    inputs = {"bench": bench} | {f"q{i}": t.queries for i, t in enumerate(terms)} | {
        f"g{i}": t.gallery for i, t in enumerate(terms)}
    return execute(FuseScores, store, inputs, params)
