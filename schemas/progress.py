"""The console's progress: one live rich display per command, one line per running stage.

A stage's line shows its name and group, items done / total, ok / failed counts and the elapsed time. The loops a
stage runs inside (MLLM requests, encoder batches, diffusion steps, training steps) do not draw bars of their own:
`step_progress` folds them into the line of the stage that runs them ("req 12/30"). Off a terminal, or for
`--json`, nothing is drawn and nothing of rich is imported; the counts are still kept.

It lives in the lowest layer because models and training report into it and import nothing above `schemas`.

    with display():                                   # the CLI, once per command (cli/console.py: live)
        with stage_progress("caption_images", 30, group="cirr") as line:
            line.advance(8, failed=1)                 # a committed shard: 8 items, 1 failed
            with step_progress(8, "req") as steps:    # inside a model: folded into the stage's line
                steps.update(1)
"""

from __future__ import annotations

import contextvars
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

_lock = threading.RLock()
_progress: Any = None  # the live rich.progress.Progress while a stage runs, shared by every thread (Prefect's tasks)
_users = 0  # stage lines open in it
_host: Any = None  # set by `display`: True (the terminal) or the rich Console to draw on
_group: contextvars.ContextVar[str] = contextvars.ContextVar("cirflow_progress_group", default="")
_current: contextvars.ContextVar["StageLine | None"] = contextvars.ContextVar("cirflow_stage_line", default=None)


def interactive() -> bool:
    """Bars only on a terminal: piped output would get one line per refresh."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def _columns():
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    class Count(MofNCompleteColumn):
        """done / total; nothing for a stage with no count (its bar pulses): "0/?" would read as stuck."""

        def render(self, task):
            return super().render(task) if task.total is not None else ""

    return (TextColumn("{task.description}"), BarColumn(bar_width=24), Count(),
            TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TextColumn("{task.fields[detail]}"))


def _acquire() -> Any:
    global _progress, _users
    with _lock:
        if _progress is None:
            from rich.progress import Progress

            # transient: a stage's line goes when it ends (the stage table reports it); the command's own lines
            # print with no live display on screen, byte for byte what a pipe gets
            _progress = Progress(*_columns(), console=None if _host is True else _host, transient=True)
            _progress.start()
        _users += 1
        return _progress


def _release() -> None:
    global _progress, _users
    with _lock:
        _users -= 1
        if _users == 0 and _progress is not None:
            _progress.stop()
            _progress = None


@contextmanager
def display(enabled: bool = True, console=None) -> Iterator[None]:
    """The command's display: the stage lines opened inside it (in any thread) share one live rich Progress,
    shown while at least one stage runs. A no-op when `enabled` is False or output is not a terminal, unless a
    rich `console` is given (tests)."""
    global _host
    if not enabled or (console is None and not interactive()):
        yield
        return
    previous, _host = _host, console if console is not None else True
    try:
        yield
    finally:
        _host = previous


@contextmanager
def group(label: str) -> Iterator[None]:
    """The group (benchmark split, build, comparison row) the stages started inside belong to: shown on their
    lines. Nested groups read outer first ("seed 1 · cirr")."""
    outer = _group.get()
    token = _group.set(f"{outer} · {label}" if outer and label else label or outer)
    try:
        yield
    finally:
        _group.reset(token)


class StageLine:
    """One stage's line. Counts are kept even when nothing is drawn (`progress` None)."""

    def __init__(self, progress: Any, name: str, total: int | None, done: int = 0, group: str = ""):
        self.name, self.total, self.done, self.ok, self.failed = name, total, done, 0, 0
        self.started = total is not None  # False: no count yet (a stage that overrides `produce`)
        self._progress = progress
        label = f"{group} · {name}" if group else name
        self._task = None if progress is None else progress.add_task(
            label, total=total, completed=done, counts="", detail="")

    def start(self, total: int | None, done: int = 0) -> None:
        """The work list is known: `total` items, `done` of them committed by an earlier run. A stage with no
        natural count never calls it: its line shows a pulsing bar and its name only."""
        self.total, self.done, self.started = total, done, True
        self._update(total=total, completed=done)

    def advance(self, n: int = 1, failed: int = 0) -> None:
        """`n` items finished, `failed` of them failed."""
        failed = min(max(failed, 0), n)
        self.done += n
        self.ok += n - failed
        self.failed += failed
        self._update(advance=n, counts=self.counts(), detail="")

    def counts(self) -> str:
        return f"ok {self.ok} · failed {self.failed}" if self.ok or self.failed else ""

    def detail(self, text: str) -> None:
        """What the stage is inside of right now ("req 4/8"): shown after the counts."""
        self._update(detail=text)

    def _update(self, **fields) -> None:
        if self._task is not None:
            self._progress.update(self._task, **fields)

    def close(self) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None


