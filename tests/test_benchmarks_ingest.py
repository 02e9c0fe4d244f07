"""`cirflow ingest` end to end (parser from register(), run()), malformed annotations and missing images."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cirflow.cli import ingest
from cirflow.schemas.errors import AnnotationError, CirflowError, MissingImagesError
from cirflow.schemas.tables import IMAGES, QUERIES
from cirflow.tasks.benchmarks import load_benchmark
from cirflow.tasks.benchmarks.placeholders import make_slice

# the full upstream files (../shared/benchmarks, or $CIRFLOW_SHARED/benchmarks); these tests skip without them
SHARED = Path(os.environ.get("CIRFLOW_BENCHMARKS")
              or Path(os.environ.get("CIRFLOW_SHARED") or Path(__file__).resolve().parents[2] / "shared")
              / "benchmarks")
pytestmark = pytest.mark.skipif(not (SHARED / "cirr").exists(), reason="shared benchmark files not present")


def invoke(argv: list[str]) -> int:
    """What the main CLI does with a subcommand: parse, run, turn a CirflowError into one line and its exit code."""
    parser = argparse.ArgumentParser(prog="cirflow")
    ingest.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CirflowError as e:
        print(f"cirflow: error: {e}", file=sys.stderr)
        return e.exit_code


def test_ingest_json_on_slice(tmp_path, capsys):
    root = make_slice("cirr", SHARED / "cirr", tmp_path / "data", 30)
    out = tmp_path / "out"
    assert invoke(["ingest", "cirr", "--data-root", str(root), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    queries, images = pq.read_table(out / "queries.parquet"), pq.read_table(out / "images.parquet")
    assert summary["queries"] == 30 == queries.num_rows
    assert summary["gallery"] == summary["images"] == images.num_rows
    assert summary["images_checked"] is True
    assert queries.schema.equals(QUERIES) and images.schema.equals(IMAGES)
    assert pq.ParquetFile(out / "queries.parquet").metadata.row_group(0).column(0).compression == "ZSTD"
    info = json.loads((out / "ingest.json").read_text())
    assert info["benchmark"] == "cirr" and info["split"] == "val" and len(info["annotation_files"]["captions"]["sha256"]) == 64


def test_ingest_genecis_gallery_is_distinct_candidates(tmp_path, capsys):
    root = make_slice("genecis", SHARED / "genecis", tmp_path / "data", 20, task="focus_object")
    assert invoke(["ingest", "genecis", "--data-root", str(root), "--task", "focus_object", "--out", str(tmp_path / "out"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    queries = pq.read_table(tmp_path / "out" / "queries.parquet")
    assert summary["gallery"] == len({c for cs in queries["candidate_ids"].to_pylist() for c in cs})
    assert summary["queries"] == 20 and summary["task"] == "focus_object"


def test_ingest_fiq_join_and_human_summary(tmp_path, capsys):
    root = make_slice("fashioniq", SHARED / "fashioniq", tmp_path / "data", 5, category="dress")
    code = invoke(["ingest", "fashioniq", "--data-root", str(root), "--category", "dress", "--fiq-join", "and_reversed", "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("fashioniq/val/dress: 5 queries, 30 gallery images") and out.count("\n") == 1
    first = pq.read_table(tmp_path / "out" / "queries.parquet").slice(0, 1).to_pylist()[0]
    assert first["modification"] == "fit and flare and is shiny and silver with shorter sleeves"
    assert json.loads((tmp_path / "out" / "ingest.json").read_text())["fiq_join"] == "and_reversed"


def test_bad_category_exit_code(tmp_path, capsys):
    code = invoke(["ingest", "fashioniq", "--data-root", str(SHARED / "fashioniq"), "--category", "all", "--out", str(tmp_path)])
    assert code == 2 and "unknown category 'all'" in capsys.readouterr().err


# ---------------------------------------------------------------- malformed annotations


def _mutate(path: Path, index: int, change, pretty: bool) -> None:
    data = json.loads(path.read_text())
    change(data[index])
    path.write_text(json.dumps(data, indent=4) if pretty else json.dumps(data))


def _pop(key):
    return lambda rec: rec.pop(key)


def _set(key, value):
    return lambda rec: rec.__setitem__(key, value)


MALFORMED = [
    # benchmark, load kwargs, annotation file, change to record 3, field named in the error
    ("cirr", {}, "captions/cap.rc2.val.json", _pop("caption"), "caption"),
    ("cirr", {}, "captions/cap.rc2.val.json", _set("pairid", "12061"), "pairid"),
    ("cirr", {}, "captions/cap.rc2.val.json", lambda r: r["img_set"]["members"].pop(), "img_set.members"),
    ("circo", {}, "annotations/val.json", _set("gt_img_ids", "355099"), "gt_img_ids"),
    ("circo", {}, "annotations/val.json", _pop("relative_caption"), "relative_caption"),
    ("fashioniq", {"category": "dress"}, "captions/cap.dress.val.json", _set("captions", ["is red"]), "captions"),
    ("fashioniq", {"category": "dress"}, "captions/cap.dress.val.json", _set("candidate", 17), "candidate"),
    ("genecis", {"task": "focus_attribute"}, "genecis/focus_attribute.json", lambda r: r["target"]["instance_bbox"].pop(), "target.instance_bbox"),
    ("genecis", {"task": "focus_object"}, "genecis/focus_object.json", lambda r: r["gallery"][2].__setitem__("val_image_id", "12"), "gallery[2].val_image_id"),
    ("genecis", {"task": "focus_object"}, "genecis/focus_object.json", _pop("condition"), "condition"),
]


@pytest.mark.parametrize("bench,kwargs,rel,change,field", MALFORMED, ids=[f"{m[0]}-{m[4]}" for m in MALFORMED])
def test_malformed_record_names_file_record_field(tmp_path, bench, kwargs, rel, change, field):
    root = make_slice(bench, SHARED / bench, tmp_path, 8, write_images=False, **kwargs)
    _mutate(root / rel, 3, change, pretty=bench != "cirr")
    with pytest.raises(AnnotationError) as e:
        load_benchmark(bench, root, check_images=False, **kwargs)
    message = str(e.value)
    assert message.startswith(f"{root / rel}: record 3, field '{field}': ") and "\n" not in message
    assert (e.value.record, e.value.field) == (3, field)


def test_malformed_via_cli_exit_code_2(tmp_path, capsys):
    root = make_slice("cirr", SHARED / "cirr", tmp_path / "data", 8)
    _mutate(root / "captions" / "cap.rc2.val.json", 3, _pop("reference"), pretty=False)
    assert invoke(["ingest", "cirr", "--data-root", str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "record 3, field 'reference': missing" in err
    assert not (tmp_path / "out" / "queries.parquet").exists()


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(AnnotationError, match=r"cap\.rc2\.val\.json: annotation file not found"):
        load_benchmark("cirr", tmp_path, check_images=False)
    root = make_slice("circo", SHARED / "circo", tmp_path / "c", 4, write_images=False)
    (root / "annotations" / "val.json").write_text("[{")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_benchmark("circo", root, check_images=False)


# ---------------------------------------------------------------- missing images


def test_missing_images_counted_and_skippable(tmp_path, capsys):
    root = make_slice("fashioniq", SHARED / "fashioniq", tmp_path / "data", 10, category="shirt")
    removed = sorted((root / "images").iterdir())[:3]
    for p in removed:
        p.unlink()
    with pytest.raises(MissingImagesError) as e:
        load_benchmark("fashioniq", root, "val", "shirt")
    assert e.value.missing == [str(p) for p in removed]
    assert str(e.value).startswith("3 of 40 images are missing (first: ") and "--skip-image-check" in str(e.value)

    argv = ["ingest", "fashioniq", "--data-root", str(root), "--category", "shirt", "--out", str(tmp_path / "out"), "--json"]
    assert invoke(argv) == 2
    assert "3 of 40 images are missing" in capsys.readouterr().err
    assert invoke([*argv, "--skip-image-check"]) == 0
    assert json.loads(capsys.readouterr().out)["images_checked"] is False
