"""MLLM HTTP client overhead: cirflow's HttpMLLM against a raw httpx asyncio floor, same server, same load.

A local OpenAI-compatible server that answers instantly (aiohttp, in its own process on 127.0.0.1, so its CPU
is not the client's) receives --requests chat completions, each with one 640x480 JPEG, --concurrency in flight.
  floor  a plain httpx.AsyncClient loop: semaphore of --concurrency, each distinct image read and base64-encoded
         once beforehand, one json= POST per request, the answer's message content taken from r.json()
  floor8 the same loop with the connections ours uses: ceil(concurrency / 8) httpx clients of 8 keep-alive
         connections each, a request sent on the client of the free slot it took (at most 8 in flight per client)
  ours   cirflow.models.mllm.http.HttpMLLM(...).generate(requests, progress=False), from file paths
Each runs once on a small batch to warm up, then --repeats times, interleaved (floor, floor8, ours, floor, ...),
measured (wall seconds and the client process's CPU seconds, time.process_time); the table shows medians. The floor's image encoding is outside its timing; ours' is inside (it reads and
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
import statistics
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


async def floor8_run(base_url: str, urls: list[str], prompts: list[str], concurrency: int, pool: int = 8) -> int:
    """The floor with ours' pools: slot t of `concurrency` sends on client t // pool only, so no request waits
    inside a pool while a connection elsewhere is free and httpcore's per-request pool walk stays 8 long."""
    n_pool = min(pool, concurrency)
    limits = httpx.Limits(max_connections=n_pool, max_keepalive_connections=n_pool)
    slots: asyncio.Queue = asyncio.Queue()
    for t in range(concurrency):
        slots.put_nowait(t)

    async def one(clients: list[httpx.AsyncClient], url: str, prompt: str) -> str:
        body = {"model": "bench", "max_tokens": 64, "temperature": 0.0,
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                          {"type": "text", "text": prompt}]}]}
        slot = await slots.get()
        try:
            r = await clients[slot // n_pool].post("/chat/completions", json=body)
        finally:
            slots.put_nowait(slot)
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    clients = [httpx.AsyncClient(base_url=base_url, limits=limits, timeout=120)
               for _ in range(-(-concurrency // n_pool))]
    try:
        out = await asyncio.gather(*(one(clients, u, p) for u, p in zip(urls, prompts)))
    finally:
        for c in clients:
            await c.aclose()
    return sum(o == "a photo" for o in out)


def fmt(load: tuple[float, ...]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


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
    ap.add_argument("--repeats", type=int, default=3, help="measured runs per client (interleaved); medians reported")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: run the server on this port
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve)

    from cirflow.models.mllm.http import HttpMLLM
    from cirflow.models.mllm.protocol import ChatRequest
    from cirflow.schemas.mllm import MLLMConfig, SamplingParams

    load_before = os.getloadavg()  # the box is shared: the load goes into the report
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

            def floor8():
                data = {p: "data:image/jpeg;base64," + base64.b64encode(Path(p).read_bytes()).decode() for p in paths}
                urls = [data[p] for p in img_paths]
                return measure(lambda: asyncio.run(floor8_run(base_url, urls, prompts, args.concurrency)))

            def ours():
                return measure(lambda: sum(r.status == "ok" for r in mllm.generate(requests, progress=False)))

            # warm-up: connections, imports, thread pools, page cache for the images
            asyncio.run(floor_run(base_url, [f"data:,{i}" for i in range(64)], prompts[:64], args.concurrency))
            asyncio.run(floor8_run(base_url, [f"data:,{i}" for i in range(64)], prompts[:64], args.concurrency))
            mllm.generate(requests[: min(256, len(requests))], progress=False)
            runs: dict[str, list[tuple[float, float, int]]] = {"floor": [], "floor8": [], "ours": []}
            for _ in range(args.repeats):  # interleaved, so a change in the shared box's load hits every client
                for name, fn in (("floor", floor), ("floor8", floor8), ("ours", ours)):
                    runs[name].append(fn())
            results = {}
            for name, rs in runs.items():
                wall = statistics.median(r[0] for r in rs)
                cpu = statistics.median(r[1] for r in rs)
                results[name] = {"wall_s": wall, "cpu_s": cpu, "ok": min(r[2] for r in rs),
                                 "req_per_s": args.requests / wall, "cpu_s_per_1000": cpu / args.requests * 1000,
                                 "runs_wall_s": [round(r[0], 3) for r in rs], "runs_cpu_s": [round(r[1], 3) for r in rs]}
            jpeg_kb = float(np.mean([os.path.getsize(p) for p in paths]) / 1024)
    finally:
        server.terminate()
        server.wait(10)

    ratio = results["floor"]["req_per_s"] / results["ours"]["req_per_s"]
    cpu_ratio = results["ours"]["cpu_s_per_1000"] / results["floor"]["cpu_s_per_1000"]
    ratio8 = results["floor8"]["req_per_s"] / results["ours"]["req_per_s"]
    cpu_ratio8 = results["ours"]["cpu_s_per_1000"] / results["floor8"]["cpu_s_per_1000"]
    print(f"\n{args.requests} requests, concurrency {args.concurrency}, {args.distinct} distinct 640x480 JPEGs "
          f"(mean {jpeg_kb:.0f} KB), {os.cpu_count()} CPUs\n")
    print(f"median of {args.repeats} interleaved runs; load average before/after: {fmt(load_before)} / {fmt(os.getloadavg())}")
    print("| client | req/s | wall s | client CPU s / 1000 req | ok | wall s per run |")
    print("|---|---:|---:|---:|---:|---|")
    for name, label in (("floor", "raw httpx asyncio, one pool of --concurrency (floor)"),
                        ("floor8", "raw httpx asyncio, pools of 8 (floor8)"), ("ours", "cirflow HttpMLLM")):
        r = results[name]
        print(f"| {label} | {r['req_per_s']:.0f} | {r['wall_s']:.2f} | {r['cpu_s_per_1000']:.2f} | {r['ok']} | {r['runs_wall_s']} |")
    print(f"\nfloor / ours (req/s) = {ratio:.3f}; ours / floor (CPU per request) = {cpu_ratio:.3f}")
    print(f"floor8 / ours (req/s) = {ratio8:.3f}; ours / floor8 (CPU per request) = {cpu_ratio8:.3f}")
    report = {"requests": args.requests, "concurrency": args.concurrency, "distinct_images": args.distinct,
              "mean_jpeg_kb": jpeg_kb, "results": results, "floor_over_ours": ratio, "cpu_ours_over_floor": cpu_ratio,
              "floor8_over_ours": ratio8, "cpu_ours_over_floor8": cpu_ratio8,
              "repeats": args.repeats,
              "load_before": load_before, "load_after": os.getloadavg(), "env": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "httpx": httpx.__version__}}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"http_client-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    if any(r["ok"] != args.requests for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
