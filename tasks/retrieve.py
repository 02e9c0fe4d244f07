"""retrieve: query features × gallery features → top-K rankings under the benchmark's rules
(CIRR reference removal and subset ranking, CIRCO raw top-50, Fashion-IQ per-category gallery, GeneCIS
per-sample candidates). Exact inner product by default; FAISS IVF/HNSW for very large galleries.
"""

from __future__ import annotations

import time

import numpy as np

from cirflow.retrieval.rules import rank_queries
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.index import IndexConfig
from cirflow.schemas.tables import RANKINGS
from cirflow.storage import Artifact, ArtifactStore, begin

STAGE = "retrieve"
VERSION = "1"


def run(store: ArtifactStore, bench: Artifact, query_emb: Artifact, image_emb: Artifact, *, k: int = 50,
        index: IndexConfig | None = None, circo_exclude_reference: bool = False) -> Artifact:
    index = index or IndexConfig()
    benchmark = bench.manifest.params["benchmark"]
    params = {"benchmark": benchmark, "k": k, "index": index,
              "circo_exclude_reference": circo_exclude_reference if benchmark == "circo" else None}
    run_ = begin(store, STAGE, VERSION, params, inputs={"bench": bench, "queries": query_emb, "images": image_emb},
                 schemas={"data": RANKINGS})
    if run_.cached:
        return run_.artifact
    t0 = time.perf_counter()
    queries = bench.read("queries")
    images = bench.read("images", columns=["image_id", "in_gallery"])
    qids, qemb = query_emb.embeddings()
    q_row = {q: i for i, q in enumerate(qids)}
    missing = [q for q in queries.column("query_id").to_pylist() if q not in q_row]
    if missing:
        raise CirflowError(f"retrieve: {len(missing)} queries have no feature (first: {missing[:3]})")
    qemb = qemb[[q_row[q] for q in queries.column("query_id").to_pylist()]]
    # Images that failed to embed were recorded upstream; they cannot be ranked, so they leave the gallery here
    # and the count is reported rather than hidden.
    iids, iemb = image_emb.embeddings()
    i_row = {x: i for i, x in enumerate(iids)}
    all_ids = images.column("image_id").to_pylist()
    present = [x for x in all_ids if x in i_row]
    gallery_flag = dict(zip(all_ids, images.column("in_gallery").to_pylist()))
    emb = iemb[[i_row[x] for x in present]] if present else np.zeros((0, qemb.shape[1]), np.float32)
    rankings = rank_queries(benchmark, queries, qemb, present, emb,
                            np.array([gallery_flag[x] for x in present], dtype=bool), k=k, index_cfg=index,
                            circo_exclude_reference=circo_exclude_reference)
    seconds = time.perf_counter() - t0
    run_.write_table("data", rankings)
    return run_.finish(stats={"queries": queries.num_rows, "gallery": int(sum(gallery_flag[x] for x in present)),
                              "images_without_features": len(all_ids) - len(present)},
                       timings={"retrieve_seconds": round(seconds, 4)})
