"""A GPU gate: Prefect global concurrency limits so that two builds never hold models on one GPU at once.

    with gpu_slot("gpu"):                 # blocks until the "gpu" limit has a free slot
        model = load_model(...)           # ... and holds it until the block exits

In a flow, where models load lazily and only if some stage really computes, use one GpuGate per flow: the
first model load takes the slot, later loads in the same flow reuse it, and it is released when the gate's
block exits (after the models are closed):

    with GpuGate(cfg.gpu_limit) as gate, \\
         gate.lazy(lambda: load_mllm(cfg.mllm), when=uses_gpu(cfg.mllm)) as mllm, \\
         gate.lazy(lambda: OpenClipEncoder(cfg.encoder), when=uses_gpu(cfg.encoder)) as encoder:
        ...                               # a fully cached run never waits for the GPU

- The limit (default name "gpu", or $CIRFLOW_GPU_LIMIT) is created if missing, with `limit` slots (default 1;
  $CIRFLOW_GPU_SLOTS). One limit per GPU: name them "gpu-0", "gpu-1" and give each worker its own, or one
  limit "gpu" with as many slots as a machine has GPUs when every job needs a single GPU.
- A no-op without a Prefect API (PREFECT_API_URL unset: plain Python or an ephemeral server, which is private
  to one process and could not coordinate anything), or with CIRFLOW_GPU_GATE=off.
- Slots are leased: the lease is renewed in the background while held, and expires on the server if the
  process dies, so a crashed build cannot block the GPU forever.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator, TypeVar

from cirflow.tasks.lazy import Lazy

T = TypeVar("T")
DEFAULT_NAME = "gpu"
log = logging.getLogger(__name__)


def limit_name(name: str | None = None) -> str:
    return name or os.environ.get("CIRFLOW_GPU_LIMIT") or DEFAULT_NAME


def gate_enabled() -> bool:
    """True when there is a shared Prefect API to coordinate through (and the gate is not switched off)."""
    mode = os.environ.get("CIRFLOW_GPU_GATE", "auto").lower()
    if mode in ("off", "0", "false", "no"):
        return False
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def ensure_limit(name: str | None = None, limit: int | None = None) -> bool:
    """Create the global concurrency limit `name` with `limit` slots if it does not exist (an existing one is
    left as configured, and made active if it was switched off). Returns True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = limit_name(name)
    slots = int(limit or os.environ.get("CIRFLOW_GPU_SLOTS") or 1)
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
                return True
            except ObjectAlreadyExists:  # another build created it between our read and our create
                return False
        if not existing.active:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active=True))
        return False


@contextmanager
def gpu_slot(name: str | None = None, *, occupy: int = 1, limit: int | None = None,
             timeout_seconds: float | None = None, lease_duration: float = 300) -> Iterator[bool]:
    """Hold `occupy` slots of the global concurrency limit `name` for the block. Yields True when a slot is
    held, False when the gate is a no-op (no API)."""
    if not gate_enabled():
        yield False
        return
    from prefect.concurrency.sync import concurrency

    name = limit_name(name)
    ensure_limit(name, limit)
    log.info("waiting for a slot of concurrency limit %r", name)
    # strict: a limit deleted meanwhile is an error, not a silently ungated model load
    with concurrency(name, occupy=occupy, timeout_seconds=timeout_seconds, lease_duration=lease_duration,
                     strict=True, raise_on_lease_renewal_failure=False):
        log.info("holding a slot of concurrency limit %r", name)
        yield True


class GpuGate:
    """One slot for a whole flow, taken lazily by the first model load (see the module doc)."""

    def __init__(self, name: str | None = None, *, occupy: int = 1, limit: int | None = None,
                 timeout_seconds: float | None = None):
        self.name, self.occupy, self.limit, self.timeout_seconds = limit_name(name), occupy, limit, timeout_seconds
        self._stack: ExitStack | None = None
        self._lock = threading.Lock()
        self.held = False  # a slot is held now (False also when the gate is a no-op)
        self.acquired = False  # acquire() ran and the block has not exited
        self.used = False  # some model load went through the gate (stays True after release)

    def acquire(self) -> None:
        with self._lock:
            if self.acquired:
                return
            stack = ExitStack()
            self.held = stack.enter_context(gpu_slot(self.name, occupy=self.occupy, limit=self.limit,
                                                     timeout_seconds=self.timeout_seconds))
            self._stack, self.acquired, self.used = stack, True, True

    def release(self) -> None:
        with self._lock:
            if self._stack is not None:
                self._stack.close()
            self._stack, self.acquired, self.held = None, False, False

    def lazy(self, factory: Callable[[], T], *, when: bool = True) -> Lazy[T]:
        """A Lazy whose first get() takes the slot before building; `when=False` (a CPU model, a remote
        server) gives a plain Lazy."""
        if not when:
            return Lazy(factory)

        def build() -> T:
            self.acquire()
            return factory()

        return Lazy(build)

    def __enter__(self) -> "GpuGate":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def uses_gpu(cfg) -> bool:
    """Whether a model config loads weights on a local GPU: an encoder or transformers MLLM whose device is
    cuda (or auto with CUDA present), or an http MLLM that launches its own server. An http MLLM with a
    base_url talks to a server that has its own GPU and needs no slot here."""
    backend = getattr(cfg, "backend", None)
    if backend == "http":
        return bool(getattr(cfg, "server_command", None)) and not getattr(cfg, "base_url", None)
    device = str(getattr(cfg, "device", "auto"))
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch: nothing of ours loads on a GPU
        return False


__all__ = ["GpuGate", "ensure_limit", "gate_enabled", "gpu_slot", "limit_name", "uses_gpu"]
