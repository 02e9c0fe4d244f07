"""Launch an OpenAI-compatible model server (`vllm serve`, `transformers serve`) as a child process.

The server runs in its own process group so that closing kills it together with its workers (vLLM forks
engine processes). Its output goes to a log file, never to our stdout: model servers are chatty and a
crash is diagnosed from the (redacted) log tail we put in the error.

A launched server dies with cirflow, even with a kill -9 that runs no cleanup (issue 9): on Linux the child
asks the kernel for a parent-death signal (prctl PR_SET_PDEATHSIG, SIGTERM, so vLLM still stops its engine
processes). The kernel sends it when the *thread* that forked the child exits (prctl(2)), so every server
is forked from one long-lived launcher thread, never from a Prefect worker thread that may finish first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import httpx

from cirflow.models.mllm.redact import redact
from cirflow.schemas.errors import BackendUnavailable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_launcher: ThreadPoolExecutor | None = None
_launcher_lock = threading.Lock()


def free_port() -> int:
    # The port is released before the server binds it; another process could take it in between.
    # Rare on a worker, and startup then fails with a clear log tail.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _tail(path: Path, secrets: Sequence[str] = (), lines: int = 5) -> str:
    """The log's last lines, redacted and joined into one line (an error message is one line)."""
    try:
        text = path.read_text(errors="replace")[-20_000:]
    except OSError:
        return ""
    last = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return redact(" | ".join(last), secrets, max_chars=600)


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that sets the parent-death signal, or None where prctl does not exist (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child after fork only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect: no signal will come
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _spawn(command: list[str], **kwargs) -> subprocess.Popen:
    """subprocess.Popen on the launcher thread, which lives as long as the process (see the module doc)."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = ThreadPoolExecutor(1, thread_name_prefix="cirflow-server-launcher")
    return _launcher.submit(subprocess.Popen, command, preexec_fn=_die_with_parent(), **kwargs).result()


class ServerProcess:
    """`with ServerProcess(cmd) as s: s.base_url` — started and healthy on enter, killed on exit."""

    def __init__(
        self,
        command: list[str],
        startup_timeout_s: float = 600,
        log_path: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        substitutions: dict[str, str] | None = None,
        secrets: Sequence[str] = (),
    ):
        if not any("{port}" in a for a in command):
            raise ValueError("server_command must contain '{port}' so that the launched server's port is known")
        self.port = free_port()
        subs = {"port": str(self.port), **(substitutions or {})}
        self.command = [_substitute(a, subs) for a in command]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="cirflow-mllm-server-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self.startup_seconds: float | None = None
        self._startup_timeout_s = startup_timeout_s
        self._env = {**os.environ, **(env or {})}
        self._secrets = list(secrets)  # literal values (the api key) kept out of error messages
        self._proc: subprocess.Popen | None = None
        self._finalizer = None

    def start(self) -> "ServerProcess":
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = _spawn(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env, start_new_session=True,  # own process group: killpg reaches its children
            )  # fmt: skip
        # Kill the server even if close() is never called (crash, forgotten close, interpreter exit).
        self._finalizer = weakref.finalize(self, _kill_group, self._proc, 15.0)
        try:
            self._wait_healthy()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_healthy(self) -> None:
        # /health answers 200 only once the model is loaded (vLLM and transformers serve alike). /v1/models is
        # not required: transformers serve answers it with 500 when there is no HF cache directory.
        root = self.base_url.removesuffix("/v1")
        deadline = time.monotonic() + self._startup_timeout_s
        with httpx.Client(timeout=5) as client:
            while True:
                if self._proc.poll() is not None:
                    raise BackendUnavailable(
                        f"launched server {self.command[0]!r}",
                        f"exited with code {self._proc.returncode} during startup (log {self.log_path}): "
                        f"{_tail(self.log_path, self._secrets)}",
                    )
                try:
                    if client.get(f"{root}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise BackendUnavailable(
                        f"launched server {self.command[0]!r}",
                        f"not healthy after {self._startup_timeout_s:.0f} s (log {self.log_path}): "
                        f"{_tail(self.log_path, self._secrets)}",
                    )
                time.sleep(0.25)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self, grace_s: float = 15.0) -> None:
        if self._proc is not None:
            _kill_group(self._proc, grace_s)
        if self._finalizer is not None:
            self._finalizer.detach()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _substitute(arg: str, subs: dict[str, str]) -> str:
    # str.replace, not str.format: server arguments may contain JSON braces ('{"image": 2}').
    for k, v in subs.items():
        arg = arg.replace("{" + k + "}", v)
    return arg
