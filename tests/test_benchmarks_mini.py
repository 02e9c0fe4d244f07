"""The demo mini benchmark and the placeholder images."""

from __future__ import annotations

import json

from PIL import Image

from cirflow.demo.mini_benchmark import CIRCO_GALLERY, CIRCO_QUERIES, CIRR_GROUPS, CIRR_QUERIES_PER_GROUP, build_mini_benchmark
from cirflow.tasks.benchmarks import load_benchmark
from cirflow.tasks.benchmarks.placeholders import placeholder_color, placeholder_image


def test_mini_benchmark_loads_with_image_check(tmp_path):
    roots = build_mini_benchmark(tmp_path)
    cirr = load_benchmark("cirr", roots["cirr"])
    assert cirr.queries.num_rows == CIRR_GROUPS * CIRR_QUERIES_PER_GROUP and cirr.images.num_rows == 6 * CIRR_GROUPS
    for row in cirr.queries.to_pylist():
        assert len(row["members"]) == 6 and row["reference_id"] in row["members"] and row["target_ids"][0] in row["members"]
        assert row["target_ids"][0] != row["reference_id"]
    circo = load_benchmark("circo", roots["circo"])
    assert circo.queries.num_rows == CIRCO_QUERIES and circo.images.num_rows == CIRCO_GALLERY
    assert circo.info["gallery_source"].startswith("listing of ")
    rows = circo.queries.to_pylist()
    assert all(1 <= len(r["target_ids"]) <= 3 and r["reference_id"] not in r["target_ids"] for r in rows)
    assert len({len(r["target_ids"]) for r in rows}) > 1


def test_mini_texts_describe_the_change(tmp_path):
    roots = build_mini_benchmark(tmp_path)

    caps = json.loads((roots["cirr"] / "captions" / "cap.rc2.val.json").read_text())
    with Image.open(roots["cirr"] / "dev" / f"{caps[0]['target_hard']}.png") as im:
        assert im.size == (96, 96)
    circo = json.loads((roots["circo"] / "annotations" / "val.json").read_text())
    for q in circo:
        colour = q["relative_caption"].split()[1]
        assert q["relative_caption"].startswith("is ") and colour in {"red", "green", "blue", "yellow", "purple", "orange"}


def test_mini_is_deterministic(tmp_path):
    a, b, c = build_mini_benchmark(tmp_path / "a"), build_mini_benchmark(tmp_path / "b"), build_mini_benchmark(tmp_path / "c", seed=1)
    rel = "captions/cap.rc2.val.json"
    assert (a["cirr"] / rel).read_bytes() == (b["cirr"] / rel).read_bytes()
    assert (a["cirr"] / rel).read_bytes() != (c["cirr"] / rel).read_bytes()
    assert (a["circo"] / "annotations/val.json").read_bytes() == (b["circo"] / "annotations/val.json").read_bytes()
    png = sorted((a["cirr"] / "dev").iterdir())[0].name
    assert (a["cirr"] / "dev" / png).read_bytes() == (b["cirr"] / "dev" / png).read_bytes()


def test_placeholder_images_are_deterministic():
    assert placeholder_color("dev-1-0-img0") == placeholder_color("dev-1-0-img0") != placeholder_color("dev-1-0-img1")
    im = placeholder_image("x", 32)
    assert im.size == (32, 32) and im.getpixel((0, 0)) == placeholder_color("x")
    assert placeholder_image("x", (40, 20)).size == (40, 20)
