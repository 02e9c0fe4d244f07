"""ingest: a benchmark's official annotation files → normalised `queries` and `images` tables in the store.

The key covers the loader options and a hash of the normalised tables themselves (every query field, every
image id, path and gallery flag), so an edited annotation file, a grown CIRCO gallery folder or moved images
give a new key, and an unchanged dataset always gives the same one, wherever the annotation files were read.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from cirflow.schemas.tables import IMAGES, QUERIES
from cirflow.storage import Artifact, ArtifactStore, begin
from cirflow.storage.keys import canonical_json
from cirflow.tasks.benchmarks import load_benchmark

STAGE = "ingest"
VERSION = "1"


def run(store: ArtifactStore, benchmark: str, data_root: str, *, split: str | None = None, category: str | None = None,
        task: str | None = None, image_root: str | None = None, fiq_join: str = "and",
        check_images: bool = True) -> Artifact:
    bench = load_benchmark(benchmark, data_root, split=split, category=category, task=task, image_root=image_root,
                           fiq_join=fiq_join, check_images=check_images)
    info = bench.info
    params = {
        "benchmark": benchmark, "split": info.get("split", split), "category": category, "task": task,
        "fiq_join": fiq_join if benchmark == "fashioniq" else None,
        "content": _content_hash(bench.queries, bench.images),
    }
    run_ = begin(store, STAGE, VERSION, params, inputs={}, schemas={"queries": QUERIES, "images": IMAGES},
                 runtime={"data_root": data_root, "check_images": check_images})
    if run_.cached:
        return run_.artifact
    run_.write_table("queries", bench.queries)
    run_.write_table("images", bench.images)
    stats = dict(info)
    stats.update(queries=bench.queries.num_rows, images=bench.images.num_rows,
                 gallery=sum(bench.images.column("in_gallery").to_pylist()), has_targets=_has_targets(bench.queries))
    return run_.finish(stats=stats)


def _content_hash(*tables: pa.Table) -> str:
    h = hashlib.sha256()
    for t in tables:
        h.update(canonical_json(t.to_pylist()).encode())
    return h.hexdigest()


def _has_targets(queries) -> bool:
    return any(len(t) for t in queries.column("target_ids").to_pylist())
