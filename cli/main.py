"""`cirflow` command line: one subcommand per module; errors a user can act on print one line, exit non-zero."""

from __future__ import annotations

import argparse
import os
import sys

from cirflow.schemas.errors import CirflowError

# Prefect's anonymous usage heartbeat races the SQLite db of ephemeral servers ("database is locked" noise);
# users who want it can still set the variable themselves.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# the ephemeral server migrates its SQLite db on first start; 20 s is not enough on a busy 2-core machine
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    from cirflow.cli import build, compare, demo, deploy, evaluate, ingest, report, reproduce, run, store

    parser = argparse.ArgumentParser(prog="cirflow", description="Staged, resumable Composed Image Retrieval pipelines")
    parser.add_argument("--version", action="version", version=f"cirflow {version('cirflow')}")
    parser.add_argument("-v", "--verbose", action="store_true", help="Prefect's INFO logs and library messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (run, demo, compare, build, deploy, ingest, evaluate, store, reproduce, report):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cirflow.cli import console

    console.configure(args.verbose)  # before any subcommand imports Prefect or a model library
    try:
        with console.live(args):  # one progress display for the whole command
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe raises here, inside the handler, not in the interpreter's exit flush
        return code
    except BrokenPipeError:
        # the reader stopped early (`cirflow ... | head`): what it wanted was printed. Later writes go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CirflowError as e:
        if getattr(e, "run_folder", ""):  # a run stopped by a failed stage still wrote its folder (StageFailed)
            print(f"run folder: {e.run_folder} (report.html)", flush=True)
        print(f"cirflow: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("cirflow: interrupted; committed shards are kept, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
