"""retrieve_tokens: exact token-level top-K (mvft-ji.txt eqs. 11-12) of one query feature set against the image
token features, under the benchmark's rules (reference removal, CIRR subsets, Fashion-IQ gallery, GeneCIS
candidates), written as the RANKINGS table `retrieve` writes, so `evaluate` scores it unchanged.

Modes with one score term (retrieval/joint.py): "composed" (ŝ; table 4 "w/o s̃"), "target_text" (s̃; table 4
"w/o ŝ", appendix C "Target Text"), "image_only", "text_only", "image_text" (appendix C). Inputs: `bench`,
`images` (embed_tokens_images) and the mode's query features by name (`composed`, `target_text`, `reference`,
`modification`). The two-term joint score is `joint_fusion`.
"""

from __future__ import annotations

import time

import numpy as np

from cirflow.retrieval.joint import rank_joint, required_features
from cirflow.retrieval.rules import ranking_info
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.tables import RANKINGS
from cirflow.tasks.mvft.tokens import read_tokens
from cirflow.tasks.stage import Context, Params, Stage


class RetrieveTokensParams(Params):
    benchmark: str
    mode: str
    k: int = 50
    circo_exclude_reference: bool | None = None


def rank(ctx: Context, mode: str, lam: float = 1.0) -> None:
    """Rank the benchmark's queries by the mode's token-level score and write the RANKINGS table."""
    p, i = ctx.params, ctx.inputs
    t0 = time.perf_counter()
    bench = i["bench"]
    queries = bench.read("queries")
    qids = queries.column("query_id").to_pylist()
    feats = {}
    for name in required_features(mode):
        ids, x = read_tokens(i[name])
        row = {q: n for n, q in enumerate(ids)}
        missing = [q for q in qids if q not in row]
        if missing:
            raise CirflowError(f"{len(missing)} queries have no {name} features (first: {missing[:3]})")
        feats[name] = x[[row[q] for q in qids]]
    gids, gx = read_tokens(i["images"])
    images = bench.read("images", columns=["image_id", "in_gallery"])
    flags = dict(zip(images.column("image_id").to_pylist(), images.column("in_gallery").to_pylist()))
    keep = [n for n, g in enumerate(gids) if g in flags]
    ids = [gids[n] for n in keep]
    in_gallery = np.array([flags[g] for g in ids], dtype=bool)
    rankings = rank_joint(p.benchmark, queries, mode, feats, ids, gx[keep], in_gallery, lam=lam, k=p.k,
                          circo_exclude_reference=bool(p.circo_exclude_reference))
    ctx.write_table("data", rankings)
    info = ranking_info(rankings)
    ctx.scratch["stats"] = {"queries": queries.num_rows, "gallery": int(in_gallery.sum()), "mode": mode,
                            "images_without_features": len(flags) - len(ids), "search": info.get("search"),
                            "tie_rule": info.get("tie_rule")}
    ctx.scratch["timings"] = {"retrieve_seconds": round(time.perf_counter() - t0, 4)}


class RetrieveTokens(Stage):
    name, version = "retrieve_tokens", "1"
    Params = RetrieveTokensParams
    inputs = ("bench", "images")  # + the mode's query features by name
    outputs = {"data": RANKINGS}

    def produce(self, ctx: Context) -> None:
        if ctx.params.mode == "joint":
            raise CirflowError("retrieve_tokens ranks one score term; the joint score is the joint_fusion stage")
        rank(ctx, ctx.params.mode)

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch.get("stats") or {}

    def timings(self, ctx: Context) -> dict:
        return ctx.scratch.get("timings") or {}


def run(store, bench, images, feats: dict, mode: str, *, k: int = 50, circo_exclude_reference: bool = False):
    """`feats`: the mode's query-feature artifacts by name (retrieval.joint.MODES)."""
    from cirflow.tasks.stage import execute

    benchmark = bench.manifest.params["benchmark"]
    params = RetrieveTokensParams(benchmark=benchmark, mode=mode, k=k,
                                  circo_exclude_reference=circo_exclude_reference if benchmark == "circo" else None)
    return execute(RetrieveTokens, store, {"bench": bench, "images": images} | {n: feats[n] for n in
                                                                               required_features(mode)}, params)
