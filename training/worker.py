"""The entry point of every training process: `python -m cirflow.training.worker --spec spec.json`.
torchrun / accelerate launch start one per process; it rebuilds model, data and loss from the JSON spec."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cirflow.schemas.errors import CirflowError
from cirflow.schemas.training import TrainSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cirflow.training.worker")
    parser.add_argument("--spec", required=True, help="TrainSpec JSON file")
    args = parser.parse_args(argv)
    try:
        from cirflow.training.engine import fit
        from cirflow.training.refs import build

        spec = TrainSpec.model_validate_json(Path(args.spec).read_text())
        fit(cfg=spec.train, ckpt_dir=spec.ckpt_dir, **build(spec))
    except CirflowError as e:
        print(f"cirflow: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # everything is committed by now (checkpoints and the final model are written atomically): skip the
    # interpreter's teardown, where Arrow's and gloo's background threads can abort a finished process
    # ("terminate called without an active exception", apache/arrow#34314) and turn a success into a failure
    os._exit(code)
