"""retrieve: query features × gallery features → top-K rankings under the benchmark's rules (CIRR reference
removal and subset ranking, CIRCO raw top-50, Fashion-IQ per-category gallery, GeneCIS per-sample candidates).

`retrieve` scores one pair of feature artifacts (T→I: composed-text features × image features; T→T: composed
text × gallery-caption features; ...). `ScoreTerm`, `aligned` and `write_rankings` are shared with
`fuse_scores` (tasks/runs/fuse_scores.py), which combines several pairs at the similarity level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cirflow.retrieval.rules import rank_queries, ranking_info
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.index import IndexConfig
from cirflow.schemas.tables import RANKINGS
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.stage import Context, Params, Stage, execute


@dataclass(frozen=True)
class ScoreTerm:
    """One similarity source: query features (keyed by query_id) against gallery features (keyed by image_id)."""

    queries: Artifact
    gallery: Artifact
    weight: float = 1.0


class RetrieveParams(Params):
    benchmark: str
    k: int
    index: IndexConfig
    circo_exclude_reference: bool | None  # CIRCO only (None elsewhere: it changes nothing there)


class Retrieve(Stage):
    name, version = "retrieve", "1"
    Params = RetrieveParams
    inputs = ("bench", "queries", "images")
    outputs = {"data": RANKINGS}

    def produce(self, ctx: Context) -> None:
        p, i = ctx.params, ctx.inputs
        t0 = time.perf_counter()
        term = ScoreTerm(i["queries"], i["images"])
        queries, (qemb,), ids, (gemb,), in_gallery, dropped = aligned(i["bench"], [term])
        rankings = rank_queries(p.benchmark, queries, qemb, ids, gemb, in_gallery, k=p.k, index_cfg=p.index,
                                circo_exclude_reference=bool(p.circo_exclude_reference))
        write_rankings(ctx, rankings, queries, in_gallery, dropped, time.perf_counter() - t0)

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch["stats"]

    def timings(self, ctx: Context) -> dict:
        return ctx.scratch["timings"]


def run(store: ArtifactStore, bench: Artifact, query_emb: Artifact, image_emb: Artifact, *, k: int = 50,
        index: IndexConfig | None = None, circo_exclude_reference: bool = False) -> Artifact:
    benchmark = bench.manifest.params["benchmark"]
    params = RetrieveParams(benchmark=benchmark, k=k, index=index or IndexConfig(),
                            circo_exclude_reference=circo_exclude_reference if benchmark == "circo" else None)
    return execute(Retrieve, store, {"bench": bench, "queries": query_emb, "images": image_emb}, params)


def aligned(bench: Artifact, terms: list[ScoreTerm]):
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


def write_rankings(ctx: Context, rankings, queries, in_gallery, dropped: int, seconds: float) -> None:
    ctx.write_table("data", rankings)
    info = ranking_info(rankings)
    ctx.scratch["stats"] = {"queries": queries.num_rows, "gallery": int(in_gallery.sum()),
                            "images_without_features": dropped, "search": info.get("search"),
                            "tie_rule": info.get("tie_rule")}
    ctx.scratch["timings"] = {"retrieve_seconds": round(seconds, 4)}
