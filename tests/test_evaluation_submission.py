"""Submission files: every validation rule catches its failure, CIRR's two files can neither overwrite nor be
swapped with each other (LDRE bug), and a test split (no targets) validates but is not scored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cirflow.evaluation.api import evaluate_predictions
from cirflow.evaluation.submission import (
    InvalidSubmissionError,
    ensure_valid,
    file_size_problems,
    read_submission,
    validate_submission,
    write_submission,
)
from cirflow.schemas.errors import CirflowError, ConfigError
from cirflow.schemas.tables import QUERIES

# the full upstream files (exactness against the reference implementations): ../shared beside the clone, or
# $CIRFLOW_SHARED; a fresh clone without them skips this file (tests/data/benchmarks has slices for the rest)
_BENCHMARKS = Path(os.environ.get("CIRFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared") / "benchmarks"
CIRR = _BENCHMARKS / "cirr"
pytestmark = pytest.mark.skipif(not _BENCHMARKS.is_dir(), reason="full benchmark files absent")


@pytest.fixture(scope="module")
def cirr_val():
    caps = json.loads((CIRR / "captions/cap.rc2.val.json").read_text())
    names = list(json.loads((CIRR / "image_splits/split.rc2.val.json").read_text()))
    queries = pa.Table.from_pylist(
        [
            {
                "query_id": str(c["pairid"]),
                "reference_id": c["reference"],
                "modification": c["caption"],
                "target_ids": [c["target_hard"]],
                "members": c["img_set"]["members"],
            }
            for c in caps
        ],
        schema=QUERIES,
    )
    rng = np.random.default_rng(4)
    recall = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for c in caps:
        pool = [n for n in rng.choice(names, 60, replace=False).tolist() if n != c["reference"]]
        recall[str(c["pairid"])] = pool[:50]
        subset[str(c["pairid"])] = [m for m in c["img_set"]["members"] if m != c["reference"]][:3]
    return caps, names, queries, recall, subset


def test_valid_cirr_files_have_no_problems(cirr_val):
    caps, names, queries, recall, subset = cirr_val
    assert validate_submission("cirr", queries, recall, subset, gallery_ids=names) == []


def _problems(cirr_val, edit_recall=None, edit_subset=None, gallery=True):
    caps, names, queries, recall, subset = cirr_val
    recall, subset = json.loads(json.dumps(recall)), json.loads(json.dumps(subset))
    if edit_recall:
        edit_recall(recall, caps[0])
    if edit_subset:
        edit_subset(subset, caps[0])
    return validate_submission("cirr", queries, recall, subset, gallery_ids=names if gallery else None)


def _one(problems: list[str], fragment: str) -> None:
    assert len(problems) == 1 and fragment in problems[0], problems


def test_missing_query_id(cirr_val):
    _one(_problems(cirr_val, lambda r, c: r.pop(str(c["pairid"]))), "missing 1 of 4181 query ids")


def test_extra_key(cirr_val):
    _one(_problems(cirr_val, lambda r, c: r.__setitem__("99999999", r[str(c["pairid"])])), "not query ids")


def test_duplicate_entry(cirr_val):
    def dup(r, c):
        lst = r[str(c["pairid"])]
        lst[1] = lst[0]

    _one(_problems(cirr_val, dup), "duplicate entries")


def test_wrong_length(cirr_val):
    _one(_problems(cirr_val, lambda r, c: r[str(c["pairid"])].pop()), "49 entries, expected 50")


def test_reference_in_recall_list(cirr_val):
    def put_ref(r, c):
        r[str(c["pairid"])][7] = c["reference"]

    _one(_problems(cirr_val, put_ref), "contains the reference image")


def test_name_outside_gallery(cirr_val):
    def bad(r, c):
        r[str(c["pairid"])][0] = "test1-1-1-img0"

    _one(_problems(cirr_val, bad), "not in the gallery")
    assert _problems(cirr_val, bad, gallery=False) == []  # the gallery check needs the list


def test_wrong_type(cirr_val):
    def bad(r, c):
        r[str(c["pairid"])][0] = 5

    _one(_problems(cirr_val, bad), "wrong type")


def test_version_and_metric_keys(cirr_val):
    _one(_problems(cirr_val, lambda r, c: r.pop("version")), '"version" must be "rc2"')
    _one(_problems(cirr_val, lambda r, c: r.__setitem__("metric", "recall_subset")), '"metric" must be "recall"')


def test_subset_outside_members(cirr_val):
    def bad(s, c):
        s[str(c["pairid"])][0] = next(n for n in ("dev-0-0-img0", "dev-1-0-img0") if n not in c["img_set"]["members"])

    _one(_problems(cirr_val, edit_subset=bad), "not img_set members")


def test_subset_with_reference(cirr_val):
    def bad(s, c):
        s[str(c["pairid"])][2] = c["reference"]

    _one(_problems(cirr_val, edit_subset=bad), "contains the reference image")


def test_subset_length(cirr_val):
    _one(_problems(cirr_val, edit_subset=lambda s, c: s[str(c["pairid"])].pop()), "2 entries, expected 3")


def test_size_limit(cirr_val):
    caps, names, queries, recall, subset = cirr_val
    huge = {k: ([v + "-" + "x" * 20 for v in vals] if isinstance(vals, list) else vals) for k, vals in recall.items()}
    problems = validate_submission("cirr", queries, huge)
    _one(problems, "serialised size")


def test_size_limit_on_disk(tmp_path):
    path = tmp_path / "recall_big.json"
    path.write_text(" " * 5_000_001)
    assert "bytes" in file_size_problems("cirr", path)[0]
    assert file_size_problems("circo", path) == []


def test_writer_gives_two_distinct_files(cirr_val, tmp_path):
    caps, names, queries, recall, subset = cirr_val
    paths = write_submission("cirr", {"recall": recall, "recall_subset": subset}, tmp_path, "run1")
    assert [p.name for p in paths] == ["recall_run1.json", "recall_subset_run1.json"]
    assert read_submission(paths[0]) == recall and read_submission(paths[1]) == subset
    text = paths[0].read_text()
    assert text == json.dumps(recall, sort_keys=True)


def test_ldre_overwrite_is_impossible(cirr_val, tmp_path):
    caps, names, queries, recall, subset = cirr_val
    # LDRE wrote the subset dict under the recall file's name: the writer refuses a swapped file ...
    with pytest.raises(ConfigError, match="metric"):
        write_submission("cirr", {"recall": subset}, tmp_path, "x")
    with pytest.raises(ConfigError):
        write_submission("cirr", {"subset": subset}, tmp_path, "x")
    # ... and a recall file that holds subset content fails validation loudly
    problems = validate_submission("cirr", queries, subset, gallery_ids=names)
    assert any('"metric" must be "recall"' in p for p in problems)
    assert any("3 entries, expected 50" in p for p in problems)


def test_test_split_validates_but_is_not_scored(cirr_val):
    caps, names, queries, recall, subset = cirr_val
    no_targets = queries.set_column(
        queries.schema.get_field_index("target_ids"), "target_ids", pa.array([[]] * queries.num_rows, pa.list_(pa.string()))
    )
    assert validate_submission("cirr", no_targets, recall, subset, gallery_ids=names) == []
    with pytest.raises(CirflowError, match="no ground truth"):
        evaluate_predictions("cirr", no_targets, recall, subset)


def test_ensure_valid_raises_one_line_exit_2(cirr_val):
    caps, names, queries, recall, subset = cirr_val
    broken = {k: v for k, v in recall.items() if k != str(caps[0]["pairid"])}
    broken[str(caps[1]["pairid"])] = broken[str(caps[1]["pairid"])][:10]
    with pytest.raises(InvalidSubmissionError) as e:
        ensure_valid("cirr", queries, broken, source="recall_x.json")
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert str(e.value).startswith("recall_x.json: 2 problems")


def _simple(query_ids, **cols):
    rows = [{"query_id": q, "reference_id": "r", "modification": "m", **{k: v[i] for k, v in cols.items()}} for i, q in enumerate(query_ids)]
    return pa.Table.from_pylist(rows, schema=QUERIES)


def test_circo_rules():
    queries = _simple(["0", "1"], target_ids=[[], []])
    good = {"0": list(range(1, 51)), "1": [str(i) for i in range(1, 51)]}  # strings accepted
    assert validate_submission("circo", queries, good) == []
    _one(validate_submission("circo", queries, {**good, "1": [1] * 50}), "duplicate entries")
    _one(validate_submission("circo", queries, {**good, "1": [True] + list(range(2, 51))}), "wrong type")
    _one(validate_submission("circo", queries, {"0": good["0"]}), "missing 1 of 2")
    problems = validate_submission("circo", queries, good, gallery_ids=[str(i) for i in range(2, 60)])
    assert len(problems) == 2 and all("1 ids not in the gallery" in p for p in problems)


def test_fashioniq_rules():
    queries = _simple(["0"], target_ids=[["T"]])
    assert validate_submission("fashioniq", queries, {"0": [f"B{i}" for i in range(80)]}) == []
    _one(validate_submission("fashioniq", queries, {"0": [f"B{i}" for i in range(49)]}), "at least 50")


def test_genecis_rules():
    queries = _simple(["0", "1"], candidate_ids=[list("tabcd"), list("tabcd")])
    assert validate_submission("genecis", queries, {"0": [3, 0, 1], "1": [4, 3, 2, 1, 0]}) == []
    _one(validate_submission("genecis", queries, {"0": [3, 0], "1": [0, 1, 2]}), "at least 3")
    _one(validate_submission("genecis", queries, {"0": [3, 0, 5], "1": [0, 1, 2]}), "outside 0..4")
    _one(validate_submission("genecis", queries, {"0": [3, 0, -1], "1": [0, 1, 2]}), "outside 0..4")
    _one(validate_submission("genecis", queries, {"0": [3, 0, 0], "1": [0, 1, 2]}), "duplicate")
