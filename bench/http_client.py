"""MLLM HTTP client overhead: cirflow's HttpMLLM against a raw httpx asyncio floor, same server, same load.

A local OpenAI-compatible server that answers instantly (aiohttp, in its own process on 127.0.0.1, so its CPU
is not the client's) receives --requests chat completions, each with one 640x480 JPEG, --concurrency in flight.
  floor  a plain httpx.AsyncClient loop: semaphore of --concurrency, each distinct image read and base64-encoded
         once beforehand, one json= POST per request, the answer's message content taken from r.json()
  ours   cirflow.models.mllm.http.HttpMLLM(...).generate(requests, progress=False), from file paths
Both run once on a small batch to warm up, then once each, measured (wall seconds and the client process's CPU
seconds, time.process_time). The floor's image encoding is outside its timing; ours' is inside (it reads and
encodes the files itself), which is the fair way round for the floor.

Run:  .venv/bin/python bench/http_client.py [--requests 3000] [--concurrency 64] [--distinct 300]
Prints a Markdown table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ANSWER = {"id": "bench", "object": "chat.completion", "model": "bench", "created": 0,
          "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "a photo"}}],
          "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}


def serve(port: int) -> None:
    """The instant server: reads the whole body (as a real server must), answers a fixed completion."""
    from aiohttp import web

    payload = json.dumps(ANSWER).encode()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=payload, content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "bench"}]})

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_images(folder: Path, n: int, seed: int) -> list[str]:
    """n distinct 640x480 RGB JPEGs (quality 90), smooth colour fields plus noise: photo-like sizes (~60-90 KB)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
        arr = np.asarray(small, dtype=np.int16) + rng.integers(-12, 13, (480, 640, 3))
        p = folder / f"img_{i:05d}.jpg"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(str(p))
    return paths


async def floor_run(base_url: str, urls: list[str], prompts: list[str], concurrency: int) -> int:
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(c: httpx.AsyncClient, url: str, prompt: str) -> str:
        body = {"model": "bench", "max_tokens": 64, "temperature": 0.0,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                          {"type": "text", "text": prompt}]}]}
        async with sem:
            r = await c.post("/chat/completions", json=body)
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120) as c:
        out = await asyncio.gather(*(one(c, u, p) for u, p in zip(urls, prompts)))
    return sum(o == "a photo" for o in out)


def measure(fn) -> tuple[float, float, object]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--distinct", type=int, default=300, help="distinct image files the requests cycle through")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: run the server on this port
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve)

    from cirflow.models.mllm.http import HttpMLLM
    from cirflow.models.mllm.protocol import ChatRequest
    from cirflow.schemas.mllm import MLLMConfig, SamplingParams

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base_url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        with tempfile.TemporaryDirectory() as tmp:
            paths = make_images(Path(tmp), args.distinct, args.seed)
            img_paths = [paths[i % len(paths)] for i in range(args.requests)]
            prompts = [f"Describe image {i} in one sentence." for i in range(args.requests)]
            sampling = SamplingParams(max_tokens=64, temperature=0.0)
            requests = [ChatRequest(id=str(i), prompt=p, images=(ip,), sampling=sampling)
                        for i, (p, ip) in enumerate(zip(prompts, img_paths))]
            cfg = MLLMConfig(backend="http", model="bench", base_url=base_url, concurrency=args.concurrency,
                             retries=0)
            mllm = HttpMLLM(cfg)

            def floor():
                data = {p: "data:image/jpeg;base64," + base64.b64encode(Path(p).read_bytes()).decode() for p in paths}
                urls = [data[p] for p in img_paths]  # encoded once per distinct file, outside the timing
                return measure(lambda: asyncio.run(floor_run(base_url, urls, prompts, args.concurrency)))

            def ours():
                return measure(lambda: sum(r.status == "ok" for r in mllm.generate(requests, progress=False)))

            # warm-up: connections, imports, thread pools, page cache for the images
            asyncio.run(floor_run(base_url, [f"data:,{i}" for i in range(64)], prompts[:64], args.concurrency))
            mllm.generate(requests[: min(256, len(requests))], progress=False)
            results = {}
            for name, fn in (("floor", floor), ("ours", ours)):
                wall, cpu, ok = fn()
                results[name] = {"wall_s": wall, "cpu_s": cpu, "ok": ok, "req_per_s": args.requests / wall,
                                 "cpu_s_per_1000": cpu / args.requests * 1000}
            jpeg_kb = float(np.mean([os.path.getsize(p) for p in paths]) / 1024)
    finally:
        server.terminate()
        server.wait(10)

    ratio = results["floor"]["req_per_s"] / results["ours"]["req_per_s"]
    cpu_ratio = results["ours"]["cpu_s_per_1000"] / results["floor"]["cpu_s_per_1000"]
    print(f"\n{args.requests} requests, concurrency {args.concurrency}, {args.distinct} distinct 640x480 JPEGs "
          f"(mean {jpeg_kb:.0f} KB), {os.cpu_count()} CPUs\n")
    print("| client | req/s | wall s | client CPU s / 1000 req | ok |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("floor", "raw httpx asyncio (floor)"), ("ours", "cirflow HttpMLLM")):
        r = results[name]
        print(f"| {label} | {r['req_per_s']:.0f} | {r['wall_s']:.2f} | {r['cpu_s_per_1000']:.2f} | {r['ok']} |")
    print(f"\nfloor / ours (req/s) = {ratio:.3f}; ours / floor (CPU per request) = {cpu_ratio:.3f}")
    report = {"requests": args.requests, "concurrency": args.concurrency, "distinct_images": args.distinct,
              "mean_jpeg_kb": jpeg_kb, "results": results, "floor_over_ours": ratio, "cpu_ours_over_floor": cpu_ratio,
              "env": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "httpx": httpx.__version__}}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"http_client-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    if results["ours"]["ok"] != args.requests or results["floor"]["ok"] != args.requests:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
