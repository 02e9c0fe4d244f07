"""`cirflow report RUN_DIR`: rebuild a run's, comparison's or build's report.html from its summary.json and the store
(thumbnails already made are kept)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="rebuild the HTML report of a run, comparison or build folder",
                       description="Rebuild RUN_DIR/report.html (per-query images, stage outputs, top-k with the "
                                   "targets marked; for a build: kept / failed counts and sample triplets) "
                                   "from RUN_DIR/summary.json and the artifact store it names.")
    p.add_argument("run_dir", help="a run folder: <output_dir>/<name>/<stamp> (it holds summary.json)")
    p.add_argument("--store", default=None, help="the store's root when it moved since the run (default: the "
                                                 "one summary.json names)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cirflow.flows.report_html import write_report
    from cirflow.storage import ArtifactStore

    path = write_report(args.run_dir, ArtifactStore(args.store) if args.store else None)
    print(f"report: {path}")
    return 0
