"""HttpMLLM image handling (issue 14): each distinct image is read and encoded once per generate() call and
sent exactly; a changed file is re-read by the next call; an unreadable image fails only the items that show
it. Against a small stdlib server that answers with what it received."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cirflow.models.mllm.http as http_mod
from cirflow.models.mllm import ChatRequest, load_mllm
from cirflow.schemas.mllm import MLLMConfig

sys.path.insert(0, str(Path(__file__).parent))
from canned_server import CannedServer, completion  # noqa: E402


def _echo(body: dict):
    """Answers with the sha256 of every image URL it received, so a test sees exactly what was sent."""
    urls = [c["image_url"]["url"] for c in body["messages"][-1]["content"] if c["type"] == "image_url"]
    return completion(json.dumps([hashlib.sha256(u.encode()).hexdigest() for u in urls]))


@pytest.fixture(scope="module")
def url():
    srv = CannedServer(_echo)
    yield srv.url
    srv.close()


def _jpeg(path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path, quality=90)
    return str(path)


def _sent(path: str) -> str:
    """Hash of the data URL the server must receive for a JPEG that needs no change: the file's own bytes."""
    with open(path, "rb") as f:
        return hashlib.sha256(("data:image/jpeg;base64," + base64.b64encode(f.read()).decode()).encode()).hexdigest()


def test_each_distinct_image_encoded_once_and_sent_exactly(url, tmp_path, monkeypatch):
    a, b = _jpeg(tmp_path / "a.jpg", 0), _jpeg(tmp_path / "b.jpg", 1)
    calls = []
    real = http_mod.encode_image
    monkeypatch.setattr(http_mod, "encode_image", lambda p, mp=None: calls.append(p) or real(p, mp))
    reqs = [ChatRequest(id=str(i), prompt=f"p{i}", images=(a,) if i % 3 else (a, b)) for i in range(30)]
    with load_mllm(MLLMConfig(backend="http", model="m", base_url=url, concurrency=8)) as m:
        res = m.generate(reqs, progress=False)
    assert [r.status for r in res] == ["ok"] * 30
    assert sorted(calls) == [a, b]  # 30 requests, 40 image slots, 2 reads
    for i, r in enumerate(res):
        assert json.loads(r.text) == ([_sent(a)] if i % 3 else [_sent(a), _sent(b)])


def test_a_changed_file_is_read_again_by_the_next_call(url, tmp_path):
    a = _jpeg(tmp_path / "a.jpg", 0)
    with load_mllm(MLLMConfig(backend="http", model="m", base_url=url)) as m:
        first = m.generate([ChatRequest(id="0", prompt="p", images=(a,))], progress=False)[0]
        _jpeg(tmp_path / "a.jpg", 7)
        second = m.generate([ChatRequest(id="0", prompt="p", images=(a,))], progress=False)[0]
    assert json.loads(second.text) == [_sent(a)] != json.loads(first.text)


def test_unreadable_image_fails_only_its_items(url, tmp_path):
    a = _jpeg(tmp_path / "a.jpg", 0)
    gone = str(tmp_path / "missing.jpg")
    reqs = [ChatRequest(id=str(i), prompt="p", images=(gone if i % 2 else a,)) for i in range(6)]
    with load_mllm(MLLMConfig(backend="http", model="m", base_url=url, concurrency=4)) as m:
        res = m.generate(reqs, progress=False)
    assert [r.status for r in res] == ["ok", "failed"] * 3
    assert all(r.error.startswith("cannot read image: FileNotFoundError") for r in res[1::2])
