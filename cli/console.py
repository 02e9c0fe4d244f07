"""What the console shows: the CLI's own lines and one progress display per command (a line per running stage,
`cirflow.schemas.progress`), not every library's logs or bars.

`configure` runs before Prefect, transformers or tqdm are imported: those read their settings from the
environment at import time. A variable the user set keeps its value."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

from cirflow.schemas.progress import interactive  # bars only on a terminal (imports nothing heavy)


def configure(verbose: bool = False) -> None:
    # flow / task run lines ("Finished in state Completed()") are INFO; warnings and errors still show
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    # weight-loading and download bars of transformers / huggingface_hub: a second bar under every stage bar
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "info" if verbose else "error")
    # Prefect's client telemetry prints a first-run notice on a terminal (and would call home); like the server's
    # analytics (cli/main.py), off unless the user sets it
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # every library's own tqdm bar (datasets' "Map", a download): on a terminal it would stack under the stage
    # lines, piped it prints a line per refresh. cirflow's progress is rich's display (tqdm reads TQDM_* itself)
    os.environ.setdefault("TQDM_DISABLE", "1")
    if not verbose:
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(no_user_error_traceback)
    quiet_diffusers()  # libraries a command imported already; model loaders call it again after their imports


def no_user_error_traceback(record: logging.LogRecord) -> bool:
    """Prefect logs a failed task or flow with its traceback (and again for each retry and for the flow). For a
    CirflowError the traceback is noise: the cause is its one line, printed as `cirflow: error:` at the end;
    Prefect keeps the record's message line (also in its UI). Other exceptions keep their tracebacks."""
    from cirflow.schemas.errors import CirflowError

    if record.exc_info and isinstance(record.exc_info[1], CirflowError):
        record.exc_info, record.exc_text = None, None
    return True


def progress(as_json: bool) -> bool:
    """The `progress` a command passes to flows: bars on a terminal, none for --json or piped output."""
    return not as_json and interactive()


@contextmanager
def live(args) -> Iterator[None]:
    """The command's one progress display: each running stage is a line of it (no display for --json or off a
    terminal). rich is imported only when it draws."""
    from cirflow.schemas.progress import display

    with display(enabled=progress(bool(getattr(args, "json", False)))):
        yield


def quiet_diffusers() -> None:
    """Weight-loading bars (transformers, diffusers, huggingface_hub) would stack under the stage lines. Only
    libraries already imported are touched: importing torch or diffusers just to silence them would cost seconds
    on every command (`--plan`). diffusers ignores HF_HUB_DISABLE_PROGRESS_BARS, so its loaders call this too."""
    from cirflow.schemas.progress import quiet_libraries

    quiet_libraries()


__all__ = ["configure", "interactive", "live", "progress", "quiet_diffusers"]
