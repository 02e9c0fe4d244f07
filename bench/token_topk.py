"""Exact token-level top-50 (MVFT-JI eqs. 11-12): queries [Q, 32, 256] against a gallery [G, 32, 256].

CIRCO shape is 800 queries x 123,403 images; on a CPU the default is a reduced gallery (200 x 20,000), on a GPU
the full shape. Compares, on the same seeded random unit tokens:
  naive   per query: torch.einsum of all token pairs [kq, G, kg], max over gallery tokens, mean over query
          tokens; then a full torch.argsort of the [Q, G] score matrix, keep the first 50
  floor   cirflow's chunked token scores alone (TokenScorer.matrix, no selection)
  ours    cirflow.retrieval.token_topk.token_topk (chunked scores + exact top-k with the tie rule)
Each method runs --warmup times untimed, then --repeats times; the median is reported. Ours must return the
naive top-50 ids, up to the order of exactly equal float32 scores (checked as in topk_circo.py).

Run:  .venv/bin/python bench/token_topk.py [--queries 200 --gallery 20000] [--repeats 1] [--warmup 0]
Writes a Markdown table to stdout and JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from topk_circo import timed, unit_rows, verify  # noqa: E402 - the same timing and exact-tie-aware check

from cirflow.retrieval.token_topk import token_score_matrix, token_topk  # noqa: E402

K = 50


def unit_tokens(rng: np.random.Generator, n: int, k: int, d: int) -> np.ndarray:
    return unit_rows(rng, n * k, d).reshape(n, k, d)  # every token a unit vector


def main() -> None:
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=800 if gpu else 200)
    ap.add_argument("--gallery", type=int, default=123_403 if gpu else 20_000)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3 if gpu else 1)
    ap.add_argument("--warmup", type=int, default=1 if gpu else 0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    q = unit_tokens(rng, args.queries, args.tokens, args.dim)
    g = unit_tokens(rng, args.gallery, args.tokens, args.dim)
    dev = torch.device("cuda" if gpu else "cpu")
    qt, gt = torch.from_numpy(q).to(dev), torch.from_numpy(g).to(dev)

    def naive():
        S = torch.empty((len(qt), len(gt)), dtype=torch.float32, device=dev)
        for i in range(len(qt)):
            S[i] = torch.einsum("id,gjd->igj", qt[i], gt).amax(dim=2).mean(dim=0)
        return torch.argsort(S, dim=1, descending=True)[:, :K].cpu().numpy(), S

    results, outputs = {}, {}
    for name, fn in [("naive", naive), ("floor", lambda: token_score_matrix(q, g, device=dev)),
                     ("ours", lambda: token_topk(q, g, K, device=dev)[1])]:
        med, times, out = timed(fn, args.repeats, warmup=args.warmup)
        results[name] = {"median_s": med, "runs_s": times}
        if name == "naive":
            outputs["naive"], S_ref = out[0], out[1].cpu().numpy()
        elif name == "ours":
            outputs["ours"] = np.asarray(out)
        del out
    tie_rows, mismatched = verify(outputs["ours"], outputs["naive"], S_ref)
    m = {n: r["median_s"] for n, r in results.items()}
    ratios = {"naive_over_ours": m["naive"] / m["ours"], "ours_over_floor": m["ours"] / m["floor"]}
    env = {"device": "cpu" if not gpu else torch.cuda.get_device_name(0), "cpu_count": os.cpu_count(),
           "cpu_model": _cpu_model(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "python": platform.python_version(), "load_average": os.getloadavg()}
    if gpu:
        env["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    report = {"shape": {"queries": args.queries, "gallery": args.gallery, "tokens": args.tokens, "dim": args.dim,
                        "k": K}, "seed": args.seed, "repeats": args.repeats, "warmup": args.warmup,
              "results": results, "ratios": ratios, "ours_equals_naive": mismatched == 0,
              "mismatched_rows": mismatched, "tie_order_rows": tie_rows, "env": env}

    print(f"\nExact token-level top-{K}: {args.queries} queries x {args.gallery:,} images x {args.tokens} tokens x "
          f"{args.dim}-d, {env['device']}, {env['torch_threads']} torch threads, median of {args.repeats}\n")
    print("| method | median s | runs (s) |")
    print("|---|---:|---|")
    for name, label in [("naive", "per-query einsum + full torch.argsort"), ("floor", "chunked token scores only"),
                        ("ours", "cirflow retrieval.token_topk")]:
        r = results[name]
        print(f"| {label} | {r['median_s']:.3f} | {', '.join(f'{t:.3f}' for t in r['runs_s'])} |")
    print(f"\nnaive / ours = {ratios['naive_over_ours']:.2f}, ours / floor = {ratios['ours_over_floor']:.2f}; "
          f"ours == naive top-{K} ids: {mismatched == 0} ({len(tie_rows)} rows differ only by exact-tie order)")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"token_topk-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    if mismatched:
        raise SystemExit(1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
