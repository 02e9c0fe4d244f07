"""`cirflow deploy CONFIG.yaml --name N [--cron "0 3 * * *" | --interval S] [--work-pool P] [--serve]`:
register a scheduled deployment of the flow the config's `method` names (cirflow.flows.FLOWS).

  --serve           serve it from this process (blocks; Ctrl-C stops and pauses the schedule)
  --work-pool P     deploy to process work pool P (created if missing); run `prefect worker start --pool P`
                    on the machine that should execute the runs (the GPU box)

Needs PREFECT_API_URL pointing at a running `prefect server start`.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("deploy", help="register a scheduled Prefect deployment of a config's flow",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config (its `method` picks the flow)")
    p.add_argument("--name", required=True, help="deployment name (shown as cirflow/NAME)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--cron", default=None, help='cron schedule, e.g. "0 3 * * *"')
    when.add_argument("--interval", type=float, default=None, help="run every S seconds")
    p.add_argument("--timezone", default=None, help="IANA time zone of the schedule (default UTC)")
    p.add_argument("--work-pool", default=None, help="process work pool to deploy to (created if missing)")
    p.add_argument("--serve", action="store_true", help="serve from this process instead of a work pool")
    p.add_argument("--paused", action="store_true", help="register with the schedule paused")
    p.add_argument("--tag", action="append", default=[], help="extra deployment tag (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from cirflow.flows.deploy import deploy

    if args.serve:
        print(f"serving cirflow/{args.name} from this process (Ctrl-C to stop)", file=sys.stderr)
    out = deploy(args.config, args.name, cron=args.cron, interval=args.interval, timezone=args.timezone,
                 work_pool=args.work_pool, serve=args.serve, tags=args.tag, paused=args.paused)
    if args.json:
        print(json.dumps(out, indent=2))
    elif not args.serve:
        print(f"deployment {out['name']} ({out['method']}) -> work pool {out['work_pool']}"
              f"{' (created)' if out['work_pool_created'] else ''}; schedule: {out['schedule'] or 'none (manual runs)'}")
        print(f"run it: prefect deployment run '{out['name']}'")
        print(f"worker: {out['worker_command']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m cirflow.cli.deploy ...` (the same as `cirflow deploy ...`)."""
    from cirflow.schemas.errors import CirflowError

    parser = argparse.ArgumentParser(prog="cirflow")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["deploy", *(argv if argv is not None else sys.argv[1:])])
    try:
        return run(args)
    except CirflowError as e:
        print(f"cirflow: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
