"""Fashion-IQ Recall@10/50 for one category, and the plain mean over categories.

Each category is scored on its own val gallery (split.<category>.val.json), reference not removed. A query
hits at K when its target ASIN is among the first K ids of its list, as SEARLE's ``fiq_compute_val_metrics``;
the reported average is ``np.mean`` of the per-category values, as SEARLE's ``main`` (``api.average_over``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

KS = (10, 50)
CATEGORIES = ("dress", "shirt", "toptee")
MIN_LIST = max(KS)  # a submission list must reach the largest K


def fashioniq_metrics(queries: pa.Table, predictions: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """{"recall@10", "recall@50"} in percent for one category.

    ``queries``: QUERIES of one category with ``target_ids`` = [target]; ``predictions``: str(index in the
    caption file) -> ranked ASINs.
    """
    if queries.num_rows == 0:
        raise ValueError("no Fashion-IQ queries to evaluate")
    hits = dict.fromkeys(KS, 0)
    for qid, target_ids in zip(queries.column("query_id").to_pylist(), queries.column("target_ids").to_pylist()):
        if not target_ids:
            raise ValueError(f"Fashion-IQ query {qid} has no target (test split?) and cannot be scored")
        ranked = list(predictions[qid])
        for k in KS:
            hits[k] += target_ids[0] in ranked[:k]
    # fraction first, then x100: the reference's order of operations, so results compare with ==
    return {f"recall@{k}": hits[k] / queries.num_rows * 100 for k in KS}

