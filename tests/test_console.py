"""What a user sees. In a pipe: `cirflow demo` from a cold start prints a short, human-readable report with no
progress bars and no Prefect INFO lines; `--version`; `| head -1` ends without a traceback. On a terminal: one
rich progress line per running stage (requests, batches and steps folded into it), no library bars, and the same
report once the lines are gone."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from rich.console import Console

from cirflow.schemas import progress

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
    assert "━" not in text and "\x1b[" not in text, text  # nor rich's bars or any terminal control sequence
    assert "Prefect collects" not in text, text  # no telemetry notice
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


# ------------------------------------------------------------------------------------------ the stage line API


def _console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=160, color_system=None), buf


def test_stage_line_counts_and_folds_inner_loops():
    console, buf = _console()
    with progress.display(console=console), progress.group("cirr"):
        with progress.stage_progress("caption_images") as line:
            line.start(10, done=2)  # 2 items committed by an earlier run
            line.advance(4, failed=1)
            with progress.step_progress(6, "req") as steps:
                steps.update(2)
                live = progress._progress
                assert len(live.tasks) == 1  # the request loop has no line of its own
                live.refresh()
            line.advance(4)
            assert (line.done, line.ok, line.failed) == (10, 7, 1)
            task = live.tasks[0]
            assert (task.completed, task.total) == (10, 10)
            live.refresh()
    assert progress._progress is None  # the display ends with its last stage line
    text = buf.getvalue()
    assert "cirr · caption_images" in text
    assert " 6/10 ok 3 · failed 1" in text and "req 2/6" in text
    assert "10/10 ok 7 · failed 1" in text


def test_failed_count_is_clamped_to_the_items():
    line = progress.StageLine(None, "x", 4)
    line.advance(2, failed=5)
    line.advance(2, failed=-1)
    assert (line.done, line.ok, line.failed) == (4, 2, 2)


def test_nothing_drawn_off_a_terminal():
    # pytest captures stdout: not a terminal, so no display starts
    with progress.display(), progress.stage_progress("embed_images", 3) as line:
        with progress.step_progress(3, "images") as steps:
            steps.update(3)
        line.advance(3)
        assert progress._progress is None and line._task is None
    assert (line.done, line.ok) == (3, 3)


def test_training_outside_a_stage_gets_one_line():
    console, buf = _console()
    with progress.display(console=console):
        with progress.step_progress(5, "step", done=1, standalone="train") as steps:
            steps.update(2)
            steps.postfix("loss 0.5000")
            assert [t.completed for t in progress._progress.tasks] == [3]
            progress._progress.refresh()
    assert "train" in buf.getvalue() and "3/5" in buf.getvalue() and "loss 0.5000" in buf.getvalue()


def test_diffusers_loading_bars_are_switched_off():
    from diffusers.utils import logging as dlog

    dlog.enable_progress_bar()
    progress.quiet_libraries()
    assert not dlog.is_progress_bar_enabled()


# ------------------------------------------------------------------------------------------ on a terminal


def _screen(raw: str) -> list[str]:
    """The final screen after `raw`: the controls rich's live display uses (CR, LF, erase line, cursor up)."""
    rows, r, c = [""], 0, 0
    for tok in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+|\x1b", raw):
        if tok == "\r":
            c = 0
        elif tok == "\n":
            r, c = r + 1, 0
            rows.extend([""] * (r + 1 - len(rows)))
        elif tok.startswith("\x1b["):
            if tok[-1] == "K":
                rows[r] = "" if tok[2:-1] == "2" else rows[r][:c]
            elif tok[-1] == "A":
                r = max(0, r - int(tok[2:-1] or 1))
        elif tok != "\x1b":
            line = rows[r].ljust(c)
            rows[r], c = line[:c] + tok + line[c + len(tok):], c + len(tok)
    while rows and not rows[-1]:
        rows.pop()
    return rows


