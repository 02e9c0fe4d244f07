"""`cirflow demo [--workdir DIR] [--json]`: the embedded default run (offline, CPU)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="PEFUSE T→I on a generated mini CIRR + CIRCO with tiny models (offline, CPU)")
    p.add_argument("--workdir", default=".cirflow/demo", help="where data, models, store and runs go (%(default)s)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from cirflow.cli.run import print_summary
    from cirflow.demo.run import run_demo

    doc = run_demo(args.workdir, progress=not args.json)
    print_summary(doc, as_json=args.json)
    return 0
