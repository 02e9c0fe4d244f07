"""Subcommands of methods that have one besides `cirflow run` (cirflow.flows.registry.COMMANDS), e.g.
`cirflow compare CONFIG.yaml`, `cirflow sweep CONFIG.yaml`: the file needs no `method:` line."""

from __future__ import annotations


def register(sub) -> None:
    from cirflow.cli.run import add_plan_flags, add_retry_flag
    from cirflow.flows.registry import COMMANDS

    for method, helptext in COMMANDS.items():
        p = sub.add_parser(method.replace("_", "-"), help=helptext, description=helptext)  # shown by `X --help`
        p.add_argument("config", help="YAML config (a base run config plus what varies)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        add_retry_flag(p)
        add_plan_flags(p)
        p.set_defaults(func=run, method=method)


def run(args) -> int:
    from cirflow.cli.run import run_file

    return run_file(args.config, args.method, as_json=args.json, retry_failed=args.retry_failed, plan=args.plan,
                    record=args.record)
