"""Pipeline overhead per stage: stage wall time / pure model time, on tiny random-weight models (issue 14 goal 5).

One process, CPU, the generated mini benchmark (cirflow demo's, CIRR format). Models are loaded *before* the
stage runs (load time is not overhead of the pipeline, and is reported apart). Each backend is handed to the
stage behind a thin timing proxy that forwards every attribute to the real backend and adds up the wall time
of its model calls alone: `generate` (MLLM), `encode_texts` / `encode_images` / `encode_images_safe`
(encoder), `edit` (diffusion). Stage wall = the stage function call (key, store checks, shard planning, item
preparation, model calls, Parquet/blob commits, manifest), computed into a fresh store.
  ratio = stage wall / model seconds; goal (issue 14): <= 1.10. PEFUSE Table 5 reports about 1.5 for its own.
JSON to bench/results/stage_overhead-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

TIMED = ("generate", "encode_texts", "encode_images", "encode_images_safe", "edit")


class Timed:
    """The real backend, with the wall time of its model calls added up (everything else forwarded)."""

    def __init__(self, backend):
        self._backend, self.seconds, self.calls = backend, 0.0, 0

    def __getattr__(self, name):
        attr = getattr(self._backend, name)
        if name not in TIMED:
            return attr

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1
        return timed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=0, help="use only the first N queries (0 = all of mini CIRR)")
    ap.add_argument("--no-diffusion", action="store_true")
    ap.add_argument("--samples", type=int, default=34,
                    help="texts per query for the second embed_texts row (34 x 30 queries = 1,020 texts)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    from cirflow.demo.mini_benchmark import build_mini_benchmark
    from cirflow.models.diffusion import load_pipeline
    from cirflow.models.encoder import OpenClipEncoder
    from cirflow.models.mllm.factory import load_mllm
    from cirflow.models.tiny import build_tiny_open_clip, build_tiny_qwen25vl
    from cirflow.models.tiny_diffusion import build_tiny_instruct_pix2pix
    from cirflow.schemas.config import parse_config
    from cirflow.schemas.diffusion import DiffusionConfig
    from cirflow.storage import ArtifactStore
    from cirflow.tasks.runs import compose_target_text, embed_images, embed_texts, ingest, synthesize_images
    from cirflow.tasks.lazy import Lazy

    load_before = os.popen("uptime").read().strip()  # the box is shared: the load goes into the report
    work = Path(tempfile.mkdtemp(prefix="stage-overhead-"))
    data = build_mini_benchmark(work / "data")["cirr"]
    cfg = parse_config({
        "name": "overhead", "store": str(work / "store"), "output_dir": str(work / "runs"),
        "benchmark": {"name": "cirr", "data_root": str(data), "split": "val"},
        "mllm": {"backend": "transformers", "model": str(build_tiny_qwen25vl(work / "qwen")), "device": "cpu"},
        "encoder": {"model": f"local-dir:{build_tiny_open_clip(work / 'clip')}", "device": "cpu", "num_workers": 0},
        "compose": {"sampling": {"temperature": 0.0, "max_tokens": 8}},
    })
    diff_cfg = DiffusionConfig(pipeline="instruct_pix2pix", model=str(build_tiny_instruct_pix2pix(work / "ip2p")),
                               resolution=32, num_inference_steps=2, image_guidance_scale=1.5, batch_size=8,
                               device="cpu", conditioning="modification")
    loads = {}

    def loaded(name, factory):
        t = time.perf_counter()
        backend = Timed(factory())
        loads[name] = round(time.perf_counter() - t, 3)
        return backend

    mllm = loaded("mllm", lambda: load_mllm(cfg.mllm))
    encoder = loaded("encoder", lambda: OpenClipEncoder(cfg.encoder))
    pipeline = None if args.no_diffusion else loaded("diffusion", lambda: load_pipeline(diff_cfg))
    rows = []

    def stage(name, backend, fn, prepare=None):
        store = ArtifactStore(str(work / f"store-{name}"))  # fresh: every stage computes
        bench = ingest.run(store, "cirr", str(data), split="val")
        inputs = prepare(store, bench) if prepare else None  # the stage's input artifact, not timed
        backend.seconds, backend.calls = 0.0, 0
        t = time.perf_counter()
        art = fn(store, bench, Lazy(lambda: backend)) if prepare is None else fn(store, bench, Lazy(lambda: backend),
                                                                                inputs)
        wall = time.perf_counter() - t
        assert art.report.status == "computed", art.report.status
        rows.append({"stage": name, "items": sum(s.rows for s in art.manifest.shards if s.table == "data"),
                     "shards": len(art.manifest.shards), "wall_s": round(wall, 4),
                     "model_s": round(backend.seconds, 4), "model_calls": backend.calls,
                     "ratio": round(wall / backend.seconds, 3) if backend.seconds else None})

    stage("compose_target_text", mllm, lambda s, b, h: compose_target_text.run(
        s, b, cfg.mllm, cfg.compose.sampling, shard_size=cfg.compose.shard_size, mllm=h, progress=False))
    stage("embed_images", encoder, lambda s, b, h: embed_images.embed_images(
        s, b, cfg.encoder, shard_size=cfg.embed.shard_size, encoder=h, reuse=False, progress=False))
    stage("embed_texts", encoder, lambda s, b, h: embed_texts.embed_texts(
        s, cfg.encoder, bench=b, shard_size=cfg.embed.shard_size, encoder=h, progress=False))

    def many_texts(store, bench):
        """A TEXTS artifact with --samples texts per query (LDRE-style caption sets), so the encoder does a
        realistic amount of work next to the stage's fixed cost (key, lookups, one commit, manifest)."""
        import pyarrow as pa
        from cirflow.schemas.tables import TEXTS
        from cirflow.storage import begin

        qids = bench.read("queries", columns=["query_id"]).column("query_id").to_pylist()
        rows = [{"id": q, "sample": n, "text": f"a photo of item {i} shown from angle {n} on a plain background",
                 "raw": "", "status": "ok", "error": None, "seed": n, "seconds": 0.0}
                for i, q in enumerate(qids) for n in range(args.samples)]
        run = begin(store, "bench_texts", "1", {"n": len(rows)}, inputs={})
        run.write_table("data", pa.Table.from_pylist(rows, schema=TEXTS))
        return run.finish()

    stage(f"embed_texts_x{args.samples}", encoder, lambda s, b, h, texts: embed_texts.embed_texts(
        s, cfg.encoder, bench=b, texts=texts, samples="each", shard_size=cfg.embed.shard_size, encoder=h,
        progress=False), prepare=many_texts)
    if pipeline is not None:
        stage("synthesize_images", pipeline, lambda s, b, h: synthesize_images.run(
            s, b, diff_cfg, shard_size=16, pipeline=h, progress=False))

    print(f"uptime before: {load_before}")
    print(f"uptime after:  {os.popen('uptime').read().strip()}")
    print("| stage | items | shards | stage wall s | model s | wall / model |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['items']} | {r['shards']} | {r['wall_s']} | {r['model_s']} | {r['ratio']} |")
    print(f"\nmodel load seconds (not in the stage walls): {loads}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path(__file__).with_name("results") / f"stage_overhead-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "load_seconds": loads, "nproc": os.cpu_count(),
                               "torch_threads": torch.get_num_threads(),
                               "uptime_before": load_before, "uptime_after": os.popen("uptime").read().strip()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
