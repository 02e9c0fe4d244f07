"""A request-level answer cache in front of any MLLM backend.

A request's key is the sha256 of everything that decides its answer: the model key fields (model, revision,
dtype, ...), prompt, system prompt, JSON schema, sampling (seed included) and the sha256 of each image file's
*bytes* (so a moved or renamed image still hits, an edited one misses). An answer is stored as one small JSON
file `<cache_root>/<key[:2]>/<key>.json`, written atomically (temporary name, then rename), on any fsspec root.

Only successful answers are stored: a failed item (malformed JSON, a refusal) is asked again next time, and a
call the backend could not serve (server down: the backend raises BackendUnavailable) stores nothing at all.
Hits never call, nor even load, the inner model: `inner` may be a `Lazy` handle, fetched on the first miss.

This is what makes a grown collection cheap: stage keys change when the collection grows, so shards are
recomputed, but every request already answered is served from here.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import threading
import uuid
from typing import Any, Sequence

import fsspec

from cirflow.models.mllm.protocol import MLLM, ChatRequest, ChatResult
from cirflow.storage.keys import canonical_json

CACHE_FORMAT = 1


class CachedMLLM:
    def __init__(self, inner: Any, cache_root: str, model_key: dict, storage_options: dict | None = None):
        """inner: an MLLM, or a handle with .get() returning one (cirflow.tasks.lazy.Lazy)."""
        self._inner = inner
        self.model_key = dict(model_key)
        self.fs, root = fsspec.core.url_to_fs(str(cache_root), **(storage_options or {}))
        self.root = root.rstrip("/") or "/"
        self.cache_root = str(cache_root)
        self._lock = threading.Lock()
        self._image_hashes: dict[tuple, str] = {}
        self.hits = 0
        self.misses = 0
        self.stored = 0

    # ------------------------------------------------------------------------------------------ public

    def generate(self, requests: Sequence[ChatRequest], progress: bool = True) -> list[ChatResult]:
        requests = list(requests)
        results: list[ChatResult | None] = [None] * len(requests)
        keys: list[str | None] = []
        for i, req in enumerate(requests):
            try:
                key = self.request_key(req)
            except OSError:
                key = None  # an unreadable image: the backend reports it; nothing to cache
            keys.append(key)
            hit = self._load(key) if key is not None else None
            if hit is not None:
                results[i] = ChatResult(id=req.id, text=hit["text"], status="ok", error=None,
                                        seconds=float(hit.get("seconds", 0.0)), seed=req.sampling.seed)
        todo = [i for i, r in enumerate(results) if r is None]
        with self._lock:
            self.hits += len(requests) - len(todo)
            self.misses += len(todo)
        if todo:
            answers = self._model().generate([requests[i] for i in todo], progress=progress)
            for i, res in zip(todo, answers):
                results[i] = res
                if res.status == "ok" and keys[i] is not None:
                    self._store(keys[i], requests[i], res)
        return results  # type: ignore[return-value]

    def describe(self) -> dict:
        inner = self._inner_if_loaded()
        base = inner.describe() if inner is not None else {**self.model_key, "loaded": False}
        return {**base, "cache": self.cache_root, "cache_stats": self.stats()}

    def stats(self) -> dict:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "stored": self.stored}

    def close(self) -> None:
        if hasattr(self._inner, "get"):  # a Lazy handle: close only what was loaded
            if getattr(self._inner, "loaded", True):
                self._inner.close()
        elif hasattr(self._inner, "close"):
            self._inner.close()

    def __enter__(self) -> "CachedMLLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request_key(self, req: ChatRequest) -> str:
        doc = {
            "format": CACHE_FORMAT,
            "model": self.model_key,
            "prompt": req.prompt,
            "system": req.system,
            "json_schema": req.json_schema,
            "sampling": req.sampling.model_dump(mode="json"),
            "images": [self.image_sha256(p) for p in req.images],
        }
        return hashlib.sha256(canonical_json(doc).encode()).hexdigest()

    def image_sha256(self, path: str) -> str:
        """sha256 of the file's bytes, memoised per (path, size, mtime) for local files."""
        memo = None
        if "://" not in path or path.startswith("file://"):
            local = path[len("file://"):] if path.startswith("file://") else path
            st = os.stat(local)
            memo = (local, st.st_size, st.st_mtime_ns)
            if memo in self._image_hashes:
                return self._image_hashes[memo]
        h = hashlib.sha256()
        with fsspec.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        digest = h.hexdigest()
        if memo is not None:
            self._image_hashes[memo] = digest
        return digest

    # ------------------------------------------------------------------------------------------ internals

    def _model(self) -> MLLM:
        return self._inner.get() if hasattr(self._inner, "get") else self._inner

    def _inner_if_loaded(self):
        if hasattr(self._inner, "get"):
            return self._inner.get() if getattr(self._inner, "loaded", False) else None
        return self._inner

    def _path(self, key: str) -> str:
        return posixpath.join(self.root, key[:2], f"{key}.json")

    def _load(self, key: str) -> dict | None:
        try:
            with self.fs.open(self._path(key), "rb") as f:
                doc = json.loads(f.read())
        except (FileNotFoundError, OSError, ValueError):
            return None  # missing, or unreadable: asked again and rewritten
        if doc.get("key") != key or not isinstance(doc.get("text"), str):
            return None
        return doc

    def _store(self, key: str, req: ChatRequest, res: ChatResult) -> None:
        doc = {"key": key, "text": res.text, "seconds": res.seconds, "model": self.model_key,
               "request_id": req.id, "format": CACHE_FORMAT}
        path = self._path(key)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with self.fs.open(tmp, "wb") as f:
                f.write(json.dumps(doc, ensure_ascii=False).encode())
            self.fs.mv(tmp, path)
        except OSError:
            return  # a read-only cache never fails a build; the answer is just not kept
        with self._lock:
            self.stored += 1


def cached(inner: Any, cache_root: str | None, model_key: dict) -> Any:
    """`inner` wrapped in a CachedMLLM, or unchanged when no cache root is configured."""
    return inner if cache_root is None else CachedMLLM(inner, cache_root, model_key)


__all__ = ["CachedMLLM", "cached"]
