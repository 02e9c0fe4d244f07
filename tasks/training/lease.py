"""One training per key at a time: a whole-stage lease in the artifact folder.

Two identical trainings (same key: a rerun started while the first still runs, two flows sharing a stage) would
write the same checkpoint folder (`_checkpoints/`, see train.py): the engine's `clean_partial` would delete the
other's half-written checkpoint and both would rename over each other. Shard leases (storage/lease.py) do not help
there: a training is one piece of work, not shards. So the training stage takes the lease `training` in the
artifact folder (`_leases/training.<generation>.json`, the same mechanism and staleness rules as the shard leases)
before it touches the checkpoints, and holds it until its manifest is written and the checkpoints are removed.

A second identical training waits while the lease's holder lives, and then either returns the artifact the first
one committed (nothing is trained twice) or, when the first one died (a dead pid on this host, or an expired lease:
its heartbeat stopped), takes the lease over and resumes from the checkpoints the first one left.
The holder renews its lease from a heartbeat thread (every fifth of the lease time), since a training outlasts
any fixed lease. Limits: two identical trainings in threads of ONE process are not kept apart (a process never
honours its own leases, storage/lease.py); another host's holder that stops renewing is taken over once its lease
expires (CIRFLOW_LEASE_SECONDS, default 600 s), but its checkpoints stay on its own scratch disk (object stores).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from cirflow.storage import ArtifactStore
from cirflow.storage.lease import LEASE_SECONDS, Leases

LEASE = "training"
POLL_SECONDS = 1.0  # how often a waiting training looks again (a training takes minutes; the cost is one listing)
log = logging.getLogger(__name__)


class TrainingLease:
    def __init__(self, store: ArtifactStore, artifact_dir: str, seconds: float = LEASE_SECONDS,
                 poll: float = POLL_SECONDS):
        self.leases = Leases(store, artifact_dir, seconds)
        self.poll = poll
        self.waited = False  # another writer held the lease when we first asked
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def take(self, finished: Callable[[], bool], on_wait: Callable[[dict], None] | None = None) -> bool:
        """Block until the lease is ours (True: train) or `finished()` says another writer committed the artifact
        (False: reuse it)."""
        while True:
            if finished():
                return False
            if self.leases.acquire(LEASE):
                if finished():  # committed between our look and the lease: nothing left to train
                    self.leases.release_all()
                    return False
                self._start_heartbeat()
                return True
            holder = self.leases.holder(LEASE)
            if not self.waited and holder is not None:
                self.waited = True
                log.info("another process (host %s, pid %s) is training this model; waiting for it",
                         holder.get("host"), holder.get("pid"))
                if on_wait is not None:
                    on_wait(holder)
            time.sleep(self.poll)

    def _start_heartbeat(self) -> None:
        interval = max(self.leases.seconds / 5, 0.05)

        def beat() -> None:
            while not self._stop.wait(interval):
                try:
                    self.leases.renew()
                except OSError as e:  # a failed renewal is retried at the next beat
                    log.warning("cannot renew the training lease: %s", e)

        self._beat = threading.Thread(target=beat, name="cirflow-training-lease", daemon=True)
        self._beat.start()

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        self.leases.release_all()

    def cleanup(self) -> None:  # execute() calls cleanup() on ctx.scratch values when the stage run ends
        self.release()
