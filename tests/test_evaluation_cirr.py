"""CIRR metrics: equality with SEARLE's cirr_compute_val_metrics (numpy transcription) on the real val split,
through our RANKINGS -> submission files -> metrics path; plus hand-computed toy cases."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cirflow.evaluation.api import evaluate_predictions
from cirflow.evaluation.cirr import cirr_metrics
from cirflow.evaluation.submission import read_submission, rankings_to_submission, write_submission
from cirflow.schemas.tables import QUERIES, RANKINGS

# the full upstream files (exactness against the reference implementations): ../shared beside the clone, or
# $CIRFLOW_SHARED; a fresh clone without them skips this file (tests/data/benchmarks has slices for the rest)
_BENCHMARKS = Path(os.environ.get("CIRFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared") / "benchmarks"
CIRR = _BENCHMARKS / "cirr"
pytestmark = pytest.mark.skipif(not _BENCHMARKS.is_dir(), reason="full benchmark files absent")


def cirr_queries(caps: list[dict]) -> pa.Table:
    rows = [
        {
            "query_id": str(c["pairid"]),
            "reference_id": c["reference"],
            "modification": c["caption"],
            "captions": [c["caption"]],
            "target_ids": [c["target_hard"]],
            "members": c["img_set"]["members"],
            "candidate_ids": [],
            "shared_concept": None,
            "semantic_aspects": [],
        }
        for c in caps
    ]
    return pa.Table.from_pylist(rows, schema=QUERIES)


def searle_cirr_metrics(sim: np.ndarray, names: list[str], caps: list[dict]) -> dict[str, float]:
    """SEARLE src/validate.py cirr_compute_val_metrics, in numpy, on gallery indices instead of name strings
    (the same masks; strings would need ~800 MB here)."""
    index = {n: i for i, n in enumerate(names)}
    ref = np.array([index[c["reference"]] for c in caps])
    tgt = np.array([index[c["target_hard"]] for c in caps])
    group_members = np.array([[index[m] for m in c["img_set"]["members"]] for c in caps])
    n_q, n_g = sim.shape

    distances = 1 - sim
    sorted_index = np.argsort(distances, axis=-1)
    reference_mask = sorted_index != np.repeat(ref, n_g).reshape(n_q, -1)
    sorted_index = sorted_index[reference_mask].reshape(n_q, n_g - 1)
    labels = sorted_index == np.repeat(tgt, n_g - 1).reshape(n_q, -1)
    group_mask = (sorted_index[..., None] == group_members[:, None, :]).sum(-1).astype(bool)
    group_labels = labels[group_mask].reshape(n_q, -1)
    assert (labels.sum(-1) == 1).all() and (group_labels.sum(-1) == 1).all()
    out = {f"recall@{k}": np.sum(labels[:, :k]) / len(labels) * 100 for k in (1, 2, 5, 10, 50)}
    out |= {f"recall_subset@{k}": np.sum(group_labels[:, :k]) / len(group_labels) * 100 for k in (1, 2, 3)}
    return out


def our_rankings(sim: np.ndarray, names: list[str], caps: list[dict]) -> pa.Table:
    """What the ranking stage produces: score desc, gallery order asc on ties, reference removed; subset
    = the non-reference members sorted by score."""
    rows = []
    order = np.argsort(-sim, axis=1, kind="stable")
    index = {n: i for i, n in enumerate(names)}
    for row, c in enumerate(caps):
        ranked = [names[j] for j in order[row, :52] if names[j] != c["reference"]][:50]
        members = [m for m in c["img_set"]["members"] if m != c["reference"]]
        members.sort(key=lambda m: (-sim[row, index[m]], index[m]))
        rows.append(
            {
                "query_id": str(c["pairid"]),
                "ranked_ids": ranked,
                "scores": [float(sim[row, index[n]]) for n in ranked],
                "subset_ids": members,
            }
        )
    return pa.Table.from_pylist(rows, schema=RANKINGS)


def test_equals_searle_on_real_val(tmp_path):
    caps = json.loads((CIRR / "captions/cap.rc2.val.json").read_text())
    names = list(json.loads((CIRR / "image_splits/split.rc2.val.json").read_text()))
    assert len(names) == 2297
    index = {n: i for i, n in enumerate(names)}
    rng = np.random.default_rng(0)
    sim = rng.random((len(caps), len(names)))
    # lift each target by a random amount so hits spread over every K instead of R@1 ~ 0
    sim[np.arange(len(caps)), [index[c["target_hard"]] for c in caps]] += rng.random(len(caps)) * 0.7

    expected = searle_cirr_metrics(sim, names, caps)
    queries = cirr_queries(caps)
    files = rankings_to_submission("cirr", our_rankings(sim, names, caps), queries)
    recall_path, subset_path = write_submission("cirr", files, tmp_path, "rand")
    scores = evaluate_predictions(
        "cirr", queries, read_submission(recall_path), read_submission(subset_path), gallery_ids=names
    )
    assert scores.overall == expected  # exact: same counts, same fraction-then-x100 arithmetic
    assert 0 < expected["recall@1"] < expected["recall@50"] < 100


def _toy_queries() -> pa.Table:
    members = ["r", "t", "a", "b", "c", "d"]
    return pa.Table.from_pylist(
        [
            {"query_id": "1", "reference_id": "r", "modification": "x", "target_ids": ["t"], "members": members},
            {"query_id": "2", "reference_id": "r", "modification": "y", "target_ids": ["a"], "members": members},
        ],
        schema=QUERIES,
    )


def test_toy_ranks():
    queries = _toy_queries()
    recall = {"version": "rc2", "metric": "recall", "1": ["a", "b", "t"], "2": ["a", "t"]}  # ranks 3 and 1
    subset = {"version": "rc2", "metric": "recall_subset", "1": ["b", "t", "a"], "2": ["c", "d", "b"]}
    m = cirr_metrics(queries, recall, subset)
    assert m["recall@1"] == 50.0 and m["recall@2"] == 50.0 and m["recall@5"] == 100.0
    assert m["recall_subset@1"] == 0.0 and m["recall_subset@2"] == 50.0 and m["recall_subset@3"] == 50.0


def test_subset_metrics_only_with_subset_file():
    m = cirr_metrics(_toy_queries(), {"1": ["t"], "2": ["a"]})
    assert set(m) == {"recall@1", "recall@2", "recall@5", "recall@10", "recall@50"}
    assert m["recall@1"] == 100.0


def test_empty_queries_rejected():
    with pytest.raises(ValueError):
        cirr_metrics(_toy_queries().slice(0, 0), {})
