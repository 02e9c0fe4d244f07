"""The run summary: per stage what was computed or reused, the metrics, the compute figures, and where the
files are. Printed by the CLI, written to the run's output folder and published as Prefect artifacts."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cirflow.evaluation.api import average_over
from cirflow.flows.report_html import REPORT, write_report
from cirflow.flows.record import write_resolved_config
from cirflow.schemas.config import RunBase
from cirflow.storage import Artifact, ArtifactStore


@dataclass
class RunSummary:
    config: RunBase
    started: float
    groups: dict[str, list[Artifact]] = field(default_factory=dict)
    failed: dict | None = None  # the stage that stopped the run over its failure threshold (`fail`)

    @classmethod
    def start(cls, config: RunBase) -> "RunSummary":
        return cls(config, time.perf_counter())

    def add_group(self, label: str, artifacts: list[Artifact]) -> None:
        self.groups[label] = artifacts

    def fail(self, label: str, error) -> None:
        """A stage of group `label` stopped the run (`StageFailed`, with what `execute` attached): the run
        folder still shows what was committed, and the failed rows with their reasons."""
        self.failed = failed_stage(label, error)


def failed_stage(label: str, error) -> dict:
    """summary.json's `failed_stage` of a StageFailed: the stage, its counts, the error line and every failed row
    `execute` attached (id, reason)."""
    return {"label": label, "stage": error.stage, "key": error.key, "error": str(error), "stats": error.stats,
            "failures": error.failures, "report": {**error.report, "label": label, "stats": error.stats}}


def mark_failed(doc: dict, failed: dict) -> dict:
    """A summary doc of a run stopped by a failed stage: `status: failed`, the stage's row in the stage table."""
    doc["status"] = "failed"
    doc["failed_stage"] = {k: v for k, v in failed.items() if k != "report"}
    report = failed.get("report") or {}
    if report.get("key"):
        doc["stages"].append({"shards_computed": 0, "shards_skipped": 0, "seconds": 0.0, "timings": {}, **report})
    return doc


def group_metrics(evaluate: Artifact) -> dict[str, float]:
    t = evaluate.read("data")
    return {m: v for g, m, v in zip(*(t.column(c).to_pylist() for c in ("group", "metric", "value"))) if g == "all"}


def distinct_stages(stages: list[dict]) -> list[dict]:
    """Each artifact once, at its first appearance: variants that share an artifact did not compute it twice."""
    seen: set[str] = set()
    return [s for s in stages if not (s["key"] in seen or seen.add(s["key"]))]


def computed_by_stage(stages: list[dict]) -> dict[str, int]:
    """stage -> number of distinct artifacts this run produced (computed, resumed or distributed, not cached)."""
    out: dict[str, int] = {}
    for s in distinct_stages(stages):
        if s["status"] != "cached":
            out[s["stage"]] = out.get(s["stage"], 0) + 1
    return out


def _peak_gpu_memory() -> float | None:
    if "torch" not in sys.modules:  # no model ran in this process (the store shortcut): nothing to measure,
        return None  # and importing torch only to learn that costs seconds
    try:
        import torch

        if torch.cuda.is_available():
            return round(torch.cuda.max_memory_allocated() / 2**30, 3)
    except Exception:  # noqa: BLE001 - a summary must not fail on a missing driver
        return None
    return None