def _run_in_pty(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run `argv` with stdout and stderr on a pseudo-terminal (160 columns); returns (exit code, raw output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=ENV, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("timed out under a pty")
            if select.select([master], [], [], 1.0)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow
def test_demo_on_a_terminal_shows_one_line_per_stage(tmp_path):
    code, raw = _run_in_pty([CIRFLOW, "demo", "--workdir", str(tmp_path / "demo")], timeout=900)
    assert code == 0, raw
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    # rich's line for a stage while it runs: group · stage, bar, items done / total, and the requests folded in
    assert re.search(r"cirr · compose_target_text ━+ +\d+/30", plain), plain[-3000:]
    assert re.search(r"req \d+/\d+", plain) and "ok 8 · failed 0" in plain, plain[-3000:]
    # no tqdm bars (weight loading, per request, per batch) and no telemetry notice
    assert not re.search(r"Loading weights|Loading pipeline|it/s\]|s/it\]|\d+%\|", plain), plain[-3000:]
    assert "Prefect collects" not in plain
    # one line at a time: the demo's stages run one after another, and a second, stacked bar would make the live
    # display move the cursor up to redraw it
    assert "\x1b[1A" not in raw
    # when it ends the lines are gone: the screen holds the same report a pipe gets
    screen = _screen(raw)
    assert len(screen) < 30 and not any("━" in row for row in screen), screen
    assert screen[0].endswith("— stages") and "| ok | failed |" in screen[1], screen
    assert screen[-1].startswith("run folder: "), screen


# ------------------------------------------------------------------- lines of stages without an item count


def test_stage_with_no_count_shows_no_zero_of_unknown():
    # a stage that overrides `produce` with nothing to count (a ranking): a pulsing bar and its name, no "0/?"
    console, buf = _console()
    with progress.display(console=console):
        with progress.stage_progress("retrieve"):
            progress._progress.refresh()
    assert "retrieve" in buf.getvalue() and "0/?" not in buf.getvalue()


def test_training_stage_line_counts_steps(tmp_path, monkeypatch):
    """A real train_* stage (the toy of tests/test_training_stage.py) under the display: its steps are the line's
    count ("train_toy ━━ 36/36 steps loss ..."), not "0/?" and not a second line."""
    tests = Path(__file__).parent
    monkeypatch.syspath_prepend(str(tests))
    import training_toy as toy

    from cirflow.schemas.training import Ref, TrainConfig
    from cirflow.storage import ArtifactStore, begin
    from cirflow.tasks.stage import execute
    from cirflow.tasks.training import TrainParams, TrainRuntime, TrainStage

    class TrainToy(TrainStage):
        name = "train_toy"
        inputs = ("vectors",)

    store = ArtifactStore(str(tmp_path / "store"))
    run = begin(store, "toy_vectors", "1", {"n": 384, "seed": 1}, inputs={})
    run.write_table("data", toy.vectors(384, seed=1))
    vectors = run.finish()
    params = TrainParams(base={"name": "toy-dual-mlp", "revision": "random-init-seed0"},
                         model=Ref(target="training_toy:build", kwargs={"hidden": 64}),
                         dataset=Ref(target="training_toy:dataset"), loss=Ref(target="training_toy:infonce"),
                         train=TrainConfig(epochs=6, per_device_batch_size=32, effective_batch_size=64, lr=3e-3,
                                           checkpoint_every=100, progress=True))
    console, buf = _console()
    with progress.display(console=console), progress.group("toy"):
        art = execute(TrainToy, store, {"vectors": vectors}, params, TrainRuntime(progress=True))
    steps = art.manifest.stats["steps"]
    text = buf.getvalue()
    assert re.search(rf"toy · train_toy ━+ +\d+/{steps} .*steps", text), text[-2000:]
    assert f"{steps}/{steps}" in text or f"{steps - 1}/{steps}" in text
    assert "0/?" not in text


@pytest.mark.slow
def test_build_lines_show_the_build_name(tmp_path, tiny_models, prefect_server):
    """`cirflow build mtcir` under the rich display: every stage line carries the build's name as its group."""
    import importlib.util

    from cirflow.cli.run import run_config
    from cirflow.flows.registry import load_config

    spec = importlib.util.spec_from_file_location("test_builds_common", Path(__file__).with_name(
        "test_builds_common.py"))
    bc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bc)
    import yaml

    coll = bc.make_collection(tmp_path / "collection")
    srv = bc.CannedLLM()
    console, buf = _console()
    try:
        cfg = {"name": "console-build", "store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"),
               "collection": {"kind": "folder", "uri": str(coll)},
               "mllm": {"backend": "http", "model": "m", "base_url": srv.url, "api_flavor": "openai"},
               "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
               "pairing": {"min_similarity": -1.0, "max_similarity": 1.0, "spacing": 0.0, "exclusive": True},
               "captions": {"shard_size": 8}, "texts": {"shard_size": 8}}
        path = tmp_path / "build.yaml"
        path.write_text(yaml.safe_dump(cfg))
        with progress.display(console=console):
            run_config(load_config(str(path), "build_mtcir"), progress=True)
    finally:
        srv.close()
    text = buf.getvalue()
    for stage in ("ingest_collection", "caption_collection", "mtcir_texts"):
        assert f"console-build · {stage}" in text, text[-3000:]
    assert not re.search(r"(?<!· )\b(caption_collection|mtcir_texts) ━", text)  # no line without the group


def test_rows_asked_again_advance_the_line(tmp_path):
    """The failed rows of an earlier run (stopped at the threshold) are asked again by the next one: they count on
    its line (done starts below the total, ok / failed counts are theirs), not as already done."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_stage_contract import Count, CountParams, CountRuntime

    from cirflow.storage import ArtifactStore
    from cirflow.tasks.stage import StageFailed, execute

    class Watched(Count):
        """Count, noting its stage line as each shard (or redone rows) starts: (done, ok, failed)."""

        def compute(self, ctx, items):
            self.line = progress.current()
            self.seen.append((self.line.done, self.line.ok, self.line.failed))
            return super().compute(ctx, items)

    store = ArtifactStore(str(tmp_path / "store"))
    with pytest.raises(StageFailed):
        execute(Count(broken={1, 4, 7, 8}), store, {}, CountParams(n=10), CountRuntime(shard_size=3))
    again = Watched(broken={8})
    again.seen = []
    console, buf = _console()
    with progress.display(console=console):
        execute(again, store, {}, CountParams(n=10), CountRuntime(shard_size=3, max_failure_rate=0.5))
    assert sorted(again.computed) == [1, 4, 7, 8]
    line = again.line
    assert again.seen[0] == (6, 0, 0)  # the 4 failed rows are not counted as done when the line starts
    assert (line.total, line.done, line.ok, line.failed) == (10, 10, 3, 1)
    assert "contract_count" in buf.getvalue()
