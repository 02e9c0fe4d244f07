"""Shared pieces of the build tests (other test_builds_* files load this file by path) and the pairing rules.

- `make_collection`: a generated image collection in nested folders: three meta-classes, one image at the top,
  one corrupt JPEG, one non-image file.
- `CannedLLM`: a stdlib HTTP server speaking the OpenAI chat completions API, standing in for an external LLM.
  Its answer is a pure function of the request (prompt, image bytes, seed), so two builds that ask the same
  get the same, and it counts what it was asked. For the MTCIR JSON requests it answers, by a hash of the
  prompt, valid JSON, malformed text or a refusal.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from cirflow.schemas.builds import PairingConfig
from cirflow.tasks.builds.pair_groups import build_groups

CLASSES = {"animals": 10, "vehicles": 9, "food": 8}


def make_collection(root: Path, extra: int = 0, seed: int = 0) -> Path:
    """27 class images (+ `extra` more in animals/new/), 1 top-level image, 1 corrupt .jpg, 1 notes.txt."""
    rng = np.random.default_rng(seed)
    base = {"animals": (200, 60, 40), "vehicles": (40, 60, 200), "food": (40, 180, 60)}
    for cls, n in CLASSES.items():
        for i in range(n):
            sub = root / cls / ("deep" if i % 3 == 0 else "")
            sub.mkdir(parents=True, exist_ok=True)
            arr = np.clip(np.array(base[cls]) + rng.integers(-40, 40, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(sub / f"{cls}_{i:02d}.{'png' if i % 2 else 'jpg'}")
    Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / "top.png")
    (root / "vehicles" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 10)
    (root / "notes.txt").write_text("not an image")
    add_images(root, extra, seed=seed + 1)
    return root


def add_images(root: Path, n: int, seed: int = 1) -> list[Path]:
    rng = np.random.default_rng(seed)
    out = []
    (root / "animals" / "new").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        p = root / "animals" / "new" / f"added_{seed}_{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _h(*parts) -> int:
    return int(hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()[:8], 16)


class CannedLLM:
    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.counts: dict[str, int] = {}
        self.answers: dict[str, str] = {}  # kind of each MTCIR/InstructCIR answer, by prompt hash
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self):
        self.server.shutdown()

    def total(self) -> int:
        return sum(self.counts.values())

    def answer(self, body: dict) -> tuple[str, str]:
        """(kind, answer text) for one chat request body."""
        content = body["messages"][-1]["content"]
        prompt = content[-1]["text"]
        images = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
        img = hashlib.sha256("".join(images).encode()).hexdigest()[:6]
        seed = body.get("seed", 0)
        h = _h(prompt, img, seed)
        if "Imagine the attached image" in prompt:
            return "target", f"a scene {img} where {prompt.split(':', 1)[1].split(chr(10))[0].strip()[:40]}"
        if "invent one plausible edit" in prompt:
            return "modification", ["make it red", "add a small boat", "show it at night", "remove the tree"][h % 4]
        if images:
            return "caption", f"a photo {img} of a {['red', 'blue', 'green'][h % 3]} object on a table"
        if "Caption A:" in prompt:
            if h % 4 == 0:
                return "reform_long", " ".join(["make"] + ["it"] * 14 + ["blue"])
            return "reform_ok", "Difference: make the object " + ["red", "blue", "green"][h % 3]
        if "Caption 1:" in prompt:
            k = h % 6
            if k == 0:
                return "json_malformed", '{"forward": [{"category": "attribute_change", "text": "make it red"}'
            if k == 1:
                return "json_refused", "I'm sorry, but I can't help with that request."
            fwd = [{"category": "attribute_change", "text": "make the object red"},
                   {"category": "added_object", "text": "add a cup next to it"}]
            bwd = [{"category": "removed_object", "text": "take the cup away"}]
            if k == 2:
                bwd.append({"category": "attribute_change", "text": "the person has long hair"})  # biometric
            if k == 3:
                fwd.append({"category": "viewpoint_change", "text": " ".join(["seen"] + ["from"] * 25 + ["above"])})
            if k == 4:
                return "json_fenced", "```json\n" + json.dumps({"forward": fwd, "backward": bwd}) + "\n```"
            return "json_ok", json.dumps({"forward": fwd, "backward": bwd})
        return "other", "ok"

    def _handler(self):
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                kind, text = outer.answer(body)
                with outer.lock:
                    outer.counts[kind] = outer.counts.get(kind, 0) + 1
                if outer.delay:
                    time.sleep(outer.delay)
                data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return H


def image_data_url(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


# ------------------------------------------------------------------------------------------ pairing rules


def test_groups_follow_band_and_spacing():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 16)).astype(np.float32)
    emb[100:] = emb[:100] + 0.3 * rng.normal(size=(100, 16))  # near pairs, so some similarities are high
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"im{i:03d}" for i in range(200)]
    cfg = PairingConfig(min_similarity=0.1, max_similarity=0.95, spacing=0.03, neighbours=64, exclusive=True)
    groups = build_groups(ids, emb, cfg)
    assert groups, "no group formed"
    row = {i: n for n, i in enumerate(ids)}
    used = []
    for members, sims in groups:
        assert len(members) == 6
        anchor = emb[row[members[0]]]
        real = [float(anchor @ emb[row[m]]) for m in members[1:]]
        assert np.allclose(real, sims[1:], atol=1e-5)
        assert all(0.1 <= s <= 0.95 for s in real)
        assert all(a - b >= 0.03 - 1e-6 for a, b in zip(real, real[1:]))  # spaced, descending
        used += members
    assert len(used) == len(set(used))  # exclusive
    # a tighter band forms fewer groups; an impossible one none
    assert len(build_groups(ids, emb, cfg.model_copy(update={"min_similarity": 0.6}))) < len(groups)
    assert build_groups(ids, emb, cfg.model_copy(update={"min_similarity": 0.99})) == []
