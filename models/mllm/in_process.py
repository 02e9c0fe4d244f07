"""What every in-process MLLM backend shares: releasing its model (and the GPU cache) and the handle protocol."""

from __future__ import annotations

import gc


class InProcessModel:
    """Mixin for backends that hold `self.model` on `self.device` and are configured by `self.cfg`."""

    def close(self) -> None:
        if getattr(self, "model", None) is None:
            return
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.cfg.model!r}, device={str(self.device)!r})"
