"""Fashion-IQ loader against the real per-category files: counts, caption joining, dirty captions, extensions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cirflow.schemas.errors import ConfigError
from cirflow.tasks.benchmarks import load_benchmark
from cirflow.tasks.benchmarks.fashioniq import join_captions
from cirflow.tasks.benchmarks.placeholders import make_slice

# the full upstream files (../shared/benchmarks, or $CIRFLOW_SHARED/benchmarks); these tests skip without them
SHARED = Path(os.environ.get("CIRFLOW_BENCHMARKS")
              or Path(os.environ.get("CIRFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared")
              / "benchmarks")
FIQ = SHARED / "fashioniq"
pytestmark = pytest.mark.skipif(not (FIQ / "captions" / "cap.dress.val.json").exists(), reason="shared Fashion-IQ files not present")


@pytest.mark.parametrize(
    "category,queries,gallery,empty,padded",
    [("dress", 2017, 3817, 0, 191), ("shirt", 2038, 6346, 1, 73), ("toptee", 1961, 5373, 2, 95)],
)
def test_val_counts(category, queries, gallery, empty, padded):
    bench = load_benchmark("fashioniq", FIQ, "val", category, check_images=False)
    assert bench.queries.num_rows == queries and bench.images.num_rows == gallery
    assert all(bench.images["in_gallery"].to_pylist())
    assert bench.info["quirks"]["empty_captions"] == empty and bench.info["quirks"]["padded_captions"] == padded
    assert bench.info["quirks"]["empty_modifications"] == 0
    assert bench.info["category"] == category and bench.info["fiq_join"] == "and"


def test_train_counts():
    bench = load_benchmark("fashioniq", FIQ, "train", "toptee", check_images=False)
    assert (bench.queries.num_rows, bench.images.num_rows) == (6027, 16121)
    assert bench.info["quirks"]["empty_captions"] == 12


def test_record_mapping_and_join():
    first = load_benchmark("fashioniq", FIQ, "val", "dress", check_images=False).queries.slice(0, 1).to_pylist()[0]
    assert first["query_id"] == "0"
    assert first["reference_id"] == "B005X4PL1G" and first["target_ids"] == ["B0084Y8XIU"]
    assert first["captions"] == ["is shiny and silver with shorter sleeves", "fit and flare"]
    assert first["modification"] == "is shiny and silver with shorter sleeves and fit and flare"
    rev = load_benchmark("fashioniq", FIQ, "val", "dress", fiq_join="and_reversed", check_images=False).queries.slice(0, 1).to_pylist()[0]
    assert rev["modification"] == "fit and flare and is shiny and silver with shorter sleeves"


def test_empty_caption_is_not_joined():
    for category, n in (("shirt", 1), ("toptee", 2)):
        rows = load_benchmark("fashioniq", FIQ, "val", category, check_images=False).queries.to_pylist()
        dirty = [r for r in rows if any(not c.strip() for c in r["captions"])]
        assert len(dirty) == n
        for row in dirty:
            other = next(c for c in row["captions"] if c.strip())
            assert row["modification"] == other.strip(".?, ")


def test_join_captions_rules():
    assert join_captions([" is long. ", "has dots?"]) == "is long and has dots"
    assert join_captions(["", "is red."]) == "is red"
    assert join_captions(["is red", ""], "and_reversed") == "is red"
    assert join_captions(["", " "]) == ""
    with pytest.raises(ConfigError):
        join_captions(["a", "b"], "concat")


def test_category_is_required():
    with pytest.raises(ConfigError, match="category is required"):
        load_benchmark("fashioniq", FIQ, "val", check_images=False)
    with pytest.raises(ConfigError, match="unknown category 'all'"):
        load_benchmark("fashioniq", FIQ, "val", "all", check_images=False)


def test_extension_decided_per_file(tmp_path):
    root = make_slice("fashioniq", FIQ, tmp_path, 10, category="dress")
    images = sorted((root / "images").iterdir())
    images[0].rename(images[0].with_suffix(".jpg"))
    images[1].rename(images[1].with_suffix(".jpeg"))
    bench = load_benchmark("fashioniq", root, "val", "dress")
    paths = set(bench.images["path"].to_pylist())
    assert str(images[0].with_suffix(".jpg")) in paths and str(images[1].with_suffix(".jpeg")) in paths
    assert bench.info["image_extensions"] == {"png": len(paths) - 2, "jpg": 1, "jpeg": 1}


def test_test_format(tmp_path):
    root = make_slice("fashioniq", FIQ, tmp_path, None, category="toptee", as_test=True, write_images=False)
    assert "target" not in json.loads((root / "captions" / "cap.toptee.test.json").read_text())[0]
    bench = load_benchmark("fashioniq", root, "test", "toptee", check_images=False)
    assert bench.queries.num_rows == 1961
    assert all(t == [] for t in bench.queries["target_ids"].to_pylist())
