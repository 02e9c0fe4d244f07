"""Launch an OpenAI-compatible model server (`vllm serve`, `transformers serve`) as a child process.

The server runs in its own process group so that closing kills it together with its workers (vLLM forks
engine processes). Its output goes to a log file, never to our stdout: model servers are chatty and a
crash is diagnosed from the log tail we put in the error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import httpx


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


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class ServerProcess:
    """`with ServerProcess(cmd) as s: s.base_url` — started and healthy on enter, killed on exit."""

    def __init__(
        self,
        command: list[str],
        startup_timeout_s: float = 600,
        log_path: str | os.PathLike | None = None,
        env: dict[str, str] | None = None,
        substitutions: dict[str, str] | None = None,
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
        self._proc: subprocess.Popen | None = None
        self._finalizer = None

    def start(self) -> "ServerProcess":
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
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
                    raise RuntimeError(
                        f"model server exited with code {self._proc.returncode} during startup "
                        f"(command {self.command[0]!r}, log {self.log_path}):\n{_tail(self.log_path)}"
                    )
                try:
                    if client.get(f"{root}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"model server not healthy after {self._startup_timeout_s:.0f} s "
                        f"(log {self.log_path}):\n{_tail(self.log_path)}"
                    )
                time.sleep(0.25)

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