@contextmanager
def stage_progress(name: str, total: int | None = None, *, done: int = 0, enabled: bool = True,
                   group: str | None = None) -> Iterator[StageLine]:
    """A line for one stage while it runs, in the command's display (one is opened on a terminal when the caller
    has none: a stage run from Python). The line is removed when the stage ends: the stage table reports it."""
    drawn = enabled and (_host is not None or interactive())
    progress = _acquire() if drawn else None
    line = StageLine(progress, name, total, done, _group.get() if group is None else group)
    token = _current.set(line)
    try:
        yield line
    finally:
        _current.reset(token)
        line.close()
        if drawn:
            _release()


def current() -> StageLine | None:
    """The line of the stage running in this context, if any."""
    return _current.get()


class Steps:
    """A loop inside a stage (requests, batches, steps), shown as "unit i/total" on the stage's line; or, for a
    loop with a line of its own (`own`), that line's bar."""

    def __init__(self, line: StageLine | None, total: int | None, unit: str, done: int = 0, own: bool = False):
        self.line, self.total, self.unit, self.n, self.own = line, total, unit, done, own
        self._postfix = ""
        self._show()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.own and self.line is not None:
            self.line.done += n
            self.line._update(advance=n)  # steps, not items: no ok / failed counts
        self._show()

    def postfix(self, text: str) -> None:
        """A short live value after the count ("loss 0.4312")."""
        self._postfix = text
        self._show()

    def _show(self) -> None:
        if self.line is None:
            return
        of = f"/{self.total}" if self.total is not None else ""
        count = f"{self.unit}s" if self.own else f"{self.unit} {self.n}{of}"  # own: the bar shows n / total
        self.line.detail(" ".join(s for s in (count, self._postfix) if s))


@contextmanager
def step_progress(total: int | None, unit: str, *, done: int = 0, enabled: bool = True,
                  standalone: str | None = None) -> Iterator[Steps]:
    """Progress of a loop inside a stage, folded into the running stage's line. Outside any stage it is counted
    only, unless `standalone` names a line of its own (training run outside a stage)."""
    line = current() if enabled else None
    if line is None and enabled and standalone:
        with stage_progress(standalone, total, done=done) as own:
            yield Steps(own, total, unit, done, own=True)
        return
    if line is not None and not line.started and total is not None:
        # a stage with no item count of its own (training, a ranking): its loop's count is the line's count
        line.start(total, done)
        try:
            yield Steps(line, total, unit, done, own=True)
        finally:
            line.detail("")
        return
    try:
        yield Steps(line, total, unit, done)
    finally:
        if line is not None:
            line.detail("")


def quiet_libraries() -> None:
    """Weight-loading bars would stack under the stage lines. transformers and huggingface_hub read
    HF_HUB_DISABLE_PROGRESS_BARS (set by the CLI) at import; diffusers' loading bars ignore it, so a loader calls
    this right after importing diffusers. Only libraries already imported are touched: nothing heavy is loaded."""
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


__all__ = ["StageLine", "Steps", "current", "display", "group", "interactive", "quiet_libraries",
           "stage_progress", "step_progress"]
