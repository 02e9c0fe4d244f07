"""`cirflow evaluate`: validate a submission file against a benchmark split and, where the split has ground
truth, print its exact metrics. On a test split (no ground truth) it only validates: exit 0 = ready for upload.

Errors are raised as CirflowError subclasses (an invalid file: InvalidSubmissionError, exit code 2); the main
CLI prints them as one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cirflow.evaluation.api import Scores, evaluate_predictions, has_ground_truth
from cirflow.evaluation.submission import (
    BENCHMARKS,
    InvalidSubmissionError,
    file_size_problems,
    read_submission,
    validate_submission,
)
from cirflow.schemas.errors import ConfigError

# Benchmarks whose loader lists the whole retrieval gallery, so ids can be checked against it. CIRCO's gallery
# is all of COCO unlabeled2017, which the annotation files do not list; GeneCIS lists are positions.
_GALLERY_LISTED = ("cirr", "fashioniq")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="validate a submission file and compute the benchmark's exact metrics",
        description="Validate predictions in the benchmark's submission format and, on a split with ground truth, "
        "print the metrics the reference code gives. On a test split only the validation runs.",
    )
    p.add_argument("benchmark", choices=BENCHMARKS, help="benchmark name")
    p.add_argument("--data-root", required=True, help="folder holding the official annotation files")
    p.add_argument("--split", default=None, help="cirr: val|test1; circo: val|test; fashioniq: val|test (default val)")
    p.add_argument("--category", default=None, help="fashioniq: dress|shirt|toptee (one per call)")
    p.add_argument("--task", default=None, help="genecis: focus_attribute|change_attribute|focus_object|change_object")
    p.add_argument("--predictions", required=True, help="submission JSON (cirr: the recall file)")
    p.add_argument("--subset-predictions", default=None, help="cirr: the recall_subset file")
    p.add_argument("--json", action="store_true", help="print a flat JSON object of metric -> percent")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from cirflow.tasks.benchmarks import load_benchmark  # annotations only: images are not needed to score

    if args.subset_predictions and args.benchmark != "cirr":
        raise ConfigError("--subset-predictions is only for cirr")
    bench = load_benchmark(
        args.benchmark, args.data_root, args.split, args.category, args.task, check_images=False
    )
    queries = bench.queries
    gallery = None
    if args.benchmark in _GALLERY_LISTED:
        gallery = [i for i, g in zip(bench.images["image_id"].to_pylist(), bench.images["in_gallery"].to_pylist()) if g]

    predictions = read_submission(args.predictions)
    subset = read_submission(args.subset_predictions) if args.subset_predictions else None
    problems = file_size_problems(args.benchmark, args.predictions)
    if args.subset_predictions:
        problems += file_size_problems(args.benchmark, args.subset_predictions)
    problems += validate_submission(args.benchmark, queries, predictions, subset, gallery_ids=gallery)
    if problems:
        raise InvalidSubmissionError(args.predictions, problems)

    where = " ".join(str(v) for v in (args.benchmark, bench.info.get("split"), args.category, args.task) if v)
    if not has_ground_truth(args.benchmark, queries):
        files = [args.predictions] + ([args.subset_predictions] if args.subset_predictions else [])
        if args.json:
            print(json.dumps({"valid": True, "queries": queries.num_rows, "files": files}))
        else:
            print(f"{where}: {queries.num_rows} queries, no ground truth in this split.")
            print(f"valid: {', '.join(files)} ready for upload")
        return 0

    group = args.category or args.task
    scores = evaluate_predictions(
        args.benchmark, queries, predictions, subset, gallery_ids=gallery, group=group, source=args.predictions
    )
    if args.json:
        print(json.dumps(scores.flat(), sort_keys=False))
    else:
        print(_table(scores, f"{where}: {queries.num_rows} queries ({Path(args.predictions).name})"))
    return 0


def _table(scores: Scores, title: str) -> str:
    lines = [title]
    width = max(len(m) for m in scores.overall)
    lines += [f"  {m:<{width}}  {v:6.2f}" for m, v in scores.overall.items()]
    if scores.groups:
        lines.append("per group:")
        gw = max(len(g) for g in scores.groups)
        for g, metrics in scores.groups.items():
            lines.append(f"  {g:<{gw}}  " + "  ".join(f"{m} {v:6.2f}" for m, v in metrics.items()))
    return "\n".join(lines)
