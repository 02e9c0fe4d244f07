"""embed_instructcir_queries (instructcir.txt eqs. 1, 3): the query feature of every benchmark query — e_r of the
reformulation network (stage one), or e_f = λ·e_r + (1 − λ)·φ_t(t) of the combiner (stage two) — keyed by
query_id."""

from __future__ import annotations

from cirflow.tasks.collm.trained_encoder import run_embed
from cirflow.tasks.instructcir.embed_instructcir_gallery import InstructCIRStage


class EmbedInstructCIRQueries(InstructCIRStage):
    name, version = "embed_instructcir_queries", "1"
    side = "queries"

    def encode(self, ctx, model, rows, pixels):
        return model.encode_query(pixels, [r["modification"] for r in rows])


def run(store, bench, model: dict, model_dir: str, **kw):
    return run_embed(EmbedInstructCIRQueries, store, bench, model, model_dir, **kw)
