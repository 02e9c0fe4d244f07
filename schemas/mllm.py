"""Configuration of MLLM backends (cirflow.models.mllm) and of one request's sampling.

Every model forbids unknown keys, so a typo in a YAML config is an error instead of a silently ignored value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cirflow.schemas.paths import ModelPath


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

    # "blip2": the in-process BLIP-2 captioner the baselines used (models/mllm/blip2_backend.py; captions only)
    backend: Literal["http", "transformers", "blip2"]
    model: ModelPath  # HF id or local dir (transformers); the served model name (http)
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
    # Constrain the answer of a request with a JSON schema while it is generated. None (the default) means per
    # backend: on for http (the schema goes out as `response_format`, json_schema, strict; plus
    # `structured_outputs` for vLLM, which constrains decoding at server speed), off for the transformers
    # backend, whose in-process decoder (models/mllm/constrained.py) is pure Python: instant on the tiny
    # vocabularies of tests and demos, seconds per new parser state on a 150k-token one. true / false force it.
    # Unconstrained answers are only validated after generation, as always.
    structured_outputs: bool | None = None
    concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(120, gt=0)
    # http: transient failures (connection errors, timeouts, 429, 5xx, 401/403/404, a 200 that is not a chat
    # completion) are retried `retries` times, waiting backoff_s, 2*backoff_s, ... (capped at 30 s, times a
    # jitter in [0.5, 1]); if they persist, generate() raises BackendUnavailable and nothing is committed.
    retries: int = Field(4, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    startup_timeout_s: float = Field(600, gt=0)
    # transformers backend only
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    batch_size: int = Field(8, ge=1)
    # blip2 backend only: beam width of greedy (temperature 0) requests; LAVIS's BLIP-2 generate uses 5
    beams: int = Field(1, ge=1)
    # Images larger than this many pixels are downscaled (aspect kept) before sending/processing.
    max_image_pixels: int | None = Field(None, ge=1)

    def constrains_json(self) -> bool:
        """Whether answers with a JSON schema are constrained while generated (see structured_outputs)."""
        return self.structured_outputs if self.structured_outputs is not None else self.backend == "http"

    @model_validator(mode="after")
    def _http_needs_a_server(self) -> "MLLMConfig":
        # checked here, not when the backend starts: that happens inside a flow, after earlier stages ran
        if self.backend == "http" and not self.base_url and not self.server_command:
            raise ValueError("the http backend needs base_url (a running server) or server_command (one to launch)")
        return self

    def key_fields(self) -> dict:
        """What identifies the outputs, independent of where and how fast they are computed: no url, server
        command, concurrency, timeouts or key."""
        out = {"model": self.model, "revision": self.revision, "dtype": self.dtype}
        if self.max_image_pixels is not None:
            out["max_image_pixels"] = self.max_image_pixels
        # the per-backend default keeps every key as it was before the switch existed (http: on; in process: off);
        # forcing the other way changes what JSON answers are, so it is part of the key
        if self.constrains_json() != (self.backend == "http"):
            out["structured_outputs"] = self.constrains_json()
        if self.backend == "blip2":
            # the captioner family and its decoding are part of what the captions are (other backends'
            # keys stay as they were)
            out |= {"backend": "blip2", "beams": self.beams}
        return out
