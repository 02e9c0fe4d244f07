"""GeneCIS Recall@1/2/3 for one task, over per-sample candidate positions.

Each sample ranks its own candidates ``[target] + gallery``; a submission list holds candidate positions
best first (position 0 = the target), either the full order or the top 3. A sample hits at K when 0 is
among its first K positions, as genecis ``utils/metric_utils.get_recall`` with target index 0. The
paper's headline is the mean Recall@1 over the four tasks (``api.average_over``).

Ties: the list must come from a ranking that puts the target last among equal scores (see the package
docstring); this module cannot see scores and takes the order as given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

KS = (1, 2, 3)
TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
TARGET_POSITION = 0


def genecis_metrics(queries: pa.Table, predictions: Mapping[str, Sequence[int | str]]) -> dict[str, float]:
    """{"recall@1", "recall@2", "recall@3"} in percent; ``predictions``: str(sample index) -> positions."""
    if queries.num_rows == 0:
        raise ValueError("no GeneCIS samples to evaluate")
    hits = dict.fromkeys(KS, 0)
    for qid in queries.column("query_id").to_pylist():
        # positions may arrive as ints (submission files) or strings (RANKINGS ranked_ids)
        top = [int(p) for p in list(predictions[qid])[: max(KS)]]
        for k in KS:
            hits[k] += TARGET_POSITION in top[:k]
    return {f"recall@{k}": hits[k] / queries.num_rows * 100 for k in KS}
