"""CIRCO metrics: equality with a transcription of CIRCO's src/evaluation.py (the server's code) on random
predictions over the real val annotations; plus hand-computed AP cases."""

from __future__ import annotations

import json
from collections import defaultdict
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cirflow.evaluation.api import evaluate_predictions
from cirflow.evaluation.circo import SEMANTIC_ASPECTS, circo_metrics
from cirflow.evaluation.submission import rankings_to_submission
from cirflow.schemas.tables import QUERIES, RANKINGS

# the full upstream files (exactness against the reference implementations): ../shared beside the clone, or
# $CIRFLOW_SHARED; a fresh clone without them skips this file (tests/data/benchmarks has slices for the rest)
_BENCHMARKS = Path(os.environ.get("CIRFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared") / "benchmarks"
VAL = _BENCHMARKS / "circo/annotations/val.json"
pytestmark = pytest.mark.skipif(not _BENCHMARKS.is_dir(), reason="full benchmark files absent")


def circo_queries(anns: list[dict]) -> pa.Table:
    rows = [
        {
            "query_id": str(a["id"]),
            "reference_id": str(a["reference_img_id"]),
            "modification": a["relative_caption"],
            "captions": [a["relative_caption"]],
            "target_ids": [str(g) for g in a["gt_img_ids"]],
            "shared_concept": a["shared_concept"],
            "semantic_aspects": a["semantic_aspects"],
        }
        for a in anns
    ]
    return pa.Table.from_pylist(rows, schema=QUERIES)


def server_compute_metrics(anns: list[dict], predictions_dict: dict[int, list[int]], ranks=(5, 10, 25, 50)):
    """CIRCO src/evaluation.py compute_metrics, reading the annotation list instead of CIRCODataset."""
    by_id = {a["id"]: a for a in anns}
    aps_atk, recalls_atk, semantic_aps_at10 = defaultdict(list), defaultdict(list), defaultdict(list)
    for query_id, predictions in predictions_dict.items():
        ann = by_id[int(query_id)]
        gt_img_ids, target_img_id = ann["gt_img_ids"], ann["target_img_id"]
        predictions = np.array(predictions, dtype=int)
        ap_labels = np.isin(predictions, gt_img_ids)
        precisions = np.cumsum(ap_labels, axis=0) * ap_labels
        precisions = precisions / np.arange(1, ap_labels.shape[0] + 1)
        for rank in ranks:
            aps_atk[rank].append(float(np.sum(precisions[:rank]) / min(len(gt_img_ids), rank)))
        recall_labels = predictions == target_img_id
        for rank in ranks:
            recalls_atk[rank].append(float(np.sum(recall_labels[:rank])))
        for aspect in ann["semantic_aspects"]:
            semantic_aps_at10[aspect].append(float(np.sum(precisions[:10]) / min(len(gt_img_ids), 10)))
    map_atk = {r: float(np.mean(aps_atk[r])) for r in ranks}
    recall_atk = {r: float(np.mean(recalls_atk[r])) for r in ranks}
    semantic = {a: float(np.mean(semantic_aps_at10[a])) for a in SEMANTIC_ASPECTS}
    return map_atk, recall_atk, semantic


def test_equals_server_code_on_real_val():
    anns = json.loads(VAL.read_text())
    rng = np.random.default_rng(1)
    needed = {g for a in anns for g in a["gt_img_ids"]} | {a["reference_img_id"] for a in anns}
    extra = set(rng.choice(600_000, size=4000, replace=False).tolist()) - needed
    gallery = np.array(sorted(needed | extra))
    pos = {g: i for i, g in enumerate(gallery.tolist())}
    sim = rng.random((len(anns), len(gallery)))
    for row, a in enumerate(anns):  # lift the GTs by random amounts so AP takes many values
        for g in a["gt_img_ids"]:
            sim[row, pos[g]] += rng.random() * 0.995
    order = np.argsort(-sim, axis=1, kind="stable")[:, :50]
    predictions = {a["id"]: gallery[order[row]].tolist() for row, a in enumerate(anns)}

    map_atk, recall_atk, semantic = server_compute_metrics(anns, predictions)
    # PEFUSE's mAP@1 and average over K in {1, 5, 10, 25, 50} (§4.5), by the same server formula
    map_pefuse, _, _ = server_compute_metrics(anns, predictions, ranks=(1, 5, 10, 25, 50))

    queries = circo_queries(anns)
    rankings = pa.Table.from_pylist(
        [
            {"query_id": str(q), "ranked_ids": [str(x) for x in ids], "scores": [0.0] * len(ids), "subset_ids": []}
            for q, ids in predictions.items()
        ],
        schema=RANKINGS,
    )
    files = rankings_to_submission("circo", rankings, queries)
    assert files["circo"] == {str(q): ids for q, ids in predictions.items()}  # ints, as the server examples
    scores = evaluate_predictions("circo", queries, files["circo"], gallery_ids=[str(g) for g in gallery])

    for k in (5, 10, 25, 50):
        assert scores.overall[f"map@{k}"] == map_atk[k] * 100
        assert scores.overall[f"recall@{k}"] == recall_atk[k] * 100
    assert scores.overall["map@1"] == map_pefuse[1] * 100
    assert scores.overall["map_avg"] == pytest.approx(np.mean(list(map_pefuse.values())) * 100, abs=1e-9)
    assert 0 < scores.overall["map@1"] < 100 and scores.overall["map@1"] != scores.overall["map@5"]
    assert list(scores.groups) == list(SEMANTIC_ASPECTS)  # all 9 aspects occur in val, server order
    for aspect, value in semantic.items():
        assert scores.groups[aspect]["map@10"] == value * 100
    assert 0 < scores.overall["map@5"] < 100


def _toy(gts: list[str]) -> pa.Table:
    return pa.Table.from_pylist(
        [{"query_id": "0", "reference_id": "99", "modification": "m", "target_ids": gts, "semantic_aspects": ["viewpoint"]}],
        schema=QUERIES,
    )


def test_ap_two_gts_at_ranks_1_and_3():
    overall, per_aspect = circo_metrics(_toy(["1", "2"]), {"0": [1, 7, 2] + list(range(100, 147))})
    assert overall["map@5"] == pytest.approx((1 + 2 / 3) / 2 * 100, abs=1e-12)
    assert overall["map@50"] == overall["map@5"]
    assert overall["recall@5"] == 100.0  # target_img_id = gts[0] = 1 at rank 1
    assert per_aspect == {"viewpoint": {"map@10": overall["map@10"]}}


def test_map_at_1_is_the_first_hit_and_map_avg_the_mean_over_five_ks():
    # direct computation: GTs {1, 2} at ranks 1 and 3 -> AP@1 = 1, AP@K = (1 + 2/3) / 2 for K >= 3
    overall, _ = circo_metrics(_toy(["1", "2"]), {"0": [1, 7, 2] + list(range(100, 147))})
    assert overall["map@1"] == 100.0
    ap = (1 + 2 / 3) / 2 * 100
    assert overall["map_avg"] == pytest.approx((100.0 + 4 * ap) / 5, abs=1e-12)
    # a miss at rank 1 gives AP@1 = 0 whatever follows
    overall, _ = circo_metrics(_toy(["1", "2"]), {"0": [7, 1, 2] + list(range(100, 147))})
    assert overall["map@1"] == 0.0
    assert overall["map_avg"] == pytest.approx(np.mean([overall[f"map@{k}"] for k in (1, 5, 10, 25, 50)]), abs=1e-12)


def test_denominator_is_min_k_and_gt_count():
    gts = [str(i) for i in range(1, 15)]  # 14 GTs
    overall, _ = circo_metrics(_toy(gts), {"0": list(range(1, 6)) + list(range(100, 145))})
    assert overall["map@5"] == 100.0  # 5 hits in 5 / min(5, 14)
    assert overall["map@10"] == pytest.approx(50.0, abs=1e-12)  # 5 hits / min(10, 14)


def test_recall_counts_only_the_target():
    # a non-target GT at rank 1, the target (first GT) absent
    overall, _ = circo_metrics(_toy(["1", "2"]), {"0": [2] + list(range(100, 149))})
    assert overall["recall@50"] == 0.0 and overall["map@5"] == 50.0


def test_string_and_int_ids_score_the_same():
    ids = [1, 7, 2] + list(range(100, 147))
    assert circo_metrics(_toy(["1", "2"]), {"0": ids}) == circo_metrics(_toy(["1", "2"]), {0: [str(i) for i in ids]})
