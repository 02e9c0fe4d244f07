"""`cirflow ingest`: read a benchmark's official files and write queries.parquet, images.parquet and ingest.json.

Errors are raised as CirflowError subclasses; the main CLI prints them as one line and exits with their code.
"""

from __future__ import annotations

import argparse
import json
import sys

import fsspec
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cirflow.tasks.benchmarks import BENCHMARKS, Benchmark, load_benchmark, require_queries
from cirflow.tasks.benchmarks.fashioniq import JOINS


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ingest",
        help="convert a benchmark's official annotation files to queries/images Parquet tables",
        description="Read a benchmark in its official layout and write <out>/queries.parquet, <out>/images.parquet and <out>/ingest.json.",
    )
    p.add_argument("benchmark", choices=sorted(BENCHMARKS), help="benchmark name")
    p.add_argument("--data-root", required=True, help="folder (or fsspec URL) holding the official annotation files")
    p.add_argument("--image-root", default=None, help="where images are, if not under --data-root (layouts: cirflow.tasks.benchmarks docs)")
    p.add_argument("--split", default=None, help="cirr: val|test1|train; circo: val|test; fashioniq: val|train|test (default val)")
    p.add_argument("--category", default=None, help="fashioniq: dress|shirt|toptee")
    p.add_argument("--task", default=None, help="genecis: focus_attribute|change_attribute|focus_object|change_object")
    p.add_argument("--fiq-join", default="and", choices=JOINS, help="how the two Fashion-IQ captions become one text")
    p.add_argument("--out", required=True, help="output folder (or fsspec URL)")
    p.add_argument("--skip-image-check", action="store_true", help="do not check that every image file exists")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)
    return p


def summary(bench: Benchmark) -> dict:
    info = bench.info
    if info["benchmark"] == "genecis":
        gallery = info["counts"]["gallery"]  # distinct candidate items (no global gallery)
    else:
        gallery = int(pc.sum(bench.images["in_gallery"].cast("int64")).as_py() or 0)
    return {
        "benchmark": info["benchmark"],
        "split": info["split"],
        "category": info["category"],
        "task": info["task"],
        "queries": bench.queries.num_rows,
        "gallery": gallery,
        "images": bench.images.num_rows,
        "with_ground_truth": sum(1 for t in bench.queries["target_ids"].to_pylist() if t),
        "images_checked": info["images_checked"],
        "quirks": info.get("quirks", {}),
    }


def write(bench: Benchmark, out: str) -> dict[str, str]:
    fs, root = fsspec.core.url_to_fs(out)
    fs.makedirs(root, exist_ok=True)
    paths = {name: f"{root.rstrip('/')}/{name}" for name in ("queries.parquet", "images.parquet", "ingest.json")}
    with fs.open(paths["queries.parquet"], "wb") as f:
        pq.write_table(bench.queries, f, compression="zstd")
    with fs.open(paths["images.parquet"], "wb") as f:
        pq.write_table(bench.images, f, compression="zstd")
    # ingest.json last: its presence means both tables are complete
    with fs.open(paths["ingest.json"], "w") as f:
        json.dump(bench.info, f, indent=2, sort_keys=True, default=str)
    return paths


def run(args: argparse.Namespace) -> int:
    bench = require_queries(load_benchmark(
        args.benchmark,
        args.data_root,
        args.split,
        args.category,
        args.task,
        image_root=args.image_root,
        fiq_join=args.fiq_join,
        check_images=not args.skip_image_check,
    ))
    paths = write(bench, args.out)
    result = summary(bench) | {"out": args.out, "files": paths}
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        what = "/".join(str(x) for x in (result["benchmark"], result["split"], result["category"], result["task"]) if x)
        gallery = "distinct candidates" if result["benchmark"] == "genecis" else "gallery images"
        checked = "images checked" if result["images_checked"] else "image check skipped"
        print(f"{what}: {result['queries']} queries, {result['gallery']} {gallery}, {result['images']} images ({checked}) -> {args.out}")
    sys.stdout.flush()
    return 0
