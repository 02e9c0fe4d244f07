"""Leases: which writer computes which shard of an artifact, so concurrent identical runs split the work.

A lease is a small JSON file `_leases/<shard name>.<generation>.json` holding its owner (host, pid, a random
token) and an expiry. The lease in force is the highest generation. A writer takes a shard by creating the
next generation exclusively (a hard link locally, a conditional PUT on s3fs) and then confirming that no
higher generation appeared; it may take a new generation only when the one in force is stale: expired, or
its owner's pid is dead on this host. Nothing is ever overwritten, so two writers cannot both break the same
stale lease. A holder renews its leases whenever it commits a shard and releases each one after the commit.

Leases only decide who computes; correctness does not rest on them (a commit re-reads the commit record and
keeps a valid one it finds). Leases of this same process are not honoured — a stage interrupted by an
exception in this process would otherwise block its own rerun until expiry.
Backends without exclusive create (fsspec's generic check-then-write) can let two writers hold one lease in
a rare race: both compute the shard and the first commit is kept.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import secrets
import time

from cirflow.storage.manifest import LEASES
from cirflow.storage.writers import HOST, writer_alive

LEASE_SECONDS = float(os.environ.get("CIRFLOW_LEASE_SECONDS", 600))
# a lease file that does not parse is being written right now, or is garbage once older than this
GARBAGE_GRACE_SECONDS = 10.0
_GEN_RE = re.compile(r"^(?P<name>.+)\.(?P<gen>\d+)\.json$")


class Leases:
    """The leases one writer (one StageRun) holds in one artifact folder."""

    def __init__(self, store, artifact_dir: str, seconds: float = LEASE_SECONDS):
        self.store, self.dir, self.seconds = store, posixpath.join(artifact_dir, LEASES), seconds
        self.token = secrets.token_hex(8)
        self.held: dict[str, str] = {}  # shard name -> path of our lease file

    def _doc(self) -> bytes:
        return json.dumps({"host": HOST, "pid": os.getpid(), "token": self.token,
                           "expires": time.time() + self.seconds}).encode()

    def _generations(self, name: str) -> dict[int, str]:
        try:
            paths = self.store.fs.ls(self.dir, detail=False)
        except FileNotFoundError:
            return {}
        out = {}
        for p in paths:
            m = _GEN_RE.match(posixpath.basename(p))
            if m and m["name"] == name:
                out[int(m["gen"])] = p
        return out

    def holder(self, name: str) -> dict | None:
        """The owner of the lease in force on `name` when it blocks us (live, another process), else None."""
        gens = self._generations(name)
        if not gens:
            return None
        path = gens[max(gens)]
        try:
            doc = json.loads(self.store.read_bytes(path))
            host, pid, expires = str(doc["host"]), int(doc["pid"]), float(doc["expires"])
        except FileNotFoundError:
            return {"host": "?", "pid": 0, "path": path}  # released this instant: look again later
        except (OSError, ValueError, KeyError, TypeError):
            mtime = self.store.mtime(path)
            young = mtime is not None and time.time() - mtime < GARBAGE_GRACE_SECONDS
            return {"host": "?", "pid": 0, "path": path} if young else None
        if (host, pid) == (HOST, os.getpid()) or time.time() > expires or writer_alive(host, pid) is False:
            return None
        return {"host": host, "pid": pid, "path": path}

    def acquire(self, name: str) -> bool:
        """Take the lease on `name`; False while another live writer holds it."""
        if name in self.held:
            return True
        gens = self._generations(name)
        if gens and self.holder(name) is not None:
            return False
        gen = max(gens) + 1 if gens else 0
        path = posixpath.join(self.dir, f"{name}.{gen}.json")
        if not self.store.create_exclusive(path, self._doc()):
            return False
        now = self._generations(name)
        if not now or max(now) != gen:  # a writer who read an older listing took a later generation: it wins
            self.store.discard(path)
            return False
        for g, p in now.items():  # generations below ours are stale by construction
            if g < gen:
                self.store.discard(p)
        self.held[name] = path
        return True

    def renew(self) -> None:
        """Push every held lease's expiry forward (called at each commit, so a slow stage keeps its shards)."""
        for path in self.held.values():
            self.store.write_atomic(path, self._doc())

    def release(self, name: str) -> None:
        path = self.held.pop(name, None)
        if path is not None:
            self.store.discard(path)

    def release_all(self) -> None:
        for name in list(self.held):
            self.release(name)
