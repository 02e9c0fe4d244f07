"""robust_proxy (IP-CIR Eq. 1, metrics-and-methods B.1): the robust proxy feature f_RP of every query from the
stored proxy-image features, the reference-image features and the baseline's per-slot caption features.

    f_p  proxies:    embed_generated(reduce="mean") of synthesize_proxies (id = query_id). A query whose proxies
                     all failed has no row: its f_p is zeros (counted in `zero_proxy_queries`).
    f_q  references: embed_images of the benchmark, looked up by each query's reference_id.
    f_s  edited / originals: embed_texts(samples="each") of the baseline's edits (id = query_id) and of its
                     reference captions (id = image_id), n slots each (cirflow.tasks.slots);
                     f_s = mean_i (f_t,i − f_o,i).
                     A query whose reference has no caption at all (every caption failed) gets f_s = 0 (counted
                     in `queries_without_reference_caption`).
    f_RP = a_w·f_p + s_w·(max f_p / max f_q)·f_q + t_w·(max f_p / max f_s)·f_s   (cirflow.retrieval.robust_proxy)

Writes an ordinary embeddings table (id = query_id, benchmark query order, not re-normalised), so `retrieve`
and `fuse_scores` use it like any other query feature. Only the weights and the max mode are parameters: a
weight change recomputes this stage and the scoring after it, nothing upstream.
"""

from __future__ import annotations

import numpy as np

from cirflow.retrieval.robust_proxy import MaxMode, align_rows, robust_proxy, semantic_perturbation, zero_proxy_count
from cirflow.schemas.errors import CirflowError
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.embeddings import embeddings_output, embeddings_table
from cirflow.tasks.slots import slot_features
from cirflow.tasks.stage import Context, Params, Stage, execute


class RobustProxyParams(Params):
    n: int  # caption slots of the baseline (BaselineQuery.n): 1 for CIReVL / PEFUSE, n_captions for LDRE
    a_w: float
    s_w: float
    t_w: float
    max_mode: MaxMode


class RobustProxy(Stage):
    name, version = "robust_proxy", "1"
    Params = RobustProxyParams
    inputs = ("bench", "proxies", "references", "edited", "originals")
    outputs = {"data": embeddings_output}

    def produce(self, ctx: Context) -> None:
        p, i = ctx.params, ctx.inputs
        n = p.n
        queries = i["bench"].read("queries", columns=["query_id", "reference_id"])
        qids, refs = queries.column("query_id").to_pylist(), queries.column("reference_id").to_pylist()

        rids, remb = i["references"].embeddings()
        f_q, refs_missing = align_rows(refs, rids, remb)
        f_t, filled_t = slot_features(i["edited"], qids, n)
        # a reference whose captions all failed has no row in `originals`: that query gets no perturbation
        # (f_s = 0, counted), rather than f_t alone standing in for an edit
        captioned = set(i["originals"].read(columns=["id"]).column("id").to_pylist())
        keep = [k for k, r in enumerate(refs) if r in captioned]
        f_s = np.zeros_like(f_t[0])
        filled_o = 0
        if keep:
            f_o, filled_o = slot_features(i["originals"], [refs[k] for k in keep], n)
            f_s[keep] = semantic_perturbation(f_t[:, keep], f_o)
        pids, pemb = proxy_embeddings(i["proxies"], f_q.shape[1])
        if pemb.shape[1] != f_q.shape[1]:
            raise CirflowError(f"robust_proxy: proxy features are {pemb.shape[1]}-d but reference features "
                               f"{f_q.shape[1]}-d (different encoders?)")
        f_p, proxies_missing = align_rows(qids, pids, pemb)
        f_rp = robust_proxy(f_p, f_q, f_s, a_w=p.a_w, s_w=p.s_w, t_w=p.t_w, max_mode=p.max_mode)

        ctx.write_table("data", embeddings_table(qids, f_rp))
        zero = zero_proxy_count(f_p)
        has = np.any(f_p != 0, axis=1)
        ctx.scratch["stats"] = {
            "queries": len(qids), "zero_proxy_queries": zero, "queries_without_proxy_row": proxies_missing,
            "zero_proxy_ids": [q for q, h in zip(qids, has) if not h][:20],
            "references_without_features": refs_missing, "filled_edit_slots": filled_t,
            "filled_caption_slots": filled_o, "queries_without_reference_caption": len(refs) - len(keep),
            "max_f_p": float(f_p[has].max()) if has.any() else 0.0, "max_f_q": float(f_q.max()),
            "max_f_s": float(f_s.max())}

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch["stats"]


def run(store: ArtifactStore, bench: Artifact, proxies: Artifact, references: Artifact, edited: Artifact,
        originals: Artifact, *, n: int, a_w: float = 1.0, s_w: float = 1.0, t_w: float = 1.0,
        max_mode: MaxMode = "global") -> Artifact:
    """`n`: caption slots of the baseline (BaselineQuery.n): 1 for CIReVL / PEFUSE, n_captions for LDRE."""
    if max_mode not in ("global", "per_query"):
        raise CirflowError(f"robust_proxy: max_mode must be 'global' or 'per_query', got {max_mode!r}")
    if n < 1:
        raise CirflowError(f"robust_proxy: n must be >= 1, got {n}")
    return execute(RobustProxy, store, {"bench": bench, "proxies": proxies, "references": references,
                                        "edited": edited, "originals": originals},
                   RobustProxyParams(n=n, a_w=float(a_w), s_w=float(s_w), t_w=float(t_w), max_mode=max_mode))


def proxy_embeddings(proxies: Artifact, dim: int) -> tuple[list[str], np.ndarray]:
    """(ids, [n, D]) of a proxy-feature artifact; an embed_generated run over queries that all lack proxy
    images wrote no table at all: that is zero rows, not an error."""
    if proxies.manifest.rows("data") == 0:
        return [], np.zeros((0, dim), np.float32)
    return proxies.embeddings()
