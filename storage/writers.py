"""Who is writing: a writer's identity (host + pid), its unique temporary names, and whether a leftover of some
writer is stale.

Several processes (two identical runs, Ray partitions, a Prefect retry) may write into one artifact folder at
once. Each writes under a temporary name of its own and renames; a cleaner may remove only temporary files
whose writer is gone (a dead pid on this host) or that are older than STALE_TEMP_SECONDS (another host's
writer cannot be asked), never a live sibling's file.
"""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import socket
import time

HOST = socket.gethostname() or "localhost"
STALE_TEMP_SECONDS = 15 * 60
TMP_MARK = ".tmp-"
# <final name>.tmp-<pid>@<host>-<random>; the host may hold '-' or '.', the random part never does
_TMP_RE = re.compile(r"\.tmp-(?P<pid>\d+)@(?P<host>.+)-(?P<rand>[0-9a-f]+)$")


def temp_name(path: str) -> str:
    """A temporary name beside `path` unique to this process and call (pid + random)."""
    return f"{path}{TMP_MARK}{os.getpid()}@{HOST}-{secrets.token_hex(6)}"


def is_temp(path: str) -> bool:
    return TMP_MARK in posixpath.basename(path)


def pid_alive(pid: int) -> bool:
    """True when `pid` runs on this host. A zombie (killed, not yet reaped by its parent) counts as dead: a test
    that kill -9s a child and resumes before wait() must not wait for the zombie's lease."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)


def writer_alive(host: str, pid: int) -> bool | None:
    """Whether a writer is alive: known on this host, None (unknown) for another host."""
    return pid_alive(pid) if host == HOST else None


def is_stale_temp(path: str, mtime: float | None) -> bool:
    """A temporary file nobody will rename any more: its writer died on this host, or it is old."""
    m = _TMP_RE.search(posixpath.basename(path))
    if m is not None and writer_alive(m["host"], int(m["pid"])) is False:
        return True
    return mtime is not None and time.time() - mtime > STALE_TEMP_SECONDS
