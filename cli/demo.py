"""`cirflow demo [--workdir DIR] [--json]`: the embedded default run (offline, CPU)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="PEFUSE T→I on a generated mini CIRR + CIRCO with tiny models (offline, CPU)")
    p.add_argument("--workdir", default=".cirflow/demo", help="where data, models, store and runs go (%(default)s)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    from cirflow.demo.methods import METHODS

    p.add_argument("--method", choices=("pefuse_t2i", "mvft_ji", *METHODS), default="pefuse_t2i",
                   help="pefuse_t2i: the pipeline on random weights; mvft_ji: fine-tunes a tiny Q-Former and prints "
                        "untrained vs trained metrics; any other: that method's own config (written to "
                        "WORKDIR/configs/) on the mini benchmark with the tiny models it needs (%(default)s)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cirflow.cli.console import progress

    if getattr(args, "method", "pefuse_t2i") == "mvft_ji":
        from cirflow.demo.mvft import print_demo, run_demo as run_mvft

        print_demo(run_mvft(args.workdir, progress=progress(args.json)), as_json=args.json)
        return 0
    from cirflow.demo.methods import METHODS, run_method_demo

    if getattr(args, "method", "pefuse_t2i") in METHODS:
        return run_method_demo(args.method, args.workdir, as_json=args.json)
    from cirflow.flows.summary import print_summary
    from cirflow.demo.run import run_demo

    doc = run_demo(args.workdir, progress=progress(args.json))
    print_summary(doc, as_json=args.json)
    return 0
