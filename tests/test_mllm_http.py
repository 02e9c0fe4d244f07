"""The HTTP backend against a real `transformers serve` (started here, offline, on CPU) and, for failure
modes a healthy server cannot produce on demand (503, 429, slow answers), a small stdlib HTTP server that
speaks just enough of the chat completions API. Nothing of ours is replaced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cirflow.models.mllm import ChatRequest, load_mllm
from cirflow.models.mllm.server import free_port
from cirflow.models.tiny import build_tiny_qwen25vl
from cirflow.schemas.errors import BackendUnavailable
from cirflow.schemas.mllm import MLLMConfig, SamplingParams

TRANSFORMERS_CLI = str(Path(sys.executable).parent / "transformers")
GREEDY = SamplingParams(max_tokens=10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(build_tiny_qwen25vl(tmp_path_factory.getbasetemp() / "tiny-qwen25vl", seed=0))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("http-imgs")
    rng = np.random.default_rng(1)
    out = []
    for i, (h, w) in enumerate([(64, 64), (120, 90), (256, 300)]):
        p = d / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    """`transformers serve <tiny> --port P --device cpu`, started directly (not via our launcher)."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "wb")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [TRANSFORMERS_CLI, "serve", tiny, "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    t0 = time.monotonic()
    try:
        while True:
            assert proc.poll() is None, f"transformers serve exited: {Path(log.name).read_text()[-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() - t0 < 90, "transformers serve not healthy after 90 s"
            time.sleep(0.2)
        print(f"\ntransformers serve healthy after {time.monotonic() - t0:.1f} s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()


def _cfg(base_url: str, model: str, **kw) -> MLLMConfig:
    # transformers serve: the model field must be exactly the path it was started with, and it answers 422 to
    # vLLM's extra fields, hence api_flavor="openai".
    return MLLMConfig(backend="http", model=model, base_url=base_url, api_flavor="openai", **kw)


# ------------------------------------------------------------------------------- real transformers serve


@pytest.mark.slow
def test_answers_come_back_in_order(served, tiny, images):
    reqs = [ChatRequest(id=f"r{i}", prompt=f"Describe picture number {i}.", images=(images[i % 3],), sampling=GREEDY) for i in range(6)]
    reqs.append(ChatRequest(id="sys", prompt="Hello.", system="You are terse.", sampling=GREEDY))
    with load_mllm(_cfg(served, tiny, concurrency=4)) as m:
        t0 = time.monotonic()
        together = m.generate(reqs, progress=False)
        wall = time.monotonic() - t0
        alone = [m.generate([r], progress=False)[0] for r in reqs]
        assert m.describe()["server_version"] is None  # transformers serve has no /version
    print(f"\n{len(reqs)} requests at concurrency 4: {wall:.2f} s; per request " + ", ".join(f"{r.seconds:.3f}" for r in alone))
    assert [r.id for r in together] == [r.id for r in reqs]
    assert all(r.status == "ok" for r in together), together
    assert [r.text for r in together] == [r.text for r in alone]  # greedy: each answer belongs to its request
    assert len({r.text for r in together}) > 1


@pytest.mark.slow
def test_per_request_seed_reaches_the_server(served, tiny, images):
    def ask(seed: int) -> str:
        s = SamplingParams(temperature=1.0, max_tokens=12, seed=seed)
        r = m.generate([ChatRequest(id="s", prompt="Caption this.", images=(images[0],), sampling=s)], progress=False)[0]
        assert r.status == "ok" and r.seed == seed, r
        return r.text

    # concurrency=1: transformers serve applies `seed` as the global torch seed, so concurrent sampled
    # requests could interleave. (vLLM's seed is per request.)
    with load_mllm(_cfg(served, tiny, concurrency=1)) as m:
        assert ask(5) == ask(5)
        assert {ask(6), ask(7), ask(8)} - {ask(5)}


@pytest.mark.slow
def test_json_schema_answer_is_validated(served, tiny):
    schema = {"type": "object", "properties": {"edit": {"type": "string"}}, "required": ["edit"]}
    with load_mllm(_cfg(served, tiny)) as m:
        r = m.generate([ChatRequest(id="j", prompt="JSON please.", json_schema=schema, sampling=GREEDY)], progress=False)[0]
    # transformers serve ignores response_format and the model is random: never valid JSON.
    assert r.status == "failed" and r.text is None and "raw text: " in r.error


@pytest.mark.slow
def test_wrong_model_name_fails_without_retry(served):
    with load_mllm(MLLMConfig(backend="http", model="not-the-served-one", base_url=served, api_flavor="openai")) as m:
        t0 = time.monotonic()
        r = m.generate([ChatRequest(id="x", prompt="hi", sampling=GREEDY)], progress=False)[0]
    assert r.status == "failed" and r.error.startswith("HTTP 400") and "pinned" in r.error
    assert time.monotonic() - t0 < 2  # a 4xx is not retried


@pytest.mark.slow
def test_launcher_starts_serves_and_stops(tiny, images):
    cmd = [TRANSFORMERS_CLI, "serve", "{model}", "--port", "{port}", "--device", "cpu"]
    cfg = MLLMConfig(backend="http", model=tiny, server_command=cmd, api_flavor="openai", retries=2, startup_timeout_s=90)
    t0 = time.monotonic()
    m = load_mllm(cfg)
    print(f"\nlauncher: server healthy after {time.monotonic() - t0:.1f} s")
    server = m._server
    with m:
        d = m.describe()
        assert d["launched_server"] and Path(d["server_log"]).exists()
        r = m.generate([ChatRequest(id="a", prompt="Describe.", images=(images[1],), sampling=GREEDY)], progress=False)[0]
        assert r.status == "ok", r
    assert not server.running  # closed with the backend
    # The server is gone: generate raises after its retries, with the reason, in bounded time; no result.
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"ConnectError.*\(after 3 attempts\)"):
        m.generate([ChatRequest(id="b", prompt="Describe.", sampling=GREEDY)], progress=False)
    assert time.monotonic() - t0 < 5


