"""CIRR loader against the real rc2 files (shared folder), test1-format copies and image-root resolution."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from cirflow.schemas.tables import IMAGES, QUERIES
from cirflow.tasks.benchmarks import load_benchmark
from cirflow.tasks.benchmarks.placeholders import make_slice

# the full upstream files (../shared/benchmarks, or $CIRFLOW_SHARED/benchmarks); these tests skip without them
SHARED = Path(os.environ.get("CIRFLOW_BENCHMARKS")
              or Path(os.environ.get("CIRFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared")
              / "benchmarks")
CIRR = SHARED / "cirr"
pytestmark = pytest.mark.skipif(not (CIRR / "captions" / "cap.rc2.val.json").exists(), reason="shared CIRR files not present")


@pytest.fixture(scope="module")
def val():
    return load_benchmark("cirr", CIRR, check_images=False)


def test_val_counts_and_schemas(val):
    assert val.queries.schema == QUERIES and val.images.schema == IMAGES
    assert val.queries.num_rows == 4181
    assert val.images.num_rows == 2297
    assert all(val.images["in_gallery"].to_pylist())
    assert len(set(val.images["image_id"].to_pylist())) == 2297
    assert len(set(val.queries["query_id"].to_pylist())) == 4181
    assert len(set(val.queries["reference_id"].to_pylist())) == 2165
    assert len({t[0] for t in val.queries["target_ids"].to_pylist()}) == 2206
    assert val.info["split"] == "val" and val.info["counts"] == {"queries": 4181, "images": 2297, "gallery": 2297}
    assert val.info["quirks"] == {"blank_captions": 0, "targets_outside_members": 0}


def test_val_record_mapping(val):
    q = next(r for r in val.queries.to_pylist() if r["query_id"] == "12060")
    assert q["reference_id"] == "dev-244-0-img0"
    assert q["target_ids"] == ["dev-1028-1-img1"]
    assert q["modification"] == "show three bottles of soft drink" and q["captions"] == [q["modification"]]
    assert q["members"] == ["dev-430-3-img0", "dev-63-0-img1", "dev-1028-1-img1", "dev-1028-2-img1", "dev-244-0-img0", "dev-1028-2-img0"]
    assert q["candidate_ids"] == [] and q["shared_concept"] is None
    path = dict(zip(val.images["image_id"].to_pylist(), val.images["path"].to_pylist()))["dev-244-0-img0"]
    assert path == f"{CIRR}/dev/dev-244-0-img0.png"


def test_val_provenance(val):
    files = val.info["annotation_files"]
    cap = CIRR / "captions" / "cap.rc2.val.json"
    assert files["captions"]["path"] == str(cap)
    assert files["captions"]["sha256"] == hashlib.sha256(cap.read_bytes()).hexdigest()
    assert files["image_split"]["sha256"] == hashlib.sha256((CIRR / "image_splits" / "split.rc2.val.json").read_bytes()).hexdigest()


def test_val_loads_fast():
    load_benchmark("cirr", CIRR, "val", check_images=False)


def test_test1_format_has_no_targets(tmp_path):
    root = make_slice("cirr", CIRR, tmp_path, None, as_test=True, write_images=False)
    caps = json.loads((root / "captions" / "cap.rc2.test1.json").read_text())
    assert "target_hard" not in caps[0] and "target_rank" not in caps[0]["img_set"]
    caps[5]["caption"] = " "  # the real test1 has one single-space caption (pairid 27098)
    (root / "captions" / "cap.rc2.test1.json").write_text(json.dumps(caps))
    bench = load_benchmark("cirr", root, "test1", check_images=False)
    assert bench.queries.num_rows == 4181
    assert all(t == [] for t in bench.queries["target_ids"].to_pylist())
    assert all(len(m) == 6 for m in bench.queries["members"].to_pylist())
    assert bench.queries["modification"][5].as_py() == " "
    assert bench.info["quirks"]["blank_captions"] == 1 and bench.info["has_ground_truth"] is False


def test_val_requires_target_hard(tmp_path):
    # a test1-format file presented as val is malformed: val must have ground truth
    root = make_slice("cirr", CIRR, tmp_path, 10, as_test=True, write_images=False)
    (root / "captions" / "cap.rc2.test1.json").rename(root / "captions" / "cap.rc2.val.json")
    (root / "image_splits" / "split.rc2.test1.json").rename(root / "image_splits" / "split.rc2.val.json")
    with pytest.raises(Exception, match=r"record 0, field 'target_hard'"):
        load_benchmark("cirr", root, check_images=False)


def test_train_split_with_synthetic_captions(tmp_path):
    # the real train captions are unavailable; the real train image list plus a tiny caption file in val format
    split = json.loads((CIRR / "image_splits" / "split.rc2.train.json").read_text())
    (tmp_path / "image_splits").mkdir()
    shutil.copy(CIRR / "image_splits" / "split.rc2.train.json", tmp_path / "image_splits")
    names = list(split)[:6]
    caps = [{"pairid": 1, "reference": names[0], "target_hard": names[1], "target_soft": {names[1]: 1.0}, "caption": "add a dog",
             "img_set": {"id": 0, "members": names, "reference_rank": 0, "target_rank": 1}}]
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "cap.rc2.train.json").write_text(json.dumps(caps))
    bench = load_benchmark("cirr", tmp_path, "train", check_images=False)
    assert bench.images.num_rows == 16939
    first = bench.images.slice(0, 1).to_pylist()[0]
    assert first["path"] == str(tmp_path / split[first["image_id"]][2:])
    assert "/train/" in first["path"]


def test_image_root_falls_back_to_parent(tmp_path):
    # common download layout: CIRR/cirr/{captions,image_splits} next to CIRR/dev/
    data_root = tmp_path / "CIRR" / "cirr"
    make_slice("cirr", CIRR, data_root, 12)
    (data_root / "dev").rename(tmp_path / "CIRR" / "dev")
    bench = load_benchmark("cirr", data_root)
    assert bench.info["image_root"] == str(tmp_path / "CIRR")
    assert all(p.startswith(str(tmp_path / "CIRR" / "dev") + "/") for p in bench.images["path"].to_pylist())
    explicit = load_benchmark("cirr", data_root, image_root=tmp_path / "CIRR")
    assert explicit.images["path"].to_pylist() == bench.images["path"].to_pylist()
