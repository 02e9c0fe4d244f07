"""MLLM backend over an OpenAI-compatible chat completions API (production: `vllm serve`).

One asyncio event loop per generate() call, `concurrency` slots bounding requests in flight, spread over small
httpx clients (POOL connections each, kept alive for the call); each distinct image is encoded once per call.

Failures are of two kinds (issue 9: a result must never claim more than it is):
* transient, the backend's fault: transport errors (refused, reset, timeouts), HTTP 429 and 5xx, 401/403/404
  and other statuses that say the server or its configuration is wrong, a 200 that is not a chat completion
  (a broken proxy), an unset api_key_env. Retried with exponential backoff and jitter; if they persist,
  generate() raises BackendUnavailable (one line: the server and the cause) and returns nothing, so the
  calling stage commits nothing that a healthy server would have answered differently.
* permanent, the item's fault: the model answered but the answer is unusable (invalid JSON against the
  requested schema, a refusal, no content), the image cannot be read, or the server rejects this request as
  bad (400/413/422, e.g. context too long). The item comes back as status "failed" with the reason.

Every error text that comes from the server or an exception is redacted (cirflow.models.mllm.redact) before
it is kept: a server may echo the request's headers, API key included.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import contextlib
import contextvars
import random
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx

from cirflow.models.mllm.protocol import ChatRequest, ChatResult, check_json_answer, downscale
from cirflow.models.mllm.redact import env_secrets, redact
from cirflow.models.mllm.server import ServerProcess
from cirflow.schemas.errors import BackendUnavailable
from cirflow.schemas.mllm import MLLMConfig
from cirflow.schemas.progress import step_progress

BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 60.0
# The server rejects this request as malformed (400: e.g. context too long; 413: too large; 422: a field it
# does not take): it would fail the same way on every attempt, so the item fails alone, at once. Every other
# non-200 status is the server's or the configuration's problem (auth, wrong URL or model, overload).
PERMANENT_STATUSES = frozenset({400, 413, 422})
# Connections per httpx client. httpcore's pool, at every request start and end, walks all its connections and,
# for each idle one, counts the idle ones again: CPU per request grows with the square of the pool size, and
# at 64 connections it was most of the client's time against a fast server (issue 14). Requests in flight are
# spread over ceil(concurrency / POOL) clients of POOL connections each, so that walk stays short.
POOL = 8


class _Malformed(Exception):
    """A 200 whose body is not a chat completion: a proxy or gateway answered, not the model."""


def api_headers(cfg: MLLMConfig) -> dict[str, str]:
    """The Authorization header for `cfg`; raises BackendUnavailable when api_key_env names an unset variable.
    Read at call time so a rotated key is picked up; the key is only ever placed in this header."""
    if cfg.api_key_env is None:
        return {}
    key = os.environ.get(cfg.api_key_env)
    if not key:
        where = (cfg.base_url or "(launched server)").rstrip("/")
        raise BackendUnavailable(where, f"environment variable {cfg.api_key_env} (mllm.api_key_env) is not set")
    return {"Authorization": f"Bearer {key}"}


def check_reachable(cfg: MLLMConfig, timeout: float = 5.0) -> None:
    """Preflight for a configured server: GET {base_url}/models answers, with the configured key. Raises
    BackendUnavailable (one line) otherwise. No-op for other backends and for a server cirflow launches (its
    health is checked when it starts)."""
    if cfg.backend != "http" or not cfg.base_url:
        return
    base = cfg.base_url.rstrip("/")
    secrets = env_secrets(cfg.api_key_env)
    headers = api_headers(cfg)
    try:
        r = httpx.get(f"{base}/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise BackendUnavailable(redact(base), redact(f"GET /models: {_describe_exc(e, timeout)}", secrets)) from None
    if r.status_code == 200:
        return
    if r.status_code not in (401, 403):
        # transformers serve answers /models with 500 when there is no HF cache directory, yet serves: its
        # /health (200 only once the model is loaded) decides
        try:
            if httpx.get(base.removesuffix("/v1") + "/health", headers=headers, timeout=timeout).status_code == 200:
                return
        except httpx.HTTPError:
            pass
    hint = " (check the key in mllm.api_key_env)" if r.status_code in (401, 403) else ""
    cause = f"GET /models answered HTTP {r.status_code}{hint}: {redact(r.text, secrets)}"
    raise BackendUnavailable(redact(base), cause)


def _describe_exc(e: BaseException, timeout_s: float | None = None) -> str:
    detail = str(e)
    if not detail and isinstance(e, httpx.TimeoutException) and timeout_s is not None:
        detail = f"no answer within {timeout_s:g} s"
    return f"{type(e).__name__}: {detail or 'no detail'}"


def encode_image(path: str, max_pixels: int | None = None) -> str:
    """A data URL for `path`. An RGB JPEG that needs no downscaling is sent as its own bytes (exact pixels,
    smallest payload); anything else is converted to RGB, downscaled if needed, and sent as lossless PNG."""
    import fsspec
    from PIL import Image

    with fsspec.open(path, "rb") as f:
        raw = f.read()
    img = Image.open(io.BytesIO(raw))  # parses the header only: format, mode and size are known without decoding
    fits = max_pixels is None or img.size[0] * img.size[1] <= max_pixels
    if img.format == "JPEG" and img.mode == "RGB" and fits:
        # sent as-is, so decoding it here would only cost time (issue 14); a corrupt body fails its item at the
        # server (HTTP 400, permanent) instead of here
        return "data:image/jpeg;base64," + base64.b64encode(raw).decode()
    img.load()
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
    if req.json_schema is not None and cfg.constrains_json():
        # OpenAI requires a name matching ^[a-zA-Z0-9_-]{1,64}$. strict: the server must follow the schema, not
        # merely be told of it (vLLM constrains decoding either way). mllm.structured_outputs: false sends no
        # schema, for servers that reject response_format; the answer is validated after generation regardless.
        name = re.sub(r"[^a-zA-Z0-9_-]", "_", str(req.json_schema.get("title", "answer")))[:64] or "answer"
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": name, "schema": req.json_schema, "strict": True}}
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
        # the copied context carries the running stage's progress line onto the helper thread
        return ex.submit(contextvars.copy_context().run, asyncio.run, coro).result()


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
                cfg.server_command, cfg.startup_timeout_s, substitutions={"model": cfg.model},
                secrets=env_secrets(cfg.api_key_env),
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
                r = httpx.get(self.base_url.removesuffix("/v1") + "/version", timeout=5, headers=api_headers(self.cfg))
                if r.status_code == 200:
                    self._server_version = str(r.json().get("version"))
            except (httpx.HTTPError, ValueError, KeyError, AttributeError, BackendUnavailable):
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

    def _secrets(self) -> list[str]:
        return env_secrets(self.cfg.api_key_env)

    def _fail(self, cause: str, attempts: int) -> BackendUnavailable:
        return BackendUnavailable(redact(self.base_url), f"{cause} (after {attempts} attempt{'s' * (attempts > 1)})")

    async def _generate(self, requests: list[ChatRequest], progress: bool) -> list[ChatResult]:
        cfg = self.cfg
        headers = api_headers(cfg)  # an unset key is a configuration error: raised before any request
        self.peak_in_flight = 0
        # slot t may send on clients[t // POOL] only: at most `concurrency` requests in flight, never more than
        # POOL on one client, so no request waits inside a pool while a connection elsewhere is free
        slots: asyncio.Queue[int] = asyncio.Queue()
        for t in range(cfg.concurrency):
            slots.put_nowait(t)
        n_pool = min(POOL, cfg.concurrency)
        limits = httpx.Limits(max_connections=n_pool, max_keepalive_connections=n_pool)
        timeout = httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, 10.0))
        with step_progress(len(requests), "req", enabled=progress) as bar:  # folded into the stage's line
            async with contextlib.AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(
                        httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits, timeout=timeout)
                    )
                    for _ in range(-(-cfg.concurrency // n_pool))
                ]
                images = _ImageCache(requests, cfg.max_image_pixels)
                tasks = [asyncio.create_task(self._one(clients, slots, r, bar, images)) for r in requests]
                try:
                    return list(await asyncio.gather(*tasks))
                except BaseException:
                    # the backend is gone (or a bug): the other requests cannot make this call succeed
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise

    async def _one(
        self, clients: list[httpx.AsyncClient], slots: asyncio.Queue, req: ChatRequest, bar, images: "_ImageCache"
    ) -> ChatResult:
        slot = await slots.get()
        try:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            t0 = time.monotonic()
            try:
                text, err = await self._request(clients[slot // POOL], req, images)
            finally:
                self._in_flight -= 1
            bar.update(1)
        finally:
            slots.put_nowait(slot)
        status = "ok" if err is None else "failed"
        return ChatResult(req.id, text, status, err, time.monotonic() - t0, req.sampling.seed)

    async def _request(
        self, client: httpx.AsyncClient, req: ChatRequest, images: "_ImageCache"
    ) -> tuple[str | None, str | None]:
        """(text, None) or (None, item failure reason); raises BackendUnavailable for a transient failure that
        outlived the retries."""
        secrets = self._secrets()
        try:
            urls = [await images.url(p) for p in req.images]
        except Exception as e:  # noqa: BLE001 - an unreadable image fails its item only
            return None, redact(f"cannot read image: {type(e).__name__}: {e}", secrets)
        finally:
            images.release(req.images)
        try:
            body = build_body(self.cfg, req, urls)
        except ValueError as e:
            return None, str(e)
        attempts = self.cfg.retries + 1
        last = ""
        for attempt in range(attempts):
            wait = min(BACKOFF_CAP_S, self.cfg.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)
            try:
                r = await client.post("/chat/completions", json=body)
            except httpx.RequestError as e:  # refused, reset, timeouts, undecodable body
                last = _describe_exc(e, self.cfg.timeout_s)
            else:
                if r.status_code == 200:
                    try:
                        return self._parse(r, req)
                    except _Malformed as e:
                        last = str(e)
                elif r.status_code in PERMANENT_STATUSES:
                    return None, f"HTTP {r.status_code}: {redact(r.text, secrets)}"
                else:
                    last = f"HTTP {r.status_code}: {r.text}"
                    retry_after = r.headers.get("retry-after", "")
                    if retry_after.replace(".", "", 1).isdigit():
                        wait = max(wait, min(float(retry_after), RETRY_AFTER_CAP_S))
            if attempt + 1 < attempts:
                await asyncio.sleep(wait)
        raise self._fail(redact(last, secrets), attempts)

    @staticmethod
    def _parse(r: httpx.Response, req: ChatRequest) -> tuple[str | None, str | None]:
        try:
            message = r.json()["choices"][0]["message"]
            text = message["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            # Not what an OpenAI-compatible server sends: a proxy's page, a truncated body. Transient.
            raise _Malformed(f"HTTP 200 but not a chat completion: {r.text}") from None
        if text is None:
            refusal = message.get("refusal") if isinstance(message, dict) else None
            if refusal:
                return None, f"refused: {redact(refusal)}"
            return None, f"response has no message content: {redact(r.text)}"
        return check_json_answer(text, req.json_schema)


class _ImageCache:
    """Data URLs for one generate() call: each distinct image path is read and encoded once, however many
    requests show it (captions x prompts, a reference in several queries), in a worker thread so the event loop
    keeps sending. An entry is dropped when its last request has taken it, so memory follows what is in flight,
    not the size of the call. A read failure is cached too: every request with that image fails the same way."""

    def __init__(self, requests: Sequence[ChatRequest], max_pixels: int | None):
        self._uses = Counter(p for r in requests for p in r.images)
        self._max_pixels = max_pixels
        self._pending: dict[str, asyncio.Future] = {}

    async def url(self, path: str) -> str:
        fut = self._pending.get(path)
        if fut is None:
            fut = asyncio.ensure_future(asyncio.to_thread(encode_image, path, self._max_pixels))
            self._pending[path] = fut
        # shield: one waiter being cancelled must not cancel the encode the other waiters share
        return await asyncio.shield(fut)

    def release(self, paths: Sequence[str]) -> None:
        for p in paths:
            self._uses[p] -= 1
            if self._uses[p] <= 0:
                fut = self._pending.pop(p, None)
                if fut is not None and not fut.done():
                    fut.cancel()  # taken by nobody (its request failed earlier): nothing left to wait for it
