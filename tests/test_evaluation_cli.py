"""`cirflow evaluate` through its own register() on a fresh parser, on the real annotation files."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest

from cirflow.cli.evaluate import register
from cirflow.evaluation.submission import InvalidSubmissionError, write_submission

# the full upstream files (exactness against the reference implementations): ../shared beside the clone, or
# $CIRFLOW_SHARED; a fresh clone without them skips this file (tests/data/benchmarks has slices for the rest)
_BENCHMARKS = Path(os.environ.get("CIRFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared") / "benchmarks"
BENCH = _BENCHMARKS
pytestmark = pytest.mark.skipif(not _BENCHMARKS.is_dir(), reason="full benchmark files absent")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cirflow")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


def cirr_files(caps: list[dict], names: list[str], seed: int = 5) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    recall = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for c in caps:
        # put the target first for every third query so the metrics are not all ~0
        pool = [n for n in rng.choice(names, 60, replace=False).tolist() if n not in (c["reference"], c.get("target_hard"))]
        head = [c["target_hard"]] if "target_hard" in c and c["pairid"] % 3 == 0 else []
        recall[str(c["pairid"])] = (head + pool)[:50]
        subset[str(c["pairid"])] = [m for m in c["img_set"]["members"] if m != c["reference"]][:3]
    return recall, subset


@pytest.fixture(scope="module")
def cirr_val():
    caps = json.loads((BENCH / "cirr/captions/cap.rc2.val.json").read_text())
    names = list(json.loads((BENCH / "cirr/image_splits/split.rc2.val.json").read_text()))
    return caps, names


def test_cirr_json_output(cirr_val, tmp_path, capsys):
    caps, names = cirr_val
    recall, subset = cirr_files(caps, names)
    p_recall, p_subset = write_submission("cirr", {"recall": recall, "recall_subset": subset}, tmp_path, "t")
    code = run_cli(["cirr", "--data-root", str(BENCH / "cirr"), "--predictions", str(p_recall),
                    "--subset-predictions", str(p_subset), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["recall@1", "recall@2", "recall@5", "recall@10", "recall@50",
                         "recall_subset@1", "recall_subset@2", "recall_subset@3"]
    hit_first = sum(1 for c in caps if c["pairid"] % 3 == 0)
    assert out["recall@1"] == hit_first / len(caps) * 100
    # subset lists are members in file order: hit when target_hard is among the first K non-reference members
    sub_hits = sum(1 for c in caps if c["target_hard"] in subset[str(c["pairid"])][:1])
    assert out["recall_subset@1"] == sub_hits / len(caps) * 100


def test_bad_predictions_exit_2_one_line(cirr_val, tmp_path):
    caps, names = cirr_val
    recall, _ = cirr_files(caps, names)
    del recall[str(caps[0]["pairid"])]
    recall[str(caps[1]["pairid"])].append(caps[1]["reference"])  # 51 entries, reference inside
    path = tmp_path / "recall_bad.json"
    path.write_text(json.dumps(recall))
    with pytest.raises(InvalidSubmissionError) as e:
        run_cli(["cirr", "--data-root", str(BENCH / "cirr"), "--predictions", str(path)])
    message = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in message
    assert "3 problems" in message and "missing 1 of 4181" in message and "reference" in message


def test_test_split_only_validates(cirr_val, tmp_path, capsys):
    """A held-out-like split (no target fields): the file is checked and declared ready for upload."""
    caps, names = cirr_val
    root = tmp_path / "cirr"
    (root / "captions").mkdir(parents=True)
    (root / "image_splits").mkdir()
    test_caps = []
    for c in caps[:40]:
        c = json.loads(json.dumps(c))
        for key in ("target_hard", "target_soft"):
            c.pop(key)
        c["img_set"].pop("target_rank")
        test_caps.append(c)
    (root / "captions/cap.rc2.test1.json").write_text(json.dumps(test_caps))
    (root / "image_splits/split.rc2.test1.json").write_text((BENCH / "cirr/image_splits/split.rc2.val.json").read_text())
    recall, subset = cirr_files(test_caps, names)
    p_recall, p_subset = write_submission("cirr", {"recall": recall, "recall_subset": subset}, tmp_path, "t")
    argv = ["cirr", "--data-root", str(root), "--split", "test1", "--predictions", str(p_recall),
            "--subset-predictions", str(p_subset)]
    assert run_cli(argv) == 0
    assert "ready for upload" in capsys.readouterr().out

    subset[str(test_caps[0]["pairid"])] = [test_caps[0]["reference"]] + subset[str(test_caps[0]["pairid"])][:2]
    p_recall, p_subset = write_submission("cirr", {"recall": recall, "recall_subset": subset}, tmp_path, "bad")
    argv[-3], argv[-1] = str(p_recall), str(p_subset)
    with pytest.raises(InvalidSubmissionError, match="recall_subset file: query .*reference"):
        run_cli(argv)


def test_fashioniq_category_and_readable_table(tmp_path, capsys):
    caps = json.loads((BENCH / "fashioniq/captions/cap.dress.val.json").read_text())
    names = json.loads((BENCH / "fashioniq/image_splits/split.dress.val.json").read_text())
    preds = {str(i): [c["target"]] + [n for n in names[:50] if n != c["target"]][:49] for i, c in enumerate(caps)}
    path = tmp_path / "dress.json"
    path.write_text(json.dumps(preds))
    argv = ["fashioniq", "--data-root", str(BENCH / "fashioniq"), "--category", "dress", "--predictions", str(path)]
    assert run_cli([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"recall@10": 100.0, "recall@50": 100.0}
    assert run_cli(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("fashioniq val dress: 2017 queries") and "recall@50" in text