def build(summary: RunSummary, store: ArtifactStore) -> dict:
    cfg = summary.config
    stages, per_group, files = [], {}, {}
    n_queries = 0
    for label, arts in summary.groups.items():
        for a in arts:
            rep = a.report.as_dict() if a.report else {"stage": a.stage, "key": a.key, "status": "cached"}
            rep["label"] = label
            rep["timings"] = a.manifest.timings
            stages.append(rep)
        if summary.failed is not None and not (arts and arts[-1].stage == "evaluate"):
            continue  # the group a failed stage stopped: no metrics, no submission files
        per_group[label] = group_metrics(arts[-1])
        files[label] = [arts[-1].file_path(f.name) for f in arts[-1].manifest.files]
        n_queries += arts[0].manifest.stats.get("queries", 0)
    wall = time.perf_counter() - summary.started
    computed = sum(s["seconds"] for s in stages if s["status"] != "cached")
    return {
        "run": cfg.name, "method": cfg.method, "benchmark": cfg.benchmark.name, "split": cfg.benchmark.split,
        "store": store.url,
        "encoder": {"model": cfg.encoder.model, "pretrained": cfg.encoder.pretrained},
        # trained-encoder methods (collm, instructcir) run without an MLLM
        "mllm": {"backend": cfg.mllm.backend, "model": cfg.mllm.model} if cfg.mllm is not None else None,
        "stages": stages,
        "computed_by_stage": computed_by_stage(stages),
        "metrics": average_over(per_group) if per_group or summary.failed is None else {},
        "groups": per_group if len(per_group) > 1 else {},
        "submission_files": files,
        "compute": {"wall_seconds": round(wall, 3), "stage_seconds_computed": round(computed, 3),
                    "queries": n_queries,
                    "end_to_end_seconds_per_query": round(computed / n_queries, 5) if n_queries else None,
                    "peak_gpu_memory_gib": _peak_gpu_memory()},
        "deviations": ["circo_exclude_reference"] if cfg.retrieve.circo_exclude_reference else [],
    }


def ok_failed(stats: dict) -> tuple[str, str]:
    """The ok / failed item counts of a stage's stats: its per-item status counts, or (embed_images: failures
    kept in a side table) its items less its failures; blank for stages whose items cannot fail one by one."""
    if "ok" in stats or "failed" not in stats:
        return str(stats.get("ok", "")), str(stats.get("failed", ""))
    total = stats.get("items", stats.get("images"))
    return (str(total - stats["failed"]) if isinstance(total, int) else ""), str(stats["failed"])


def stages_markdown(doc: dict) -> str:
    lines = ["| group | stage | status | ok | failed | shards computed | shards skipped | seconds | key |",
             "|---|---|---|--:|--:|--:|--:|--:|---|"]
    for s in doc["stages"]:
        ok, failed = ok_failed(s.get("stats") or {})
        lines.append(f"| {s['label']} | {s['stage']} | {s['status']} | {ok} | {failed} "
                     f"| {s['shards_computed']} | {s['shards_skipped']} | {s['seconds']:.2f} | {s['key'][:12]} |")
    return "\n".join(lines)


def metrics_markdown(doc: dict) -> str:
    # a merged summary (several benchmarks) has no common "all" row: one row per benchmark instead
    rows = ([] if "runs" in doc else [("all", doc["metrics"])]) + sorted(doc["groups"].items())
    names = list(dict.fromkeys(m for _, g in rows for m in g))
    lines = ["| group | " + " | ".join(names) + " |", "|---|" + "--:|" * len(names)]
    for label, vals in rows:
        lines.append(f"| {label} | " + " | ".join(f"{vals[m]:.2f}" if m in vals else "" for m in names) + " |")
    return "\n".join(lines)


def _metrics_csv(doc: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "metric", "value"])
    for label, vals in [("all", doc["metrics"])] + sorted(doc["groups"].items()):
        for m, v in vals.items():
            w.writerow([label, m, f"{v:.6f}"])
    return buf.getvalue()


def publish(summary: RunSummary, store: ArtifactStore) -> dict:
    """Write the run folder (summary.json, metrics.md/.csv, submission files) and Prefect table artifacts."""
    from cirflow.tasks import plan_mode

    if plan_mode.active() is not None:  # `--plan` writes nothing; the planner reports (flows/plan.py)
        return {}
    doc = build(summary, store)
    if summary.failed is not None:
        mark_failed(doc, summary.failed)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = _new_run_folder(Path(summary.config.output_dir) / summary.config.name, stamp)
    copied = []
    for label, paths in doc["submission_files"].items():
        for p in paths:
            name = Path(p).name
            dest = out / "submissions" / label.replace("/", "-") / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(store.read_bytes(p))
            copied.append(str(dest))
    doc["output_dir"] = str(out)
    doc["submission_files"] = copied
    (out / "metrics.md").write_text(metrics_markdown(doc) + "\n")
    (out / "metrics.csv").write_text(_metrics_csv(doc))
    (out / "stages.md").write_text(stages_markdown(doc) + "\n")
    doc["report"] = str(out / REPORT)
    (out / "summary.json").write_text(json.dumps(doc, indent=2))
    write_resolved_config(out, summary.config)
    write_report(out, store)  # reads summary.json back, as `cirflow report RUN_DIR` does
    _prefect_artifacts(doc)
    return doc


