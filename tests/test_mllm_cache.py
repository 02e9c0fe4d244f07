"""CachedMLLM in front of a real HttpMLLM talking to a stand-in LLM server: hits never reach the server, failed
answers are not cached (neither a failed item nor a call that raised because the backend was down), the key
follows image bytes (not paths), seeds and schemas."""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirflow.models.mllm import ChatRequest, load_mllm
from cirflow.models.mllm.cache import CachedMLLM
from cirflow.schemas.errors import BackendUnavailable
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.tasks.lazy import Lazy

_spec = importlib.util.spec_from_file_location("builds_common", Path(__file__).with_name("test_builds_common.py"))
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)


def test_hits_misses_failures_and_image_bytes(tmp_path):
    srv = bc.CannedLLM()
    try:
        cfg = MLLMConfig(backend="http", model="m", base_url=srv.url, api_flavor="openai")
        img = tmp_path / "a.png"
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(img)
        loads = []
        lazy = Lazy(lambda: loads.append(1) or load_mllm(cfg))
        cache = CachedMLLM(lazy, str(tmp_path / "cache"), cfg.key_fields())
        reqs = [ChatRequest(id="cap", prompt="Describe.", images=(str(img),)),
                ChatRequest(id="txt", prompt="Caption A: x\nCaption B: y", sampling=SamplingParams(seed=3))]
        first = cache.generate(reqs, progress=False)
        assert [r.status for r in first] == ["ok", "ok"] and srv.total() == 2 and cache.stats()["misses"] == 2
        assert len(list((tmp_path / "cache").rglob("*.json"))) == 2

        # a fresh wrapper (a new process) answers from disk without loading the model
        lazy2 = Lazy(lambda: loads.append(2) or load_mllm(cfg))
        cache2 = CachedMLLM(lazy2, str(tmp_path / "cache"), cfg.key_fields())
        moved = tmp_path / "moved.png"
        shutil.copy(img, moved)  # same bytes, other path: still a hit
        again = cache2.generate([ChatRequest(id="c2", prompt="Describe.", images=(str(moved),)), reqs[1]], progress=False)
        assert [r.text for r in again] == [r.text for r in first] and [r.id for r in again] == ["c2", "txt"]
        assert srv.total() == 2 and cache2.stats() == {"hits": 2, "misses": 0, "stored": 0} and loads == [1]
        assert not lazy2.loaded

        # what changes the answer misses: image bytes, seed, model key
        Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(moved)
        cache2.generate([ChatRequest(id="c3", prompt="Describe.", images=(str(moved),)),
                         ChatRequest(id="t2", prompt=reqs[1].prompt, sampling=SamplingParams(seed=4))], progress=False)
        assert cache2.stats()["misses"] == 2 and srv.total() == 4
        other = CachedMLLM(load_mllm(cfg), str(tmp_path / "cache"), {**cfg.key_fields(), "revision": "v2"})
        other.generate([reqs[1]], progress=False)
        assert other.stats()["misses"] == 1 and srv.total() == 5

        # a failed answer (schema violation) is not stored: asked again next time
        schema = {"type": "object", "required": ["x"]}
        bad = ChatRequest(id="j", prompt="Caption A: p\nCaption B: q", json_schema=schema)
        assert cache2.generate([bad], progress=False)[0].status == "failed"
        assert cache2.generate([bad], progress=False)[0].status == "failed"
        assert srv.total() == 7 and cache2.stats()["stored"] == 2
        stored = [json.loads(p.read_text()) for p in (tmp_path / "cache").rglob("*.json")]
        assert all(d["key"] == p.stem for d, p in zip(stored, (tmp_path / "cache").rglob("*.json")))
        assert not list((tmp_path / "cache").rglob("*.tmp-*"))
        cache.close()
        cache2.close()
    finally:
        srv.close()


def test_a_transient_failure_is_never_cached(tmp_path):
    # a server that is down (500) for the first call, then healthy: the down call raises and stores nothing,
    # so the next call asks the server again instead of serving a failure from the cache
    state = {"down": True, "hits": 0}

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["content-length"]))
            state["hits"] += 1
            code, body = (500, {"error": "down"}) if state["down"] else (
                200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "an answer"}}]})
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        cfg = MLLMConfig(backend="http", model="m", base_url=f"http://127.0.0.1:{srv.server_port}/v1",
                         retries=1, backoff_s=0.01)
        cache = CachedMLLM(load_mllm(cfg), str(tmp_path / "cache"), cfg.key_fields())
        req = ChatRequest(id="a", prompt="Caption A: x\nCaption B: y")
        with pytest.raises(BackendUnavailable):
            cache.generate([req], progress=False)
        assert state["hits"] == 2 and cache.stats()["stored"] == 0 and not list((tmp_path / "cache").rglob("*.json"))
        state["down"] = False
        (r,) = cache.generate([req], progress=False)
        assert r.status == "ok" and r.text == "an answer" and state["hits"] == 3 and cache.stats()["stored"] == 1
        (again,) = cache.generate([req], progress=False)
        assert again.text == "an answer" and state["hits"] == 3  # now from the cache
        cache.close()
    finally:
        srv.shutdown()
