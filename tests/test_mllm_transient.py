"""Transient versus permanent MLLM failures (issue 9), against real local HTTP servers.

Transient (the backend's fault: down, overloaded, misconfigured, a broken proxy) is retried and then RAISES
BackendUnavailable, so nothing is returned that a stage could commit. Permanent (the model answered, the
answer or the request is unusable) is one failed item among ok ones. The stage-level tests run the real
compose_target_text stage: a transient failure leaves no artifact behind, and the same call computes
normally once the server is back."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from cirflow.models.mllm import ChatRequest, load_mllm
from cirflow.models.mllm.http import check_reachable
from cirflow.models.mllm.redact import REDACTED, redact
from cirflow.models.mllm.server import free_port
from cirflow.schemas.errors import BackendUnavailable, CirflowError
from cirflow.schemas.mllm import MLLMConfig, SamplingParams

Reply = tuple[int, bytes, dict]  # status, body, extra headers
HANG_S = 3.0


def completion(content: str | None, **message) -> Reply:
    msg = {"role": "assistant", "content": content, **message}
    return 200, json.dumps({"choices": [{"index": 0, "message": msg}]}).encode(), {}


def as_json(status: int, obj) -> Reply:
    return status, json.dumps(obj).encode(), {}


class ScriptedServer:
    """A real HTTP server on 127.0.0.1. Each scenario is a path prefix "/<name>/v1" bound to a function
    (hit number, request body, request headers) -> Reply or "hang"; hits are counted per scenario."""

    def __init__(self, port: int = 0):
        self.scenarios: dict[str, Callable] = {}
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_port

    def url(self, script: Callable, name: str = "s") -> str:
        scenario = f"{name}-{uuid.uuid4().hex[:8]}"
        self.scenarios[scenario] = script
        self.hits[scenario] = 0
        return f"http://127.0.0.1:{self.port}/{scenario}/v1"

    def hits_of(self, url: str) -> int:
        return self.hits[url.split("/")[3]]

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _serve(self, body: dict):
                scenario = self.path.split("/")[1]
                script = outer.scenarios.get(scenario)
                if script is None:
                    return self._send((404, b'{"error": "no such scenario"}', {}))
                with outer.lock:
                    outer.hits[scenario] += 1
                    hit = outer.hits[scenario]
                reply = script(hit, {"path": self.path, **body}, dict(self.headers))
                if reply == "hang":
                    time.sleep(HANG_S)
                    return
                self._send(reply)

            def do_POST(self):
                self._serve(json.loads(self.rfile.read(int(self.headers["content-length"]))))

            def do_GET(self):
                self._serve({})

            def _send(self, reply: Reply):
                status, data, headers = reply
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a timeout test)

        return H


@pytest.fixture(scope="module")
def server():
    s = ScriptedServer()
    yield s
    s.close()


def fast(url: str, **kw) -> MLLMConfig:
    """Retries that finish in milliseconds: the policy is tested, not the waiting."""
    opts = {"retries": 2, "backoff_s": 0.01, "timeout_s": 0.5, **kw}
    return MLLMConfig(backend="http", model="m", base_url=url, **opts)


def ask(cfg: MLLMConfig, *reqs: ChatRequest):
    with load_mllm(cfg) as m:
        return m.generate(list(reqs) or [ChatRequest(id="x", prompt="hi")], progress=False)


OK = completion("a red car")
TRANSIENT = {
    "http500": lambda hit, body, headers: as_json(500, {"error": "boom"}),
    "http503": lambda hit, body, headers: as_json(503, {"error": "loading"}),
    "http429": lambda hit, body, headers: (429, b'{"error": "slow down"}', {"Retry-After": "0"}),
    "http401": lambda hit, body, headers: as_json(401, {"error": "invalid api key"}),
    "http403": lambda hit, body, headers: as_json(403, {"error": "forbidden"}),
    "http404": lambda hit, body, headers: as_json(404, {"error": "The model `m` does not exist."}),
    "not_json": lambda hit, body, headers: (200, b"<html>502 Bad Gateway</html>", {}),
    "no_choices": lambda hit, body, headers: as_json(200, {"object": "error", "message": "upstream"}),
    "hang": lambda hit, body, headers: "hang",
}
CAUSE = {"http500": "HTTP 500", "http503": "HTTP 503", "http429": "HTTP 429", "http401": "HTTP 401",
         "http403": "HTTP 403", "http404": "HTTP 404", "not_json": "HTTP 200 but not a chat completion",
         "no_choices": "HTTP 200 but not a chat completion", "hang": "ReadTimeout"}


@pytest.mark.parametrize("kind", sorted(TRANSIENT))
def test_persistent_transient_failure_raises_after_retries(server, kind):
    url = server.url(TRANSIENT[kind], kind)
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as e:
        ask(fast(url))
    msg = str(e.value)
    assert server.hits_of(url) == 3  # the first attempt and 2 retries
    assert msg.startswith(f"model backend {url} is unavailable: {CAUSE[kind]}") and msg.endswith("(after 3 attempts)")
    assert "\n" not in msg and isinstance(e.value, CirflowError) and e.value.exit_code != 0
    assert time.monotonic() - t0 < (3 * 0.5 + 1.5 if kind == "hang" else 1.5)


@pytest.mark.parametrize("kind", sorted(TRANSIENT))
def test_transient_failure_that_clears_is_retried_to_success(server, kind):
    url = server.url(lambda hit, body, headers: TRANSIENT[kind](hit, body, headers) if hit <= 2 else OK, kind)
    (r,) = ask(fast(url))
    assert r.status == "ok" and r.text == "a red car" and r.error is None
    assert server.hits_of(url) == 3


def _permanent(hit, body, headers):
    prompt = body["messages"][-1]["content"][-1]["text"]
    return {
        "context": as_json(400, {"error": "This model's maximum context length is 32768 tokens"}),
        "too_large": as_json(413, {"error": "payload too large"}),
        "unprocessable": as_json(422, {"detail": "extra field"}),
        "refusal": completion(None, refusal="I can't help with that."),
        "no_content": completion(None),
        "bad_json": completion('{"edit": 3'),
    }.get(prompt, completion('{"edit": "make it red"}'))


def test_permanent_failures_fail_their_item_only_without_retry(server, tmp_path):
    url = server.url(_permanent, "permanent")
    schema = {"type": "object", "properties": {"edit": {"type": "string"}}, "required": ["edit"]}
    kinds = ["context", "too_large", "unprocessable", "refusal", "no_content", "bad_json", "fine"]
    reqs = [ChatRequest(id=k, prompt=k, json_schema=schema) for k in kinds]
    reqs.append(ChatRequest(id="image", prompt="fine", images=(str(tmp_path / "missing.png"),)))
    res = {r.id: r for r in ask(fast(url), *reqs)}
    assert server.hits_of(url) == len(kinds)  # one request each; the unreadable image is never sent
    assert res["fine"].status == "ok" and json.loads(res["fine"].text) == {"edit": "make it red"}
    failed = {k: r.error for k, r in res.items() if k != "fine"}
    assert all(res[k].status == "failed" and res[k].text is None for k in failed)
    assert failed["context"].startswith("HTTP 400") and "maximum context length" in failed["context"]
    assert failed["too_large"].startswith("HTTP 413") and failed["unprocessable"].startswith("HTTP 422")
    assert failed["refusal"] == "refused: I can't help with that."
    assert failed["no_content"].startswith("response has no message content")
    assert failed["bad_json"].startswith("invalid JSON") and "raw text" in failed["bad_json"]
    assert failed["image"].startswith("cannot read image: FileNotFoundError") and "missing.png" in failed["image"]


def test_a_dead_backend_stops_the_whole_call_at_once(server):
    # one request hits a down server while the others would take HANG_S each: the call does not wait for them
    def script(hit, body, headers):
        return as_json(500, {"error": "down"}) if body["messages"][-1]["content"][-1]["text"] == "p0" else "hang"

    url = server.url(script, "mixed")
    t0 = time.monotonic()
    reqs = [ChatRequest(id=str(i), prompt=f"p{i}") for i in range(8)]
    with pytest.raises(BackendUnavailable, match="HTTP 500"):
        ask(fast(url, timeout_s=30, concurrency=8, retries=1), *reqs)
    assert time.monotonic() - t0 < HANG_S - 1


def test_unset_api_key_env_raises_before_any_request(server, monkeypatch):
    monkeypatch.delenv("CIRFLOW_TEST_UNSET_KEY", raising=False)
    url = server.url(lambda hit, body, headers: OK, "nokey")
    unset = r"environment variable CIRFLOW_TEST_UNSET_KEY \(mllm.api_key_env\) is not set"
    with pytest.raises(BackendUnavailable, match=unset):
        ask(fast(url, api_key_env="CIRFLOW_TEST_UNSET_KEY"))
    assert server.hits_of(url) == 0


def _echo_headers(status: int):
    # a server (or a debugging proxy) that puts the request headers into its error body
    return lambda hit, body, headers: as_json(status, {"error": "rejected", "request_headers": headers,
                                                        "raw": "\n".join(f"{k}: {v}" for k, v in headers.items())})


@pytest.mark.parametrize("status", [400, 500])
def test_echoed_api_key_never_reaches_an_error(server, monkeypatch, status):
    key = "sk-planted-" + uuid.uuid4().hex
    monkeypatch.setenv("CIRFLOW_TEST_KEY", key)
    seen = []
    echo = _echo_headers(status)
    def script(hit, body, headers):
        seen.append(headers.get("Authorization"))
        return echo(hit, body, headers)

    url = server.url(script, "echo")
    try:
        (r,) = ask(fast(url, api_key_env="CIRFLOW_TEST_KEY"))
        text = r.error
        assert status == 400 and r.status == "failed"
    except BackendUnavailable as e:
        text = str(e)
        assert status == 500
    assert seen and all(s == f"Bearer {key}" for s in seen)  # the key was sent, and echoed back
    assert key not in text and key[3:] not in text and REDACTED in text
    assert len(text) < 500  # bodies are kept short


@pytest.mark.parametrize(("text", "secret", "gone", "kept"), [
    ('{"headers": {"Authorization": "Bearer abcdef123456"}}', None, "abcdef123456", '"Authorization": "[REDACTED]"'),
    ("Authorization: Bearer abc.def-123\nHost: x", None, "abc.def-123", "Host: x"),
    ('{"api_key": "k1234567", "x-api-key": "k7654321", "model": "m"}', None, "k1234567", '"model": "m"'),
    ('{\\"access_token\\": \\"tok987654\\"}', None, "tok987654", "access_token"),
    ("https://h/v1/models?key=qwerty99&model=m", None, "qwerty99", "model=m"),
    ("password=hunter22 client_secret: s3cr3tval", None, "hunter22", "password="),
    ("{'authorization': 'Basic dXNlcjpwYXNz'}", None, "dXNlcjpwYXNz", "authorization"),
    ("the key is PLAINVALUE99 in prose", "PLAINVALUE99", "PLAINVALUE99", "in prose"),
    ("url-encoded a%2Fb%3Dc somewhere", "a/b=c", "a%2Fb%3Dc", "somewhere"),
    ("connect to http://bob:pa55word@host:1/v1 failed", None, "pa55word", "host:1/v1"),
    ("stray sk-abcdefghijklmnopqrstuvwx here", None, "sk-abcdefghijklmnopqrstuvwx", "here"),
])
def test_redact(text, secret, gone, kept):
    out = redact(text, secrets=[secret] if secret else [])
    assert gone not in out and kept in out and REDACTED in out


def test_redact_keeps_ordinary_text_and_bounds_length():
    plain = '{"error": "max_tokens must be <= 4096", "max_tokens": 8192, "keys": ["a"]}'
    assert redact(plain) == plain
    long = redact("x" * 5000 + "Bearer tail-secret-1")
    assert len(long) < 400 and "tail-secret-1" not in long


# ------------------------------------------------------------------------------------------- preflight


def test_check_reachable(server, monkeypatch):
    def models(hit, body, headers):
        return as_json(200, {"object": "list", "data": [{"id": "m"}]})

    check_reachable(fast(server.url(models, "models")))  # no exception
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendUnavailable, match=f"^model backend {closed} is unavailable: GET /models: ConnectError"):
        check_reachable(fast(closed), timeout=2)
    with pytest.raises(BackendUnavailable, match=r"HTTP 401 \(check the key in mllm.api_key_env\)"):
        check_reachable(fast(server.url(TRANSIENT["http401"], "auth")))
    monkeypatch.delenv("CIRFLOW_TEST_UNSET_KEY", raising=False)
    with pytest.raises(BackendUnavailable, match="CIRFLOW_TEST_UNSET_KEY"):
        check_reachable(fast(server.url(models, "models"), api_key_env="CIRFLOW_TEST_UNSET_KEY"))

    # transformers serve answers /models with 500 when it has no HF cache, yet serves: /health decides
    def serving(hit, body, headers):
        return as_json(200, {"ok": True}) if body["path"].endswith("/health") else as_json(500, {"error": "no cache"})

    check_reachable(fast(server.url(serving, "serving")))
    with pytest.raises(BackendUnavailable, match="GET /models answered HTTP 500"):
        check_reachable(fast(server.url(TRANSIENT["http500"], "down")))
    check_reachable(MLLMConfig(backend="transformers", model="/nowhere"))  # not a server: nothing to check


# ------------------------------------------------------------------------------- the real stage, end to end


@pytest.fixture(scope="module")
def bench(tmp_path_factory, mini_bench):
    from cirflow.storage import ArtifactStore
    from cirflow.tasks.runs import ingest

    root = tmp_path_factory.mktemp("transient-store")
    store = ArtifactStore(str(root / "store"))
    prompt = root / "prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    return store, ingest.run(store, "cirr", str(mini_bench["cirr"])), str(prompt)


def compose(store, bench, prompt, cfg: MLLMConfig):
    from cirflow.tasks.runs import compose_target_text

    return compose_target_text.run(store, bench, cfg, SamplingParams(max_tokens=8, seed=1), prompt=prompt,
                                   shard_size=8, progress=False)


def stage_files(store) -> list[Path]:
    return [p for p in Path(store.root).glob("compose_target_text/**/*") if p.is_file()]


@pytest.mark.parametrize("kind", ["unreachable", "http500", "not_json", "no_choices", "hang", "unset_key"])
def test_stage_against_a_broken_backend_commits_nothing_then_recovers(server, bench, kind, monkeypatch, tmp_path):
    from cirflow.storage import ArtifactStore

    _, ingested, prompt = bench
    store = ArtifactStore(str(tmp_path / "store"))  # a fresh store per case; the ingest artifact is an input
    port = free_port()
    if kind == "unreachable":
        url, cfg_kw = f"http://127.0.0.1:{port}/v1", {}
    elif kind == "unset_key":
        monkeypatch.delenv("CIRFLOW_TEST_KEY", raising=False)
        url, cfg_kw = server.url(lambda hit, body, headers: OK, kind), {"api_key_env": "CIRFLOW_TEST_KEY"}
    else:
        url, cfg_kw = server.url(TRANSIENT[kind], kind), {}
    cfg = fast(url, retries=1, **cfg_kw)
    with pytest.raises(BackendUnavailable):
        compose(store, ingested, prompt, cfg)
    assert not [p for p in stage_files(store) if p.name == "_manifest.json" or "_commits" in p.parts]

    # the backend is back: the same call computes (not "cached" with failures) and every item is ok
    if kind == "unreachable":
        back = ScriptedServer(port)
        back.scenarios["s"] = lambda hit, body, headers: OK
        back.hits["s"] = 0
        cfg = fast(f"http://127.0.0.1:{port}/s/v1", retries=1)
    elif kind == "unset_key":
        monkeypatch.setenv("CIRFLOW_TEST_KEY", "sk-now-set")
    else:
        cfg = fast(server.url(lambda hit, body, headers: OK, "back"), retries=1)
    try:
        art = compose(store, ingested, prompt, cfg)
    finally:
        if kind == "unreachable":
            back.close()
    assert art.report.status == "computed"
    assert art.manifest.stats["failed"] == 0 and art.manifest.stats["ok"] == ingested.read("queries").num_rows
