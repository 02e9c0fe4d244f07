"""embed_collm_queries (collm.txt eqs. 3–5, supp. 7.2): p(Φ(query)) of every benchmark query with a trained
CoLLM, keyed by query_id. `query` picks the LLEM query layout:

- "composed"  reference image f(v) + modification text (eq. 5): the CIR query
- "text"      the modification alone (eq. 4; the Image line dropped)
- "image"     the reference image alone (eq. 3; the Text line dropped)
"""

from __future__ import annotations

from typing import Literal

from cirflow.tasks.collm.embed_collm_gallery import CoLLMStage
from cirflow.tasks.collm.trained_encoder import TrainedModelParams, run_embed


class EmbedCoLLMQueriesParams(TrainedModelParams):
    query: Literal["composed", "text", "image"] = "composed"


class EmbedCoLLMQueries(CoLLMStage):
    name, version = "embed_collm_queries", "1"
    Params = EmbedCoLLMQueriesParams
    side = "queries"

    def needs_pixels(self, ctx) -> bool:
        return ctx.params.query != "text"

    def encode(self, ctx, model, rows, pixels):
        kind = ctx.params.query
        h = model.encode_image(pixels) if kind != "text" else None
        return model.encode_query(h, [r["modification"] for r in rows] if kind != "image" else None)


def run(store, bench, model: dict, model_dir: str, *, query: str = "composed", **kw):
    return run_embed(EmbedCoLLMQueries, store, bench, model, model_dir, params=EmbedCoLLMQueriesParams, query=query,
                     **kw)
