"""CIRCO mAP@K, Recall@K and per-semantic-aspect mAP@10, as the evaluation server computes them.

Per query, over its ranked top-50 ids (reference NOT removed, as every reference implementation does):
``rel[i]`` = 1 if the i-th id is a ground truth, ``prec[i] = rel[i] * cumsum(rel)[i] / i`` (1-based i),
``AP@K = sum(prec[1..K]) / min(K, #GT)``. Recall@K counts ``target_img_id`` (= ``gt_img_ids[0]``) in the
top K. Means are over queries, x100. Semantic mAP@10 is the mean AP@10 over the queries tagged with an
aspect.

mAP@1 (= precision of the first id) and ``map_avg``, the plain mean of mAP@K over K in {1, 5, 10, 25, 50},
are not reported by the server: PEFUSE plots ``map_avg`` in its sensitivity study (pefuse.txt §4.5, figures
2–3, and the compute analysis of §5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

MAP_KS = (1, 5, 10, 25, 50)  # the server reports 5..50; 1 is PEFUSE's addition (§4.5)
AVG_MAP = "map_avg"  # mean of map@K over MAP_KS (PEFUSE figures 2–3)
RECALL_KS = (5, 10, 25, 50)
ASPECT_K = 10
TOP_K = 50
# The server reports the aspects in this order (CIRCO src/evaluation.py); others, if any, follow sorted.
SEMANTIC_ASPECTS = (
    "cardinality",
    "addition",
    "negation",
    "direct_addressing",
    "compare_change",
    "comparative_statement",
    "statement_with_conjunction",
    "spatial_relations_background",
    "viewpoint",
)


def _coco_id(x: int | str) -> str:
    # The server's files hold ints, SEARLE writes strings, QUERIES holds strings: compare as canonical str.
    return str(int(x))


def _relevance(queries: pa.Table, predictions: Mapping[str, Sequence[int | str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[nQ, 50] bool matrices: entry is a ground truth / entry is the target; and #GT per query."""
    preds = {str(k): v for k, v in predictions.items()}
    query_ids = queries.column("query_id").to_pylist()
    gts = queries.column("target_ids").to_pylist()
    rel = np.zeros((len(query_ids), TOP_K), dtype=bool)
    is_target = np.zeros_like(rel)
    n_gt = np.zeros(len(query_ids), dtype=np.int64)
    for row, (qid, gt) in enumerate(zip(query_ids, gts)):
        gt_set = {_coco_id(g) for g in gt}
        n_gt[row] = len(gt)  # the server divides by len(gt_img_ids) as listed
        for i, x in enumerate(list(preds[qid])[:TOP_K]):
            x = _coco_id(x)
            rel[row, i] = x in gt_set
            is_target[row, i] = x == _coco_id(gt[0])
    return rel, is_target, n_gt


def average_precisions(rel: np.ndarray, n_gt: np.ndarray, k: int) -> np.ndarray:
    """AP@k per query from a [nQ, >=k] relevance matrix; denominator min(k, #GT)."""
    hits_so_far = np.cumsum(rel, axis=1)
    precision_at_hits = hits_so_far * rel / np.arange(1, rel.shape[1] + 1)
    return np.sum(precision_at_hits[:, :k], axis=1) / np.minimum(n_gt, k)


def circo_metrics(
    queries: pa.Table, predictions: Mapping[str, Sequence[int | str]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """({"map@1", ..., "map@50", "map_avg", "recall@5", ..., "recall@50"}, {aspect: {"map@10": v}}), in percent.

    ``queries`` is a CIRCO QUERIES table with ``target_ids`` = gt_img_ids (first = target_img_id) and
    ``semantic_aspects``; ``predictions`` maps str(query id) to ranked COCO ids (int or str).
    """
    if queries.num_rows == 0:
        raise ValueError("no CIRCO queries to evaluate")
    if any(len(gt) == 0 for gt in queries.column("target_ids").to_pylist()):
        raise ValueError("CIRCO queries without ground truth (test split?) cannot be scored")
    rel, is_target, n_gt = _relevance(queries, predictions)
    overall: dict[str, float] = {}
    for k in MAP_KS:
        overall[f"map@{k}"] = float(np.mean(average_precisions(rel, n_gt, k))) * 100
    overall[AVG_MAP] = float(np.mean([overall[f"map@{k}"] for k in MAP_KS]))
    for k in RECALL_KS:
        overall[f"recall@{k}"] = float(np.mean(np.sum(is_target[:, :k], axis=1))) * 100

    ap10 = average_precisions(rel, n_gt, ASPECT_K)
    aspects_per_query = queries.column("semantic_aspects").to_pylist()
    present = {a for aspects in aspects_per_query for a in (aspects or [])}
    order = [a for a in SEMANTIC_ASPECTS if a in present] + sorted(present - set(SEMANTIC_ASPECTS))
    per_aspect: dict[str, dict[str, float]] = {}
    for aspect in order:
        rows = [i for i, aspects in enumerate(aspects_per_query) if aspect in (aspects or [])]
        per_aspect[aspect] = {f"map@{ASPECT_K}": float(np.mean(ap10[rows])) * 100}
    return overall, per_aspect
