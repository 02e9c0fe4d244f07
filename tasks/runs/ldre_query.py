"""ldre_query (LDRE, metrics-and-methods B.2): the weighted ensemble of the n edited-caption features of each
query, weights from how much each caption slot's edit moves gallery similarities (semantic relevance).
Writes ordinary query features, so `retrieve` and `fuse_scores` use them like any other."""

from __future__ import annotations

import numpy as np

from cirflow.retrieval.ldre import ldre_mean_query, ldre_query, ldre_weights
from cirflow.schemas.config import LDREConfig
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.embeddings import embeddings_output, embeddings_table
from cirflow.tasks.slots import slot_features
from cirflow.tasks.stage import Context, Params, Stage, execute


class LDREQueryParams(Params):
    weighting: str
    n: int
    k: int | None = None  # k, temperature, per_query: the ensemble weighting only
    temperature: float | None = None
    per_query: bool | None = None


class LDREQuery(Stage):
    """edited: embed_texts(samples="each") of the rewrites (id = query_id); originals: embed_texts(kind="image",
    samples="each") of the reference captions (id = image_id); gallery: image features."""

    name, version = "ldre_query", "1"
    Params = LDREQueryParams
    inputs = ("bench", "edited", "originals", "gallery")
    outputs = {"data": embeddings_output}

    def produce(self, ctx: Context) -> None:
        p, bench = ctx.params, ctx.inputs["bench"]
        queries = bench.read("queries", columns=["query_id", "reference_id"])
        qids, refs = queries.column("query_id").to_pylist(), queries.column("reference_id").to_pylist()
        f_t, filled_t = slot_features(ctx.inputs["edited"], qids, p.n)
        stats = {"queries": len(qids), "filled_edit_slots": filled_t}
        if p.weighting == "mean":
            q = ldre_mean_query(f_t)
        else:
            f_o, filled_o = slot_features(ctx.inputs["originals"], refs, p.n)
            images = bench.read("images", columns=["image_id", "in_gallery"])
            gids, gemb = ctx.inputs["gallery"].embeddings()
            flags = dict(zip(images.column("image_id").to_pylist(), images.column("in_gallery").to_pylist()))
            # GeneCIS has no global gallery: its candidates stand in for it
            keep = [i for i, g in enumerate(gids) if flags.get(g)] or list(range(len(gids)))
            w = ldre_weights(f_t, f_o, gemb[keep], k=p.k, temperature=p.temperature, per_query=p.per_query)
            q = ldre_query(f_t, w)
            stats |= {"filled_caption_slots": filled_o,
                      "weights": np.round(np.asarray(w), 6).tolist() if not p.per_query else "per query"}
        ctx.write_table("data", embeddings_table(qids, np.asarray(q, np.float32)))
        ctx.scratch["stats"] = stats

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch["stats"]


def run(store: ArtifactStore, bench: Artifact, edited: Artifact, originals: Artifact, gallery: Artifact,
        cfg: LDREConfig) -> Artifact:
    cfg = cfg.resolved("ldre", bench.manifest.params["benchmark"])  # no-op for a config the flow resolved
    ensemble = {"k": cfg.k, "temperature": cfg.temperature, "per_query": cfg.per_query} \
        if cfg.weighting == "ensemble" else {}
    return execute(LDREQuery, store, {"bench": bench, "edited": edited, "originals": originals, "gallery": gallery},
                   LDREQueryParams(weighting=cfg.weighting, n=cfg.n_captions, **ensemble))
