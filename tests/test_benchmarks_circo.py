"""CIRCO loader against the real val file: mapping, gallery sources, test format, SEARLE padding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cirflow.schemas.errors import MissingImagesError
from cirflow.schemas.tables import QUERIES
from cirflow.tasks.benchmarks import load_benchmark
from cirflow.tasks.benchmarks.placeholders import make_slice

# the full upstream files (../shared/benchmarks, or $CIRFLOW_SHARED/benchmarks); these tests skip without them
SHARED = Path(os.environ.get("CIRFLOW_BENCHMARKS")
              or Path(os.environ.get("CIRFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared")
              / "benchmarks")
CIRCO = SHARED / "circo"
pytestmark = pytest.mark.skipif(not (CIRCO / "annotations" / "val.json").exists(), reason="shared CIRCO file not present")


@pytest.fixture(scope="module")
def raw():
    return json.loads((CIRCO / "annotations" / "val.json").read_text())


def test_val_counts_and_mapping(raw):
    bench = load_benchmark("circo", CIRCO, check_images=False)
    assert bench.queries.schema == QUERIES
    rows = bench.queries.to_pylist()
    assert len(rows) == 220
    assert sum(len(r["target_ids"]) for r in rows) == 916
    assert len({t for r in rows for t in r["target_ids"]}) == 909
    for rec, row in zip(raw, rows):
        assert row["query_id"] == str(rec["id"])
        assert row["reference_id"] == str(rec["reference_img_id"])
        assert row["target_ids"][0] == str(rec["target_img_id"])
        assert row["target_ids"] == [str(g) for g in rec["gt_img_ids"]]
        assert row["semantic_aspects"] == rec["semantic_aspects"]
    first = rows[0]
    assert first["modification"] == "shows two people and has a more colorful background" == first["captions"][0]
    assert first["shared_concept"] == "a girl with a traditional Chinese umbrella"
    assert first["target_ids"] == ["355099", "528417", "534704"]
    # no image folder here: the gallery can only be what the annotations mention, and info says so
    assert bench.info["gallery_source"] == "annotations"
    path = dict(zip(bench.images["image_id"].to_pylist(), bench.images["path"].to_pylist()))["271520"]
    assert path == f"{CIRCO}/COCO2017_unlabeled/unlabeled2017/000000271520.jpg"
    assert bench.info["quirks"]["references_in_ground_truth"] == 0 and bench.info["quirks"]["ids_equal_index"]


def test_gallery_from_image_info_then_listing(tmp_path):
    root = make_slice("circo", CIRCO, tmp_path, 20, extra_gallery=15)
    bench = load_benchmark("circo", root)
    assert bench.info["gallery_source"] == "image_info_unlabeled2017.json"
    mentioned = {x for r in bench.queries.to_pylist() for x in [r["reference_id"], *r["target_ids"]]}
    assert bench.images.num_rows == len(mentioned) + 15
    assert all(bench.images["in_gallery"].to_pylist())

    (root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json").unlink()
    listed = load_benchmark("circo", root)
    assert listed.info["gallery_source"].startswith("listing of ")
    assert sorted(listed.images["image_id"].to_pylist()) == sorted(bench.images["image_id"].to_pylist())


def test_image_root_may_be_the_unlabeled_folder(tmp_path):
    root = make_slice("circo", CIRCO, tmp_path / "circo", 5)
    bench = load_benchmark("circo", root, image_root=root / "COCO2017_unlabeled")
    assert bench.images["path"][0].as_py().startswith(str(root / "COCO2017_unlabeled" / "unlabeled2017") + "/")


def test_missing_ground_truth_image(tmp_path):
    root = make_slice("circo", CIRCO, tmp_path, 8)
    gt = json.loads((root / "annotations" / "val.json").read_text())[2]["gt_img_ids"][0]
    (root / "COCO2017_unlabeled" / "unlabeled2017" / f"{gt:012d}.jpg").unlink()
    with pytest.raises(MissingImagesError, match=r"^1 of \d+ images are missing") as e:
        load_benchmark("circo", root)
    assert e.value.missing[0].endswith(f"{gt:012d}.jpg")


def test_test_format(tmp_path):
    root = make_slice("circo", CIRCO, tmp_path, None, as_test=True, write_images=False)
    rec = json.loads((root / "annotations" / "test.json").read_text())[0]
    assert set(rec) == {"id", "reference_img_id", "relative_caption", "shared_concept"}
    bench = load_benchmark("circo", root, "test", check_images=False)
    rows = bench.queries.to_pylist()
    assert len(rows) == 220
    assert all(r["target_ids"] == [] and r["semantic_aspects"] == [] and r["shared_concept"] for r in rows)


def test_searle_padding_is_stripped(tmp_path, raw):
    padded = [dict(r, gt_img_ids=r["gt_img_ids"] + [""] * (23 - len(r["gt_img_ids"]))) for r in raw[:10]]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "val.json").write_text(json.dumps(padded))
    bench = load_benchmark("circo", tmp_path, check_images=False)
    assert bench.queries["target_ids"].to_pylist() == [[str(g) for g in r["gt_img_ids"]] for r in raw[:10]]
    assert bench.info["quirks"]["gt_padding_stripped"] == 230 - sum(len(r["gt_img_ids"]) for r in raw[:10])
