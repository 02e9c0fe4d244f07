"""One entry point from a config to a backend. Imports are lazy: the http backend must not pull in torch."""

from __future__ import annotations

from cirflow.models.mllm.protocol import MLLM
from cirflow.schemas.mllm import MLLMConfig


def load_mllm(cfg: MLLMConfig) -> MLLM:
    """The backend `cfg.backend` names, ready to generate. Use as `with load_mllm(cfg) as m: ...` so that a
    launched server or a loaded model is released."""
    if cfg.backend == "http":
        from cirflow.models.mllm.http import HttpMLLM

        return HttpMLLM(cfg)
    if cfg.backend == "transformers":
        from cirflow.models.mllm.transformers_backend import TransformersMLLM

        return TransformersMLLM(cfg)
    if cfg.backend == "blip2":
        from cirflow.models.mllm.blip2_backend import Blip2MLLM

        return Blip2MLLM(cfg)
    raise ValueError(f"unknown MLLM backend {cfg.backend!r}")
