"""`cirflow` command line: one subcommand per module; errors a user can act on print one line, exit non-zero."""

from __future__ import annotations

import argparse
import os
import sys

from cirflow.schemas.errors import CirflowError

# Prefect's anonymous usage heartbeat races the SQLite db of ephemeral servers ("database is locked" noise);
# users who want it can still set the variable themselves.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def build_parser() -> argparse.ArgumentParser:
    from cirflow.cli import build, compare, demo, deploy, evaluate, ingest, run, store

    parser = argparse.ArgumentParser(prog="cirflow", description="Staged, resumable Composed Image Retrieval pipelines")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (run, demo, compare, build, deploy, ingest, evaluate, store):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CirflowError as e:
        print(f"cirflow: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("cirflow: interrupted; committed shards are kept, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
