"""What the console shows: the CLI's own lines and one progress display per stage, not every library's logs.

`configure` runs before Prefect, transformers or tqdm are imported: those read their settings from the
environment at import time. A variable the user set keeps its value."""

from __future__ import annotations

import logging
import os
import sys


def interactive() -> bool:
    """Progress bars only on a terminal: piped output would get one line per bar refresh."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def configure(verbose: bool = False) -> None:
    # flow / task run lines ("Finished in state Completed()") are INFO; warnings and errors still show
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    # weight-loading and download bars of transformers / huggingface_hub: a second bar under every stage bar
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "info" if verbose else "error")
    if not interactive():
        os.environ.setdefault("TQDM_DISABLE", "1")  # bars a caller did not switch off itself (tqdm reads TQDM_*)
    if not verbose:
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(no_user_error_traceback)


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


def quiet_diffusers() -> None:
    """diffusers' own loading bar ignores HF_HUB_DISABLE_PROGRESS_BARS; switch it off where diffusers is loaded."""
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()


__all__ = ["configure", "interactive", "progress", "quiet_diffusers"]
