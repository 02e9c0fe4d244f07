"""One model pool per flow, for every method (benchmark runs, comparisons, builds, refinement).

    with ModelPool(cfg.gpu_limit) as pool:
        mllm = pool.add("mllm", lambda: load_mllm(cfg.mllm), gpu=uses_gpu(cfg.mllm), key=cfg.mllm)
        ...                                # stages take pool["mllm"] (a Lazy handle)
        pool.release("mllm")               # no later stage needs it: weights freed, GPU slot given back

- Slots are keyed by name and load lazily: a fully cached run loads nothing and never waits for the GPU.
- Every GPU load goes through the flow's one GpuGate (flows/gpu.py): the first takes the slot, the others reuse
  it, and the slot is given back when the last loaded GPU model of the pool is released.
- `key` says what a slot's model depends on: adding a slot again with the same key returns the loaded handle
  (a sweep over sampler settings loads once), a different key closes the old model first (another encoder).
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from cirflow.flows.gpu import GpuGate, uses_gpu
from cirflow.tasks.lazy import Lazy


def _key(key: Any) -> str:
    from cirflow.storage.keys import canonical_json

    if hasattr(key, "model_dump"):
        key = key.model_dump(mode="json")
    return canonical_json(key)


class ModelPool:
    def __init__(self, gpu_limit: str | None = None, *, gate: GpuGate | None = None):
        self.gate = gate or GpuGate(gpu_limit)
        self._slots: dict[str, tuple[Lazy, str, bool]] = {}  # slot -> (handle, key, on GPU)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ slots
    def add(self, slot: str, factory: Callable[[], Any], *, gpu: bool | Callable[[], bool] = False,
            key: Any = None) -> Lazy:
        """`gpu` may be a callable, asked when the slot loads: whether a device "auto" model goes on the GPU asks
        torch, which a plan or a fully cached run never imports."""
        k = _key(key if key is not None else slot)
        old = self._slots.get(slot)
        if old is not None and old[1] == k:
            return old[0]
        if old is not None:
            self.release(slot)

        def build():
            on_gpu = gpu() if callable(gpu) else gpu
            if self._slots.get(slot, (None,))[0] is handle:
                self._slots[slot] = (handle, k, on_gpu)
            if on_gpu:
                self.gate.acquire()
            return factory()

        handle = Lazy(build)
        self._slots[slot] = (handle, k, False if callable(gpu) else gpu)
        return handle

    def add_mllm(self, slot: str, cfg) -> Lazy:
        from cirflow.models.mllm.factory import load_mllm

        return self.add(slot, lambda: load_mllm(cfg), gpu=lambda: uses_gpu(cfg), key=cfg)

    def add_encoder(self, slot: str, cfg) -> Lazy:
        def load():
            from cirflow.models.encoder import OpenClipEncoder

            return OpenClipEncoder(cfg)

        return self.add(slot, load, gpu=lambda: uses_gpu(cfg), key=cfg)

    def add_diffusion(self, slot: str, cfg) -> Lazy:
        from cirflow.schemas.diffusion import load_fields

        def load():
            from cirflow.models.diffusion import load_pipeline  # torch + diffusers on first use: not at `--plan`

            return load_pipeline(cfg)

        # sampler settings are per request: only what decides the loaded weights is the slot's key
        return self.add(slot, load, gpu=lambda: uses_gpu(cfg), key=load_fields(cfg))

    def __getitem__(self, slot: str) -> Lazy:
        try:
            return self._slots[slot][0]
        except KeyError:
            raise KeyError(f"no model slot {slot!r} in this flow's pool (slots: {', '.join(self._slots)})") from None

    def get(self, slot: str, default: Lazy | None = None) -> Lazy | None:
        return self._slots[slot][0] if slot in self._slots else default

    def __contains__(self, slot: str) -> bool:
        return slot in self._slots

    def loaded(self) -> list[str]:
        return [s for s, (h, _, _) in self._slots.items() if h.loaded]

    # ------------------------------------------------------------------------------------------ lifetime
    def release(self, *slots: str) -> None:
        """Close these slots' models (they reload if asked again); the GPU slot goes back once no loaded GPU
        model is left."""
        with self._lock:
            for s in slots:
                entry = self._slots.pop(s, None)
                if entry is not None:
                    entry[0].close()
            if not any(h.loaded and gpu for h, _, gpu in self._slots.values()):
                self.gate.release()

    def close(self) -> None:
        self.release(*list(self._slots))
        self.gate.release()

    def __enter__(self) -> "ModelPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["ModelPool"]
