"""Starting a training: in this process for one process, else `accelerate launch` (GPU) or torchrun (CPU, gloo)
over `python -m cirflow.training.worker --spec <ckpt_dir>/spec.json`. Returns the run's `final/` folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cirflow.schemas.errors import CirflowError
from cirflow.schemas.training import TrainSpec

WORKER = "cirflow.training.worker"


def launch(spec: TrainSpec, *, env: dict[str, str] | None = None) -> Path:
    if spec.train.launcher.kind == "in_process":
        from cirflow.training.engine import fit
        from cirflow.training.refs import build

        return fit(cfg=spec.train, ckpt_dir=spec.ckpt_dir, **build(spec)).final_dir
    ckpt_dir = Path(spec.ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    spec_path = ckpt_dir / "spec.json"
    spec_path.write_text(spec.model_dump_json(indent=2))
    cmd = command(spec, spec_path)
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise CirflowError(f"training workers exited with code {proc.returncode} ({' '.join(cmd[:6])} ...); "
                           f"rerun to resume from the last checkpoint in {ckpt_dir}")
    return ckpt_dir / "final"


def command(spec: TrainSpec, spec_path: Path) -> list[str]:
    """The launch command line. `accelerate launch --cpu` starts one process only (no MPI here), so CPU runs
    with several processes go through torchrun, which accelerate then joins with the gloo backend."""
    cfg = spec.train
    n = cfg.launcher.num_processes
    worker = ["-m", WORKER, "--spec", str(spec_path)]
    import torch  # here: cirflow.training's package init imports this module, and `--plan` must not load torch

    if cfg.launcher.kind == "accelerate" and torch.cuda.is_available():
        return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n),
                *(["--multi_gpu"] if n > 1 else []), "--mixed_precision", cfg.mixed_precision,
                *cfg.accelerate.launch_args, *worker]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *worker]
