"""A model server that cirflow launches (mllm.server_command) dies with cirflow (issue 9): after kill -9 of
the launching process, which runs no cleanup at all, no launched server survives. Real processes throughout:
a stand-in "cirflow" process launches a tiny HTTP server through ServerProcess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cirflow.models.mllm.server import ServerProcess

# A minimal model-server stand-in: answers /health, and forks a worker of its own (as vLLM forks engines).
SERVER = textwrap.dedent("""
    import http.server, subprocess, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a):
            pass
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("worker", worker.pid, flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")

# The stand-in for cirflow: starts the server from a worker thread that exits at once (as a Prefect task
# thread may), prints the server's pid, then lives until killed.
CIRFLOW = textwrap.dedent("""
    import sys, threading, time
    from cirflow.models.mllm.server import ServerProcess
    held = []
    def start():
        held.append(ServerProcess([sys.executable, "-c", sys.argv[1], "{port}"], 60, log_path=sys.argv[2]).start())
    t = threading.Thread(target=start)
    t.start()
    t.join()
    print(held[0].pid, flush=True)
    time.sleep(600)
""")


def alive(pid: int) -> bool:
    """Running, not a zombie: an orphan's zombie waits for whoever adopted it to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def worker_pid(log: Path) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith("worker "):
                return int(line.split()[1])
        time.sleep(0.05)
    raise AssertionError(f"the server never reported its worker: {log.read_text()!r}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux (prctl)")
def test_kill9_of_cirflow_takes_the_launched_server_with_it(tmp_path):
    log = tmp_path / "server.log"
    cirflow = subprocess.Popen([sys.executable, "-c", CIRFLOW, SERVER, str(log)], stdout=subprocess.PIPE, text=True)
    started: list[int] = []
    try:
        server = int(cirflow.stdout.readline())
        started.append(server)
        worker = worker_pid(log)
        started.append(worker)
        time.sleep(1.0)
        # the thread that launched it has exited, cirflow lives: the server must keep running
        assert alive(server) and alive(worker)
        os.kill(cirflow.pid, signal.SIGKILL)
        cirflow.wait(10)
        assert wait_gone(server), f"launched server {server} survived kill -9 of its parent"
    finally:
        cirflow.kill()
        # the server's own worker is orphaned by the server's death, not signalled by the kernel; a real
        # server stops its workers on SIGTERM (vLLM does), this stand-in does not: end it (and any survivor)
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_close_kills_the_whole_process_group(tmp_path):
    log = tmp_path / "server.log"
    s = ServerProcess([sys.executable, "-c", SERVER, "{port}"], 60, log_path=log).start()
    worker = worker_pid(log)
    assert s.running and alive(worker)
    s.close(grace_s=5)
    assert not s.running and wait_gone(s.pid) and wait_gone(worker)
