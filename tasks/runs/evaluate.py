"""evaluate: rankings → the benchmark's own submission files (validated as the test server would) and, where
the split has ground truth, the official metrics computed from those same files.

Scoring the submission files rather than the rankings means a validation number here and a test-server number
come from the same object (see cirflow.evaluation).
"""

from __future__ import annotations

import json

from cirflow.evaluation.api import evaluate_predictions, has_ground_truth
from cirflow.evaluation.submission import ensure_valid, rankings_to_submission
from cirflow.schemas.tables import METRICS
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.stage import Context, Params, Stage, execute

class EvaluateParams(Params):
    benchmark: str


class Evaluate(Stage):
    name, version = "evaluate", "1"
    Params = EvaluateParams
    inputs = ("bench", "rankings")
    outputs = {"data": METRICS}

    def produce(self, ctx: Context) -> None:
        bench, rankings, run_ = ctx.inputs["bench"], ctx.inputs["rankings"], ctx.run
        p = bench.manifest.params
        benchmark, group = p["benchmark"], p.get("category") or p.get("task")
        queries = bench.read("queries")
        images = bench.read("images", columns=["image_id", "in_gallery"])
        gallery = None if benchmark == "genecis" else [
            i for i, g in zip(images.column("image_id").to_pylist(), images.column("in_gallery").to_pylist()) if g]
        files = rankings_to_submission(benchmark, rankings.read(), queries, group=group)
        predictions = files.get("recall") or next(iter(files.values()))
        ensure_valid(benchmark, queries, predictions, files.get("recall_subset"), gallery_ids=gallery,
                     source="rankings")
        split = p.get("split") or "all"
        for name, content in files.items():
            run_.write_file(f"{name}_{split}.json", json.dumps(content, sort_keys=True).encode())
        scored = has_ground_truth(benchmark, queries)
        if scored:
            scores = evaluate_predictions(benchmark, queries, predictions, files.get("recall_subset"),
                                          gallery_ids=gallery, source="rankings")
            table = scores.to_table()
        else:
            table = METRICS.empty_table()
        run_.write_table("data", table)
        ctx.scratch["stats"] = {"queries": queries.num_rows, "scored": scored, "group": group,
                                "files": sorted(files)}

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch.get("stats") or {}


def run(store: ArtifactStore, bench: Artifact, rankings: Artifact) -> Artifact:
    return execute(Evaluate, store, {"bench": bench, "rankings": rankings},
                   EvaluateParams(benchmark=bench.manifest.params["benchmark"]))
