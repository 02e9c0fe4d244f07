"""Placeholder images and benchmark slices, so tests and demos get a real on-disk benchmark without the images.

- write_placeholder_images: a small solid image per file, at exactly the path the loader resolved, coloured from
  a hash of the image id (deterministic; different ids look different to an encoder).
- make_slice: a data root holding the first N records of real annotation files (reduced split/gallery files so
  the folder is self-consistent), optionally in the held-out test format, plus placeholder images.
- to_test_format: strip ground-truth fields exactly as the held-out test files lack them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import fsspec
from PIL import Image, ImageDraw

from . import Benchmark, load_benchmark
from .common import is_local

# Fields the held-out files do not have (README: CIRR test1, CIRCO test, Fashion-IQ test).
CIRCO_TEST_FIELDS = ("id", "reference_img_id", "relative_caption", "shared_concept")
TEST_SPLIT = {"cirr": "test1", "circo": "test", "fashioniq": "test"}
MAX_SIDE = 1024  # GeneCIS boxes reach ~1000 px; a placeholder only needs to contain them


def placeholder_color(image_id: str) -> tuple[int, int, int]:
    d = hashlib.sha256(image_id.encode()).digest()
    return d[0], d[1], d[2]


def placeholder_image(image_id: str, size: int | tuple[int, int] = 32) -> Image.Image:
    w, h = (size, size) if isinstance(size, int) else size
    img = Image.new("RGB", (w, h), placeholder_color(image_id))
    # a second colour in the centre, so images are not all flat fields (some encoders normalise those away)
    inner = placeholder_color(image_id + "#")
    ImageDraw.Draw(img).rectangle([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=inner)
    return img


def _save(img: Image.Image, path: str) -> None:
    fmt = "JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG"
    if is_local(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img.save(path, format=fmt)
        return
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    with fsspec.open(path, "wb", auto_mkdir=True) as f:
        f.write(buf.getvalue())


def write_placeholder_images(
    bench: Benchmark | str,
    data_root: str | os.PathLike | None = None,
    split: str | None = None,
    category: str | None = None,
    task: str | None = None,
    *,
    image_root: str | os.PathLike | None = None,
    size: int = 32,
    overwrite: bool = False,
) -> int:
    """Write one placeholder per distinct image path of a Benchmark (or of one loaded here with check_images=False).

    GeneCIS attribute images are made large enough to contain every crop box on them, so crop code runs on them
    as on the real files. Returns the number of files written.
    """
    if isinstance(bench, str):
        if data_root is None:
            raise ValueError("data_root is required when a benchmark name is given")
        bench = load_benchmark(bench, data_root, split, category, task, image_root=image_root, check_images=False)
    sides: dict[str, tuple[int, int]] = {}
    first_id: dict[str, str] = {}
    for image_id, path, box in zip(bench.images["image_id"].to_pylist(), bench.images["path"].to_pylist(), bench.images["crop_box"].to_pylist()):
        w, h = sides.get(path, (size, size))
        if box is not None:
            x, y, bw, bh = box
            w, h = max(w, min(MAX_SIDE, math.ceil(x + bw) + 1)), max(h, min(MAX_SIDE, math.ceil(y + bh) + 1))
        sides[path] = (w, h)
        first_id.setdefault(path, image_id.split("@", 1)[0])
    written = 0
    for path, wh in sides.items():
        if not overwrite and is_local(path) and os.path.exists(path):
            continue
        _save(placeholder_image(first_id[path], wh), path)
        written += 1
    return written


# ---------------------------------------------------------------- slices of real annotation files


def to_test_format(bench: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of val/train records without the ground-truth fields the held-out test files lack."""
    out = []
    for rec in records:
        if bench == "cirr":
            rec = {k: v for k, v in rec.items() if k not in ("target_hard", "target_soft")}
            rec["img_set"] = {k: v for k, v in rec["img_set"].items() if k != "target_rank"}
        elif bench == "circo":
            rec = {k: rec[k] for k in CIRCO_TEST_FIELDS if k in rec}
        elif bench == "fashioniq":
            rec = {k: v for k, v in rec.items() if k != "target"}
        else:
            raise ValueError(f"{bench} has no test format")
        out.append(rec)
    return out


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _write(path: Path, data: Any, pretty: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep each benchmark's own formatting: CIRR is compact one-line JSON, the others are 4-space indented
    path.write_text(json.dumps(data, indent=4) if pretty else json.dumps(data))


def _take(records: list, n: int | None) -> list:
    return list(records) if n is None else list(records[:n])


def _extra(pool: list[str], have: dict[str, None], n: int) -> None:
    for x in pool:
        if n <= 0:
            break
        if x not in have:
            have[x] = None
            n -= 1


def _slice_cirr(src: Path, dst: Path, n: int | None, split: str, out_split: str, extra: int, as_test: bool) -> None:
    caps = _take(_read(src / "captions" / f"cap.rc2.{split}.json"), n)
    images = _read(src / "image_splits" / f"split.rc2.{split}.json")
    keep: dict[str, None] = {}
    for rec in caps:
        keep.update(dict.fromkeys([rec["reference"], *rec["img_set"]["members"], *([rec["target_hard"]] if "target_hard" in rec else [])]))
    _extra(list(images), keep, extra)
    _write(dst / "captions" / f"cap.rc2.{out_split}.json", to_test_format("cirr", caps) if as_test else caps, pretty=False)
    _write(dst / "image_splits" / f"split.rc2.{out_split}.json", {k: images[k] for k in images if k in keep}, pretty=False)


def _slice_circo(src: Path, dst: Path, n: int | None, split: str, out_split: str, extra: int, as_test: bool) -> None:
    records = _read(src / "annotations" / f"{split}.json")
    queries = _take(records, n)

    def ids(recs: list) -> list[str]:
        return [str(x) for r in recs for x in [r["reference_img_id"], *r.get("gt_img_ids", [])]]

    gallery = dict.fromkeys(ids(queries))
    # extra gallery ids are real unlabeled-set ids: those of the queries that were left out
    _extra(ids(records[len(queries) :]), gallery, extra)
    _write(dst / "annotations" / f"{out_split}.json", to_test_format("circo", queries) if as_test else queries, pretty=True)
    info = {"images": [{"id": int(x), "file_name": f"{int(x):012d}.jpg"} for x in gallery]}
    _write(dst / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json", info, pretty=False)


def _slice_fashioniq(src: Path, dst: Path, n: int | None, split: str, out_split: str, extra: int, as_test: bool, category: str) -> None:
    caps = _take(_read(src / "captions" / f"cap.{category}.{split}.json"), n)
    images = _read(src / "image_splits" / f"split.{category}.{split}.json")
    keep = dict.fromkeys(x for r in caps for x in (r["candidate"], r.get("target")) if x is not None)
    _extra(images, keep, extra)
    _write(dst / "captions" / f"cap.{category}.{out_split}.json", to_test_format("fashioniq", caps) if as_test else caps, pretty=True)
    _write(dst / "image_splits" / f"split.{category}.{out_split}.json", [x for x in images if x in keep], pretty=True)


def _slice_genecis(src: Path, dst: Path, n: int | None, task: str) -> None:
    nested = src / "genecis" / f"{task}.json"
    samples = _take(_read(nested if nested.exists() else src / f"{task}.json"), n)
    path = dst / "genecis" / f"{task}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(samples, indent=4, sort_keys=True))  # upstream formatting: sorted keys


def make_slice(
    bench: str,
    src_root: str | os.PathLike,
    dst_root: str | os.PathLike,
    n_queries: int | None = 50,
    *,
    split: str | None = None,
    category: str | None = None,
    task: str | None = None,
    extra_gallery: int = 20,
    as_test: bool = False,
    write_images: bool = True,
    image_size: int = 32,
) -> Path:
    """Build `dst_root` as an official-layout data root holding the first `n_queries` records (None = all) of
    the real files under `src_root`, a reduced gallery (the images those records use + `extra_gallery` more
    from the same split) and, with write_images, placeholder images where the loader looks for them
    (image_root = dst_root). With as_test the files are written as the benchmark's test split, ground truth
    removed. Load it with load_benchmark(bench, dst_root, <split or the test split>, category, task).
    """
    src, dst = Path(src_root), Path(dst_root)
    defaults = {"cirr": "val", "circo": "val", "fashioniq": "val"}
    if bench not in defaults and bench != "genecis":
        raise ValueError(f"unknown benchmark {bench!r}")
    split = split or defaults.get(bench)
    out_split = TEST_SPLIT[bench] if as_test else split
    if bench == "cirr":
        _slice_cirr(src, dst, n_queries, split, out_split, extra_gallery, as_test)
    elif bench == "circo":
        _slice_circo(src, dst, n_queries, split, out_split, extra_gallery, as_test)
    elif bench == "fashioniq":
        if category is None:
            raise ValueError("fashioniq slices need a category")
        _slice_fashioniq(src, dst, n_queries, split, out_split, extra_gallery, as_test, category)
    else:
        if task is None:
            raise ValueError("genecis slices need a task")
        _slice_genecis(src, dst, n_queries, task)
    if write_images:
        write_placeholder_images(bench, dst, out_split, category, task, size=image_size)
    return dst


__all__ = ["make_slice", "placeholder_color", "placeholder_image", "to_test_format", "write_placeholder_images"]