def test_launcher_reports_a_server_that_dies(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('no such model {model}'); sys.exit(3)", "{port}"]
    with pytest.raises(BackendUnavailable, match="exited with code 3") as e:
        load_mllm(MLLMConfig(backend="http", model="ghost", server_command=cmd, startup_timeout_s=30))
    assert "no such model ghost" in str(e.value)  # the log tail is in the error
    assert "\n" not in str(e.value)  # one line


def test_closed_port_fails_after_retries(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with load_mllm(MLLMConfig(backend="http", model="m", base_url=url, retries=2)) as m:
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable) as e:
            m.generate([ChatRequest(id=str(i), prompt="hi") for i in range(3)], progress=False)
        elapsed = time.monotonic() - t0
    assert str(e.value).startswith(f"model backend {url} is unavailable: ConnectError")
    assert str(e.value).endswith("(after 3 attempts)")
    assert elapsed < 4  # backoff 0.5 s then 1 s, times jitter <= 1


# ------------------------------------------------------------------ scripted server for failure modes


class _Scripted(BaseHTTPRequestHandler):
    """Behaviour chosen by the first path segment, "<kind>-<unique>": counts hits per scenario and the most
    requests it served at once; `echo` answers with what it received, as JSON."""

    state: dict = {}
    lock = threading.Lock()

    def log_message(self, *a):  # keep pytest output clean
        pass

    def do_POST(self):
        scenario = self.path.split("/")[1]
        kind = scenario.split("-")[0]
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with self.lock:
            st = self.state.setdefault(scenario, {"hits": 0, "now": 0, "peak": 0})
            st["hits"] += 1
            st["now"] += 1
            st["peak"] = max(st["peak"], st["now"])
            hits = st["hits"]
        try:
            if kind == "flaky" and hits <= 2:
                return self._send(503, {"error": "warming up"})
            if kind == "busy" and hits == 1:
                return self._send(429, {"error": "slow down"}, {"Retry-After": "0"})
            if kind == "down":
                return self._send(500, {"error": "boom"})
            if kind == "bad":
                return self._send(400, {"error": "bad request"})
            time.sleep(0.15 if kind == "echo" else 0)
            content = json.dumps({
                "prompt": body["messages"][-1]["content"][-1]["text"], "seed": body["seed"], "keys": sorted(body),
                "auth": self.headers.get("authorization"),
            })  # fmt: skip
            self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
        finally:
            with self.lock:
                st["now"] -= 1

    def _send(self, code: int, obj: dict, headers: dict | None = None):
        data = json.dumps(obj).encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def scripted():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def url(kind: str) -> tuple[str, str]:
        scenario = f"{kind}-{uuid.uuid4().hex[:8]}"
        return f"http://127.0.0.1:{srv.server_port}/{scenario}/v1", scenario

    yield url
    srv.shutdown()


def _http(url: str, **kw) -> MLLMConfig:
    return MLLMConfig(backend="http", model="m", base_url=url, **kw)


def test_concurrency_bound_order_and_request_fields(scripted):
    url, sc = scripted("echo")
    reqs = [ChatRequest(id=f"q{i}", prompt=f"p{i}", sampling=SamplingParams(seed=100 + i, top_k=-1 if i % 2 else 20)) for i in range(12)]
    with load_mllm(_http(url, concurrency=3)) as m:
        res = m.generate(reqs, progress=False)
        client_peak = m.peak_in_flight
    assert _Scripted.state[sc]["peak"] <= 3 and client_peak <= 3
    assert _Scripted.state[sc]["peak"] >= 2  # and requests did run in parallel
    got = [json.loads(r.text) for r in res]
    assert [g["prompt"] for g in got] == [f"p{i}" for i in range(12)]
    assert [g["seed"] for g in got] == [100 + i for i in range(12)] == [r.seed for r in res]
    assert ["top_k" in g["keys"] for g in got] == [i % 2 == 0 for i in range(12)]  # never sent when -1


@pytest.mark.parametrize(("kind", "status", "hits"), [("flaky", "ok", 3), ("busy", "ok", 2), ("down", "raised", 3), ("bad", "failed", 1)])
def test_retry_policy(scripted, kind, status, hits):
    url, sc = scripted(kind)
    with load_mllm(_http(url, retries=2)) as m:
        try:
            r = m.generate([ChatRequest(id="x", prompt="hi")], progress=False)[0]
        except BackendUnavailable as e:  # 5xx that outlives the retries: the backend is down, no result
            r = e
    assert (r.status if not isinstance(r, BackendUnavailable) else "raised") == status, r
    assert _Scripted.state[sc]["hits"] == hits  # 5xx/429 retried, 400 not
    if kind == "down":
        assert str(r).endswith('HTTP 500: {"error": "boom"} (after 3 attempts)')
    if kind == "bad":
        assert r.error.startswith("HTTP 400")


def test_json_schema_over_http_ok_path(scripted):
    url, _ = scripted("fast")
    schema = {"type": "object", "required": ["prompt", "seed"], "properties": {"seed": {"type": "integer"}}}
    with load_mllm(_http(url)) as m:
        ok, bad = m.generate(
            [ChatRequest(id="a", prompt="p", json_schema=schema),
             ChatRequest(id="b", prompt="p", json_schema={**schema, "required": ["nope"]})], progress=False,
        )  # fmt: skip
    assert ok.status == "ok" and json.loads(ok.text)["seed"] == 0
    assert "response_format" in json.loads(ok.text)["keys"] and "structured_outputs" in json.loads(ok.text)["keys"]
    assert bad.status == "failed" and "missing required property 'nope'" in bad.error and "raw text" in bad.error


def test_api_key_is_sent_but_never_shown(scripted, monkeypatch):
    url, _ = scripted("fast")
    secret = "sk-test-" + uuid.uuid4().hex
    monkeypatch.setenv("CIRFLOW_TEST_KEY", secret)
    cfg = _http(url, api_key_env="CIRFLOW_TEST_KEY")
    with load_mllm(cfg) as m:
        r = m.generate([ChatRequest(id="a", prompt="p")], progress=False)[0]
        shown = repr(m) + json.dumps(m.describe()) + repr(cfg) + cfg.model_dump_json()
    assert json.loads(r.text)["auth"] == f"Bearer {secret}"
    assert secret not in shown and r.error is None
    monkeypatch.delenv("CIRFLOW_TEST_KEY")
    with load_mllm(cfg) as m, pytest.raises(BackendUnavailable, match="CIRFLOW_TEST_KEY .* is not set"):
        m.generate([ChatRequest(id="a", prompt="p")], progress=False)  # a configuration error, not N failed items
