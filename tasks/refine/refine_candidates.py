"""refine_candidates: hard negatives for every triplet of a refined benchmark (CoLLM supp. §8.2) = the
`hard_negatives` gallery images most similar to the target (cosine of encoder image features), the target and
the reference excluded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cirflow.schemas.refine import CANDIDATES, RefineOptions
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.refine.common import RefineStage, check_benchmark
from cirflow.tasks.stage import Context, Params, Runtime, execute


class CandidatesParams(Params):
    hard_negatives: int


class RefineCandidates(RefineStage):
    name, version = "refine_candidates", "1"
    Params = CandidatesParams
    inputs = ("bench", "image_emb")
    outputs = {"data": CANDIDATES}

    def items(self, ctx: Context):
        bench, image_emb = ctx.inputs["bench"], ctx.inputs["image_emb"]
        images = bench.read("images", columns=["image_id", "in_gallery"])
        in_gallery = dict(zip(images.column("image_id").to_pylist(), images.column("in_gallery").to_pylist()))
        ids, emb = image_emb.embeddings()
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        row_of = {i: r for r, i in enumerate(ids)}
        gallery = np.array([row_of[i] for i in ids if in_gallery.get(i)], dtype=np.int64)
        gallery_ids = [ids[r] for r in gallery]
        ctx.scratch.update(emb=emb, row_of=row_of, gallery_ids=gallery_ids, g=emb[gallery],
                           col_of={i: c for c, i in enumerate(gallery_ids)})
        return bench.read("queries", columns=["query_id", "reference_id", "target_ids"]).to_pylist()

    def compute(self, ctx: Context, queries):
        sc, rows = ctx.scratch, []
        for q in queries:
            target = q["target_ids"][0] if q["target_ids"] else None
            base = {"query_id": q["query_id"], "reference_id": q["reference_id"], "target_id": target,
                    "negatives": [], "similarities": [], "status": "failed", "error": None}
            if target is None:
                rows.append(base | {"error": "no target (split without ground truth)"})
                continue
            if target not in sc["row_of"]:
                rows.append(base | {"error": f"no image features for target {target} (see embed_images failures)"})
                continue
            sims = sc["g"] @ sc["emb"][sc["row_of"][target]]
            for excluded in (target, q["reference_id"]):
                if excluded in sc["col_of"]:
                    sims[sc["col_of"][excluded]] = -np.inf
            k = min(ctx.params.hard_negatives, int(np.isfinite(sims).sum()))
            top = np.argsort(-sims, kind="stable")[:k]
            if k < 1:
                rows.append(base | {"error": "gallery has no image besides the target and the reference"})
                continue
            rows.append(base | {"negatives": [sc["gallery_ids"][c] for c in top],
                                "similarities": [float(sims[c]) for c in top], "status": "ok"})
        return pa.Table.from_pylist(rows, schema=CANDIDATES)

    def stats(self, ctx: Context) -> dict:
        t = ctx.run.committed("data", columns=["status"])
        failed = sum(s != "ok" for s in t.column("status").to_pylist())
        return {"queries": t.num_rows, "failed": failed, "gallery": len(ctx.scratch["gallery_ids"])}


def candidates(store: ArtifactStore, bench: Artifact, image_emb: Artifact, opts: RefineOptions, *,
               shard_size: int = 4096) -> Artifact:
    """Per query: the `hard_negatives` gallery images most similar to the target (reference and target
    excluded). Queries whose target or features are missing get status "failed"."""
    check_benchmark(bench)
    return execute(RefineCandidates, store, {"bench": bench, "image_emb": image_emb},
                   CandidatesParams(hard_negatives=opts.hard_negatives), Runtime(shard_size=shard_size))
