"""A real OpenAI-compatible HTTP server on 127.0.0.1 with canned answers, for end-to-end runs through the CLI:
GET /v1/models lists one model (the preflight), POST /v1/chat/completions answers what `answer(body)` says.
`answer` can be switched while the server runs (the server "comes back"); every chat request is recorded."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Reply = tuple[int, dict]  # HTTP status, JSON body


def completion(text: str | None, **message) -> Reply:
    return 200, {"object": "chat.completion", "model": "m",
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": text, **message}}]}


def refusal(reason: str = "I can't help with that.") -> Reply:
    return completion(None, refusal=reason)


class CannedServer:
    def __init__(self, answer: Callable[[dict], Reply]):
        self.answer = answer
        self.chats: list[dict] = []  # every chat request body, in arrival order
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def seeds(self) -> list[int]:
        """The per-item seeds of the chat requests so far: one per item asked (compose seeds by query id)."""
        with self.lock:
            return [b.get("seed") for b in self.chats]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                ok = self.path.rstrip("/").endswith("/models")
                self._send((200, {"object": "list", "data": [{"id": "m", "object": "model"}]}) if ok
                           else (404, {"error": "not found"}))

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with outer.lock:
                    outer.chats.append(body)
                self._send(outer.answer(body))

            def _send(self, reply: Reply):
                status, doc = reply
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up

        return H
