"""ingest: a benchmark's official annotation files → normalised `queries` and `images` tables in the store.

The key covers the loader options and a hash of the normalised tables themselves (every query field, every
image id, path and gallery flag), so an edited annotation file, a grown CIRCO gallery folder or moved images
give a new key, and an unchanged dataset always gives the same one, wherever the annotation files were read.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from cirflow.schemas.tables import IMAGES, QUERIES
from cirflow.storage import Artifact, ArtifactStore
from cirflow.storage.keys import canonical_json
from cirflow.tasks.benchmarks import load_benchmark
from cirflow.tasks.stage import Context, Params, Runtime, Stage, execute

class IngestParams(Params):
    benchmark: str
    split: str | None
    category: str | None
    task: str | None
    fiq_join: str | None
    content: str  # sha256 of the normalised tables: an edited annotation file is a new key


class IngestRuntime(Runtime):
    data_root: str
    check_images: bool = True


class Ingest(Stage):
    name, version = "ingest", "1"
    Params, Runtime = IngestParams, IngestRuntime
    outputs = {"queries": QUERIES, "images": IMAGES}

    def __init__(self, loaded=None):
        self.loaded = loaded  # the benchmark as the loader read it (its hash is already in the key)

    def produce(self, ctx: Context) -> None:
        ctx.run.write_table("queries", self.loaded.queries)
        ctx.run.write_table("images", self.loaded.images)

    def stats(self, ctx: Context) -> dict:
        b = self.loaded
        return {**b.info, "queries": b.queries.num_rows, "images": b.images.num_rows,
                "gallery": sum(b.images.column("in_gallery").to_pylist()), "has_targets": _has_targets(b.queries)}


def run(store: ArtifactStore, benchmark: str, data_root: str, *, split: str | None = None, category: str | None = None,
        task: str | None = None, image_root: str | None = None, fiq_join: str = "and",
        check_images: bool = True) -> Artifact:
    bench = load_benchmark(benchmark, data_root, split=split, category=category, task=task, image_root=image_root,
                           fiq_join=fiq_join, check_images=check_images)
    params = IngestParams(benchmark=benchmark, split=bench.info.get("split", split), category=category, task=task,
                          fiq_join=fiq_join if benchmark == "fashioniq" else None,
                          content=_content_hash(bench.queries, bench.images))
    return execute(Ingest(bench), store, {}, params,
                   IngestRuntime(data_root=str(data_root), check_images=check_images))


def _content_hash(*tables: pa.Table) -> str:
    h = hashlib.sha256()
    for t in tables:
        h.update(canonical_json(t.to_pylist()).encode())
    return h.hexdigest()


def _has_targets(queries) -> bool:
    return any(len(t) for t in queries.column("target_ids").to_pylist())
