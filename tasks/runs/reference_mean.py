"""reference_mean (CIReVL on GeneCIS focus_attribute, metrics-and-methods B.3): the query feature becomes the
normalised mean of the normalised text query feature and the normalised feature of the query's reference image,

    q' = norm( (norm(q) + norm(f_ref)) / 2 )

as CIReVL's main.py does for `genecis_focus_attribute` only ("focus on the attribute of the object shown"
needs the object's appearance, which the rewritten caption alone does not carry). Writes ordinary query
features (id = query_id), so `retrieve` uses them like any other. A query whose reference has no image
feature (the image could not be read) keeps its text feature, counted in `queries_without_reference`.
"""

from __future__ import annotations

import numpy as np

from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.embeddings import embeddings_output, embeddings_table
from cirflow.tasks.stage import Context, Params, Stage, execute


class ReferenceMeanParams(Params):
    pass  # nothing to choose: the mean of two unit vectors, re-normalised


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


class ReferenceMean(Stage):
    """queries: text query features (id = query_id); images: image features of the benchmark (id = image_id)."""

    name, version = "reference_mean", "1"
    Params = ReferenceMeanParams
    inputs = ("bench", "queries", "images")
    outputs = {"data": embeddings_output}

    def produce(self, ctx: Context) -> None:
        q = ctx.inputs["bench"].read("queries", columns=["query_id", "reference_id"]).to_pylist()
        qids, qemb = ctx.inputs["queries"].embeddings()
        iids, iemb = ctx.inputs["images"].embeddings()
        text = dict(zip(qids, _unit(np.asarray(qemb, np.float32))))
        image = dict(zip(iids, _unit(np.asarray(iemb, np.float32))))
        ids, rows, missing = [], [], 0
        for r in q:
            t = text.get(r["query_id"])
            if t is None:  # no text query feature: nothing to average (retrieve reports the query as missing)
                continue
            ref = image.get(r["reference_id"])
            missing += ref is None
            ids.append(r["query_id"])
            rows.append(t if ref is None else _unit((t + ref) / 2))
        dim = qemb.shape[1] if len(qids) else iemb.shape[1]
        ctx.write_table("data", embeddings_table(ids, np.asarray(rows, np.float32).reshape(len(ids), dim)))
        ctx.scratch["stats"] = {"queries": len(ids), "queries_without_reference": int(missing)}

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch["stats"]


def run(store: ArtifactStore, bench: Artifact, queries: Artifact, images: Artifact) -> Artifact:
    return execute(ReferenceMean, store, {"bench": bench, "queries": queries, "images": images}, ReferenceMeanParams())
