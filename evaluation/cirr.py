"""CIRR Recall@K and Recall_subset@K from the two test-server files.

The ``recall`` file holds, per pairid, the top-50 gallery names with the reference image already removed;
the ``recall_subset`` file the top-3 of the 5 ``img_set`` members other than the reference. Given lists
built that way, "target_hard within the first K entries" is exactly SEARLE's ``cirr_compute_val_metrics``
(which removes the reference after sorting and restricts the same order to the group members).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa

RECALL_KS = (1, 2, 5, 10, 50)
SUBSET_KS = (1, 2, 3)
TOP_K = 50  # entries per query in the recall file
SUBSET_TOP_K = 3  # entries per query in the recall_subset file
VERSION = "rc2"
META_KEYS = ("version", "metric")  # non-query keys of both files


def _percent(hits: int, n: int) -> float:
    # Same operation order as the reference code (fraction first, then x100), so values compare with ==.
    return hits / n * 100


def _recall(queries: pa.Table, lists: Mapping[str, Sequence[str]], ks: Sequence[int], prefix: str) -> dict[str, float]:
    query_ids = queries.column("query_id").to_pylist()
    targets = queries.column("target_ids").to_pylist()
    hits = dict.fromkeys(ks, 0)
    for qid, target_ids in zip(query_ids, targets):
        ranked = list(lists[qid])
        target = target_ids[0]  # target_hard
        rank = ranked.index(target) if target in ranked else None
        for k in ks:
            if rank is not None and rank < k:
                hits[k] += 1
    return {f"{prefix}@{k}": _percent(hits[k], len(query_ids)) for k in ks}


def cirr_metrics(
    queries: pa.Table,
    recall: Mapping[str, Sequence[str]],
    recall_subset: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, float]:
    """Recall@1/2/5/10/50 (and Recall_subset@1/2/3 when the subset file is given), in percent.

    ``queries`` is a QUERIES table with ground truth (``target_ids[0]`` = target_hard); the files are keyed
    by str(pairid); their "version"/"metric" keys are ignored here (``validate_submission`` checks them).
    """
    if queries.num_rows == 0:
        raise ValueError("no CIRR queries to evaluate")
    out = _recall(queries, recall, RECALL_KS, "recall")
    if recall_subset is not None:
        out |= _recall(queries, recall_subset, SUBSET_KS, "recall_subset")
    return out
