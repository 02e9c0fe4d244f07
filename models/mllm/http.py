"""MLLM backend over an OpenAI-compatible chat completions API (production: `vllm serve`).

One asyncio event loop per generate() call, one httpx client, a semaphore bounding requests in flight.
Retries (exponential backoff with jitter) only for what can succeed on a second try: transport errors
(connection refused or reset, timeouts), 5xx and 429. Other 4xx mean the request itself is wrong; retrying
would fail the same way, so the item fails at once with the server's message.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx
from tqdm import tqdm

from cirflow.models.mllm.protocol import ChatRequest, ChatResult, check_json_answer, downscale
from cirflow.models.mllm.server import ServerProcess
from cirflow.schemas.mllm import MLLMConfig

BACKOFF_BASE_S = 0.5  # first retry after ~0.5 s, then 1, 2, 4 ... (times a jitter factor in [0.5, 1])
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 60.0


def encode_image(path: str, max_pixels: int | None = None) -> str:
    """A data URL for `path`. An RGB JPEG that needs no downscaling is sent as its own bytes (exact pixels,
    smallest payload); anything else is converted to RGB, downscaled if needed, and sent as lossless PNG."""
    import fsspec
    from PIL import Image

    with fsspec.open(path, "rb") as f:
        raw = f.read()
    img = Image.open(io.BytesIO(raw))
    img.load()
    fits = max_pixels is None or img.size[0] * img.size[1] <= max_pixels
    if img.format == "JPEG" and img.mode == "RGB" and fits:
        return "data:image/jpeg;base64," + base64.b64encode(raw).decode()
    buf = io.BytesIO()
    downscale(img.convert("RGB"), max_pixels).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def build_body(cfg: MLLMConfig, req: ChatRequest, image_urls: list[str]) -> dict:
    """The chat completions request body for one ChatRequest (images first, then the prompt text)."""
    s = req.sampling
    content: list[dict] = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    content.append({"type": "text", "text": req.prompt})
    messages: list[dict] = [{"role": "system", "content": req.system}] if req.system else []
    messages.append({"role": "user", "content": content})
    body: dict[str, Any] = {
        "model": cfg.model,
        "messages": messages,
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": s.seed,
    }
    if s.top_k != -1:
        if cfg.api_flavor != "vllm":
            raise ValueError(f"top_k={s.top_k} needs api_flavor='vllm'; an OpenAI-only server cannot honour it")
        body["top_k"] = s.top_k
    if req.json_schema is not None:
        # OpenAI requires a name matching ^[a-zA-Z0-9_-]{1,64}$.
        name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(req.json_schema.get("title", "answer")))[:64] or "answer"
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": name, "schema": req.json_schema}}
        if cfg.api_flavor == "vllm":
            # vLLM derives the same constraint from response_format; sending it explicitly as well keeps the
            # constraint if a server version ignores response_format. Both carry the same schema.
            body["structured_outputs"] = {"json": req.json_schema}
    return body


def _run_sync(coro):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside a running loop (notebook, async task): asyncio.run would refuse; use a private
    # loop on a helper thread instead.
    with ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


class HttpMLLM:
    def __init__(self, cfg: MLLMConfig):
        if cfg.backend != "http":
            raise ValueError(f"HttpMLLM needs backend='http', got {cfg.backend!r}")
        self.cfg = cfg
        self._server: ServerProcess | None = None
        if cfg.base_url:
            self.base_url = cfg.base_url.rstrip("/")
        elif cfg.server_command:
            self._server = ServerProcess(
                cfg.server_command, cfg.startup_timeout_s, substitutions={"model": cfg.model}
            ).start()
            self.base_url = self._server.base_url
        else:
            raise ValueError("the http backend needs base_url or server_command")
        self._server_version: str | None = None
        self._in_flight = 0
        self.peak_in_flight = 0  # most requests in flight at once during the last generate(); <= concurrency

    # ------------------------------------------------------------------------------------------ public

    def generate(self, requests: Sequence[ChatRequest], progress: bool = True) -> list[ChatResult]:
        return _run_sync(self._generate(list(requests), progress))

    def describe(self) -> dict:
        return {
            "backend": "http",
            **self.cfg.key_fields(),
            "api_flavor": self.cfg.api_flavor,
            "server_version": self.server_version(),
            "launched_server": self._server is not None,
            "server_log": str(self._server.log_path) if self._server else None,
            "server_startup_seconds": self._server.startup_seconds if self._server else None,
        }

    def server_version(self) -> str | None:
        """vLLM answers GET /version; servers without it (transformers serve) give None."""
        if self._server_version is None:
            try:
                r = httpx.get(self.base_url.removesuffix("/v1") + "/version", timeout=5, headers=self._headers())
                if r.status_code == 200:
                    self._server_version = str(r.json().get("version"))
            except (httpx.HTTPError, ValueError, KeyError):
                pass
        return self._server_version

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> "HttpMLLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"HttpMLLM(model={self.cfg.model!r}, base_url={self.base_url!r})"

    # --------------------------------------------------------------------------------------- internals

    def _headers(self) -> dict[str, str]:
        # Read at call time so a rotated key is picked up; the key is only ever placed in this header.
        if self.cfg.api_key_env is None:
            return {}
        key = os.environ.get(self.cfg.api_key_env)
        if not key:
            raise KeyError(f"environment variable {self.cfg.api_key_env} (api_key_env) is not set")
        return {"Authorization": f"Bearer {key}"}

    async def _generate(self, requests: list[ChatRequest], progress: bool) -> list[ChatResult]:
        try:
            headers = self._headers()
        except KeyError as e:
            return [ChatResult(r.id, None, "failed", str(e.args[0]), 0.0, r.sampling.seed) for r in requests]
        cfg = self.cfg
        self.peak_in_flight = 0
        sem = asyncio.Semaphore(cfg.concurrency)
        limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
        timeout = httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 10.0))
        with tqdm(total=len(requests), disable=not progress, desc=f"mllm {cfg.model}", unit="req") as bar:
            async with httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits, timeout=timeout) as c:
                return list(await asyncio.gather(*(self._one(c, sem, r, bar) for r in requests)))

    async def _one(self, client: httpx.AsyncClient, sem: asyncio.Semaphore, req: ChatRequest, bar) -> ChatResult:
        async with sem:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            t0 = time.monotonic()
            try:
                text, err = await self._request(client, req)
            except Exception as e:  # noqa: BLE001 - one item's surprise must not sink the others
                text, err = None, f"{type(e).__name__}: {e}"
            finally:
                self._in_flight -= 1
                bar.update(1)
        status = "ok" if err is None else "failed"
        return ChatResult(req.id, text, status, err, time.monotonic() - t0, req.sampling.seed)

    async def _request(self, client: httpx.AsyncClient, req: ChatRequest) -> tuple[str | None, str | None]:
        try:
            # In a thread: decoding and re-encoding images is CPU work that would stall the other requests.
            urls = await asyncio.to_thread(lambda: [encode_image(p, self.cfg.max_image_pixels) for p in req.images])
        except Exception as e:  # noqa: BLE001
            return None, f"cannot read image: {type(e).__name__}: {e}"
        try:
            body = build_body(self.cfg, req, urls)
        except ValueError as e:
            return None, str(e)
        attempts = self.cfg.retries + 1
        last = ""
        for attempt in range(attempts):
            wait = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * random.uniform(0.5, 1.0)
            try:
                r = await client.post("/chat/completions", json=body)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {str(e) or 'no detail'} ({self.base_url})"
            else:
                if r.status_code == 200:
                    return self._parse(r, req)
                last = f"HTTP {r.status_code}: {r.text[:1000]}"
                if r.status_code != 429 and r.status_code < 500:
                    return None, last  # the request is wrong; it will not get better
                retry_after = r.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    wait = max(wait, min(float(retry_after), RETRY_AFTER_CAP_S))
            if attempt + 1 < attempts:
                await asyncio.sleep(wait)
        return None, f"gave up after {attempts} attempts: {last}"

    @staticmethod
    def _parse(r: httpx.Response, req: ChatRequest) -> tuple[str | None, str | None]:
        try:
            text = r.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None, f"malformed chat completion response: {r.text[:1000]}"
        if text is None:
            return None, f"response has no message content: {r.text[:1000]}"
        return check_json_answer(text, req.json_schema)
