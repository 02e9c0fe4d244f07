"""`report.html` of a run, comparison, sweep or build folder, rebuilt from its summary.json and the store
(`cirflow report RUN_DIR`; flows write it when they publish their summary)."""

from __future__ import annotations

import shutil
from pathlib import Path

from cirflow.flows.report_html.collect import Collector, load_summary
from cirflow.flows.report_html.page import render
from cirflow.flows.report_html.thumbs import Thumbs
from cirflow.storage import ArtifactStore

REPORT = "report.html"


def _metrics(doc: dict) -> tuple[list[str], list[list]]:
    if "table" in doc:  # comparison / sweep: its table, one row per variant
        cols = list(dict.fromkeys(c for r in doc["table"] for c in r))
        return cols, [[r.get(c) for c in cols] for r in doc["table"]]
    rows = [("all", doc["metrics"])] + sorted(doc.get("groups", {}).items())
    names = list(dict.fromkeys(m for _, g in rows for m in g))
    return ["group", *names], [[label, *(vals.get(m) for m in names)] for label, vals in rows]


def _stages(doc: dict, store: ArtifactStore) -> tuple[list[str], list[list]]:
    rows, seen = [], set()
    for s in doc["stages"]:
        if s["key"] in seen:  # an artifact shared by variants: once, where it first appears
            continue
        seen.add(s["key"])
        stats = s.get("stats") or store.open(s["stage"], s["key"]).manifest.stats
        where = s.get("label") or f"{s['group']} · {s['encoder']} · {s['variant']}"  # run: group; comparison: variant
        rows.append([where, s["stage"], s["status"], stats.get("ok"), stats.get("failed"), float(s["seconds"]),
                     s["key"][:12]])
    return ["group / variant" if "table" in doc else "group", "stage", "status", "ok", "failed", "seconds", "key"], rows


def _plots(doc: dict, run_dir: Path) -> list[str]:
    """Plot paths relative to the run folder (copied in when they were written elsewhere)."""
    out = []
    for p in ([doc["plot"]] if doc.get("plot") else []) + list((doc.get("plots") or {}).values()):
        p = Path(p)
        if not p.is_file():
            continue
        try:
            out.append(str(p.resolve().relative_to(run_dir.resolve())))
        except ValueError:
            shutil.copy(p, run_dir / p.name)
            out.append(p.name)
    return out


def write_report(run_dir: str | Path, store: ArtifactStore | None = None) -> Path:
    """Write `report.html` (and the thumbnails it lacks) into a run folder; returns its path."""
    run_dir = Path(run_dir)
    doc = load_summary(run_dir)
    store = store or ArtifactStore(doc["store"])
    if doc.get("kind") == "build":  # a training-data build: triplets, not queries
        from cirflow.flows.report_html.build import write_build_report

        return write_build_report(run_dir, doc, store)
    collector = Collector(doc, store, Thumbs(run_dir))
    variants, queries = collector.queries()
    title = f"{doc.get('method', 'comparison')}: {doc.get('run') or doc.get('name')}"
    if doc.get("status") == "failed":  # stopped by a stage over its failure threshold (summary.json)
        title += " (failed)"
    sub = (f"benchmark {doc.get('benchmark')} · {len(queries)} queries · {len(variants)} variant(s) · "
           f"store {doc['store']}")
    page = render(title, sub, _metrics(doc), _stages(doc, store), _plots(doc, run_dir), variants, queries,
                  collector.k_ranked, doc.get("failed_stage"))
    out = run_dir / REPORT
    tmp = out.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["REPORT", "write_report"]
