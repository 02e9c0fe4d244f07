"""ldre_query (LDRE, metrics-and-methods B.2): the weighted ensemble of the n edited-caption features of each
query, weights from how much each caption slot's edit moves gallery similarities (semantic relevance).
Writes ordinary query features, so `retrieve` and `fuse_scores` use them like any other."""

from __future__ import annotations

import numpy as np

from cirflow.retrieval.ldre import ldre_mean_query, ldre_query, ldre_weights
from cirflow.schemas.config import LDREConfig
from cirflow.storage import Artifact, ArtifactStore, begin
from cirflow.tasks.embed import embeddings_table
from cirflow.tasks.slots import slot_features

STAGE = "ldre_query"
VERSION = "1"


def run(store: ArtifactStore, bench: Artifact, edited: Artifact, originals: Artifact, gallery: Artifact,
        cfg: LDREConfig) -> Artifact:
    """edited: embed_texts(samples="each") of the rewrites (id = query_id); originals: embed_texts(kind="image",
    samples="each") of the reference captions (id = image_id); gallery: image features."""
    params = {"weighting": cfg.weighting, "n": cfg.n_captions,
              **({"k": cfg.k, "temperature": cfg.temperature, "per_query": cfg.per_query}
                 if cfg.weighting == "ensemble" else {})}
    run_ = begin(store, STAGE, VERSION, params,
                 inputs={"bench": bench, "edited": edited, "originals": originals, "gallery": gallery})
    if run_.cached:
        return run_.artifact
    queries = bench.read("queries", columns=["query_id", "reference_id"])
    qids, refs = queries.column("query_id").to_pylist(), queries.column("reference_id").to_pylist()
    f_t, filled_t = slot_features(edited, qids, cfg.n_captions)
    stats = {"queries": len(qids), "filled_edit_slots": filled_t}
    if cfg.weighting == "mean":
        q = ldre_mean_query(f_t)
    else:
        f_o, filled_o = slot_features(originals, refs, cfg.n_captions)
        images = bench.read("images", columns=["image_id", "in_gallery"])
        gids, gemb = gallery.embeddings()
        flags = dict(zip(images.column("image_id").to_pylist(), images.column("in_gallery").to_pylist()))
        # GeneCIS has no global gallery: its candidates stand in for it
        keep = [i for i, g in enumerate(gids) if flags.get(g)] or list(range(len(gids)))
        w = ldre_weights(f_t, f_o, gemb[keep], k=cfg.k, temperature=cfg.temperature, per_query=cfg.per_query)
        q = ldre_query(f_t, w)
        stats |= {"filled_caption_slots": filled_o,
                  "weights": np.round(np.asarray(w), 6).tolist() if not cfg.per_query else "per query"}
    run_.write_table("data", embeddings_table(qids, np.asarray(q, np.float32)))
    return run_.finish(stats=stats)
