"""Configuration of MLLM backends (cirflow.models.mllm) and of one request's sampling.

Every model forbids unknown keys, so a typo in a YAML config is an error instead of a silently ignored value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SamplingParams(BaseModel):
    """vLLM semantics: temperature 0 = greedy; top_k -1 = no top-k; seed makes a sampled answer reproducible."""

    # frozen: a ChatRequest (a frozen dataclass) holds one, and a shared default must not be mutated
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)
    max_tokens: int = Field(128, ge=1)
    seed: int = 0


class MLLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["http", "transformers"]
    model: str  # HF id or local dir (transformers); the served model name (http)
    revision: str | None = None  # recorded in stage keys
    # http: e.g. http://127.0.0.1:8000/v1. If None and server_command is given, the server is launched.
    base_url: str | None = None
    # e.g. ["vllm", "serve", "Qwen/Qwen2.5-VL-7B-Instruct", "--port", "{port}"]; "{port}" becomes a free port,
    # "{model}" becomes `model`.
    server_command: list[str] | None = None
    # NAME of an env var holding the key. The key itself never appears in configs, manifests or logs.
    api_key_env: str | None = None
    # Which request fields the server understands beyond the OpenAI ones.
    #   "vllm": sends `top_k` and `structured_outputs` (vLLM extensions) besides `response_format`.
    #   "openai": OpenAI fields only. Needed for `transformers serve`, which answers 422 to any unknown field
    #   (and ignores `response_format`); a request with top_k != -1 then fails instead of silently sampling
    #   differently.
    api_flavor: Literal["vllm", "openai"] = "vllm"
    concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(120, gt=0)
    retries: int = Field(4, ge=0)
    startup_timeout_s: float = Field(600, gt=0)
    # transformers backend only
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    batch_size: int = Field(8, ge=1)
    # Images larger than this many pixels are downscaled (aspect kept) before sending/processing.
    max_image_pixels: int | None = Field(None, ge=1)

    def key_fields(self) -> dict:
        """What identifies the outputs, independent of where and how fast they are computed: no url, server
        command, concurrency, timeouts or key."""
        out = {"model": self.model, "revision": self.revision, "dtype": self.dtype}
        if self.max_image_pixels is not None:
            out["max_image_pixels"] = self.max_image_pixels
        return out
