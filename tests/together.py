"""Start N identical processes at one instant (a start file they all wait for), collect each one's last JSON
line: the harness of the concurrent-writer tests (test_concurrent_runs.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def spawn(argv: list[str], n: int, tmp_path: Path, timeout: float = 600, env: dict | None = None,
          go_arg: bool = True) -> list[tuple[subprocess.CompletedProcess, dict | None]]:
    """Run `n` copies of `[python, *argv, <go file>]`; each waits for the go file (when `go_arg`), so they
    overlap in the work, not in imports. Returns (completed process, its last stdout line as JSON or None)."""
    go = tmp_path / f"go-{time.monotonic_ns()}"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"} | (env or {})
    cmd = [sys.executable, *argv, *([str(go)] if go_arg else [])]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path) for _ in range(n)]
    time.sleep(0.5)
    go.touch()
    outs = []
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        done = subprocess.CompletedProcess(cmd, p.returncode, out, err)
        outs.append((done, last_json(out)))
    return outs


def last_json(out: str) -> dict | None:
    """The last JSON document in `out`: one line, or indented (`--json`), starting at a line's first column."""
    lines = out.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("{")]
    return json.loads("\n".join(lines[starts[-1]:])) if starts else None
