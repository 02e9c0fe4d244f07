"""What a user sees in a pipe: `cirflow demo` from a cold start prints a short, human-readable report with no
progress bars and no Prefect INFO lines; `--version`; `| head -1` ends without a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

CIRFLOW = str(Path(sys.executable).with_name("cirflow"))
ENV = os.environ | {"HF_HUB_OFFLINE": "1"}


def test_version():
    out = subprocess.run([CIRFLOW, "--version"], capture_output=True, text=True, check=True, env=ENV)
    assert out.stdout.strip() == f"cirflow {version('cirflow')}"


@pytest.mark.slow
def test_demo_piped_is_short_and_quiet(tmp_path):
    workdir = tmp_path / "demo"
    out = subprocess.run([CIRFLOW, "demo", "--workdir", str(workdir)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=ENV, timeout=900)
    text = out.stdout
    assert out.returncode == 0, text
    lines = text.splitlines()
    assert len(lines) < 30, text
    assert not re.search(r"\d+%\||it/s|s/it|\[A|Loading weights", text), text  # no progress bars
    assert " INFO " not in text and "Traceback" not in text, text
    assert not re.search(r"\['|\{'", text), text  # no Python reprs of lists / dicts
    assert "| ok | failed |" in text  # the stage table counts ok / failed items
    runs = [line.split(": ", 1)[1].split(" (")[0] for line in lines if line.startswith("run folder: ")]
    assert len(runs) == 2 and all((Path(d) / "report.html").is_file() for d in runs), text

    # a reader that stops after one line: the warm rerun ends cleanly
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; '{CIRFLOW}' demo --workdir '{workdir}' | head -1"],
                           capture_output=True, text=True, env=ENV, timeout=900)
    assert piped.returncode == 0 and "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr
    assert len(piped.stdout.splitlines()) == 1