def _new_run_folder(parent: Path, stamp: str) -> Path:
    """A run folder of this run's own: identical runs started in the same second (two users, a retried job)
    must not write into one folder, so a taken name gets a suffix (created exclusively, never reused)."""
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        out = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free run folder name for {stamp}")


def _prefect_artifacts(doc: dict) -> None:
    if "prefect" not in sys.modules:  # no flow run without Prefect imported (the store shortcut): keep it unimported
        return
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:  # called outside a flow run (plain-Python use): nothing to attach to
        return
    key = "".join(c if c.isalnum() else "-" for c in doc["run"].lower()).strip("-") or "run"
    create_table_artifact(table=[{"group": "all", **doc["metrics"]}] +
                          [{"group": g, **m} for g, m in sorted(doc["groups"].items())],
                          key=f"{key}-metrics", description=f"{doc['method']} on {doc['benchmark']}")
    create_markdown_artifact(markdown=f"[HTML report]({Path(doc['report']).resolve().as_uri()})\n\n"
                             + stages_markdown(doc), key=f"{key}-stages",
                             description="per-stage computed / cached / resumed")


def merge(docs: list[dict]) -> dict:
    """Several runs (the demo's CIRR and CIRCO) as one summary of the same shape: stages labelled by
    benchmark, metrics prefixed by benchmark."""
    if len(docs) == 1:
        return docs[0]
    out = dict(docs[0])
    out["run"] = "+".join(d["run"] for d in docs)
    out["benchmark"] = "+".join(d["benchmark"] for d in docs)
    out["stages"] = [s | {"label": f"{d['benchmark']}:{s['label']}" if s["label"] != d["benchmark"] else s["label"]}
                     for d in docs for s in d["stages"]]
    out["computed_by_stage"] = computed_by_stage(out["stages"])
    out["metrics"] = {f"{d['benchmark']}/{m}": v for d in docs for m, v in d["metrics"].items()}
    out["groups"] = {d["benchmark"]: d["metrics"] for d in docs}
    out["submission_files"] = [f for d in docs for f in d["submission_files"]]
    out["output_dir"] = [d["output_dir"] for d in docs]
    out["report"] = [d["report"] for d in docs if d.get("report")]
    out["runs"] = [{"run": d["run"], "benchmark": d["benchmark"], "output_dir": d["output_dir"],
                    "metrics": d["metrics"]} for d in docs]
    c = [d["compute"] for d in docs]
    out["compute"] = {"wall_seconds": round(sum(x["wall_seconds"] for x in c), 3),
                      "stage_seconds_computed": round(sum(x["stage_seconds_computed"] for x in c), 3),
                      "queries": sum(x["queries"] for x in c),
                      "end_to_end_seconds_per_query": None, "peak_gpu_memory_gib": c[0]["peak_gpu_memory_gib"]}
    q = out["compute"]["queries"]
    if q:
        out["compute"]["end_to_end_seconds_per_query"] = round(out["compute"]["stage_seconds_computed"] / q, 5)
    return out


def print_summary(doc: dict, as_json: bool) -> None:
    """The report of a benchmark run (and of the demo's merged runs): stage table, metrics, compute, files."""
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    print(f"{doc['method']} on {doc['benchmark']} — stages")
    print(stages_markdown(doc))
    print("\nmetrics (percent)")
    print(metrics_markdown(doc))
    c = doc["compute"]
    print(f"\ncompute: {c['wall_seconds']} s wall, {c['stage_seconds_computed']} s in computed stages"
          + (f", {c['end_to_end_seconds_per_query']} s per query" if c["end_to_end_seconds_per_query"] else ""))
    print(f"store: {doc['store']}")
    # one line per run folder (a merged summary, the demo's, has one per benchmark); --json lists every file
    dirs = [doc["output_dir"]] if isinstance(doc["output_dir"], str) else doc["output_dir"]
    for d in dirs:
        n = sum(1 for f in doc["submission_files"] if f.startswith(d.rstrip("/") + "/"))
        print(f"run folder: {d} (report.html" + (f", {n} submission files in submissions/)" if n else ")"))
