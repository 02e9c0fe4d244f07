"""Benchmark loaders: official CIRR, CIRCO, Fashion-IQ and GeneCIS annotation files -> queries / images tables.

    bench = load_benchmark("cirr", "/data/CIRR/cirr")            # split "val"
    bench.queries   # schema cirflow.schemas.tables.QUERIES
    bench.images    # schema IMAGES, one row per image_id
    bench.info      # provenance (files + sha256), counts, quirk counts, resolved image root

Field mapping per benchmark (QUERIES columns):
- cirr: query_id = pairid, reference_id = reference, modification = caption (verbatim), target_ids = [target_hard]
  (empty on test1), members = img_set.members (6). Gallery = every key of split.rc2.<split>.json.
- circo: query_id = id, ids are COCO ids as strings, target_ids = gt_img_ids (first = target_img_id; empty on
  test), shared_concept, semantic_aspects. Gallery = the whole COCO 2017 unlabeled set.
- fashioniq: query_id = index in the caption file, reference_id = candidate, captions = the raw two,
  modification = the two joined by `fiq_join` ("and" | "and_reversed"), target_ids = [target] (empty on test).
  Gallery = split.<category>.<split>.json.
- genecis: query_id = sample index, modification = condition, candidate_ids = [target] + gallery (index 0 is the
  target, noise kept as-is), target_ids = [target]; in_gallery is False everywhere (per-sample galleries).
Image layouts are documented in each loader module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cirflow.schemas.errors import AnnotationError, ConfigError

from . import circo, cirr, fashioniq, genecis
from .common import Benchmark, require_choice


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    splits: tuple[str, ...]  # empty: the benchmark has no splits (GeneCIS)
    default_split: str | None
    categories: tuple[str, ...] = ()  # Fashion-IQ: one category per load
    tasks: tuple[str, ...] = ()  # GeneCIS: one task per load


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "cirr": BenchmarkSpec("cirr", cirr.SPLITS, cirr.DEFAULT_SPLIT),
    "circo": BenchmarkSpec("circo", circo.SPLITS, circo.DEFAULT_SPLIT),
    "fashioniq": BenchmarkSpec("fashioniq", fashioniq.SPLITS, fashioniq.DEFAULT_SPLIT, categories=fashioniq.CATEGORIES),
    "genecis": BenchmarkSpec("genecis", (), None, tasks=genecis.TASKS),
}


def load_benchmark(
    name: str,
    data_root: str | os.PathLike,
    split: str | None = None,
    category: str | None = None,
    task: str | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    fiq_join: str = "and",
    check_images: bool = True,
) -> Benchmark:
    """Load one split (Fashion-IQ: one category, GeneCIS: one task) of a benchmark from its official files.

    Raises ConfigError for a bad name/split/category/task, AnnotationError for a missing file, malformed record
    (message names file, record index and field) or a path that leaves its root, MissingImagesError when check_images finds absent files.
    """
    spec = BENCHMARKS.get(name)
    if spec is None:
        raise ConfigError(f"unknown benchmark {name!r} (expected one of {', '.join(BENCHMARKS)})")
    root = os.fspath(data_root)
    img_root = os.fspath(image_root) if image_root is not None else None
    if spec.splits:
        split = require_choice(split or spec.default_split, spec.splits, "split", name)
    if name == "cirr":
        bench = cirr.load_cirr(root, split, image_root=img_root, check=check_images)
    elif name == "circo":
        bench = circo.load_circo(root, split, image_root=img_root, check=check_images)
    elif name == "fashioniq":
        category = require_choice(category, spec.categories, "category", name)
        bench = fashioniq.load_fashioniq(root, split, category, image_root=img_root, fiq_join=fiq_join, check=check_images)
    else:
        task = require_choice(task, spec.tasks, "task", name)
        bench = genecis.load_genecis(root, task, image_root=img_root, check=check_images)
    # every info has the same keys, so callers and ingest.json readers need no per-benchmark cases
    for key in ("split", "category", "task", "fiq_join"):
        bench.info.setdefault(key, None)
    bench.info["images_checked"] = check_images
    return bench

def require_queries(bench: Benchmark) -> Benchmark:
    """AnnotationError for a benchmark without queries, naming its query file. Called where a benchmark becomes
    an input (ingest, run preflight): an empty split would ingest fine and then crash deep inside a run. Not in
    load_benchmark itself, since a refinement that removed every triplet legitimately writes an empty split."""
    if bench.queries.num_rows == 0:
        files = bench.info.get("annotation_files", {})
        source = next((f["path"] for role, f in files.items() if role in ("captions", "annotations", "task")),
                      bench.info.get("data_root", bench.name))
        raise AnnotationError(source, None, None, "no queries (an empty list); a benchmark needs at least one")
    return bench


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkSpec", "load_benchmark", "require_queries"]
