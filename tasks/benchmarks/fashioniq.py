"""Fashion-IQ in its official layout: `<data_root>/captions/cap.<category>.<split>.json`,
`<data_root>/image_splits/split.<category>.<split>.json`, images at `<image_root or data_root>/images/<asin>.<ext>`.

Extension rule: the images are distributed as URL lists, so the extension depends on how they were fetched.
With one listing of the images folder, each ASIN takes the first of `.png`, `.jpg`, `.jpeg` present (png first,
as in the SEARLE/CLIP4Cir copies); an ASIN with none of them (or no folder at all) gets `.png`, and the image
check reports it. info["image_extensions"] counts what was chosen.
"""

from __future__ import annotations

from typing import Any

from cirflow.schemas.errors import ConfigError

from .common import Benchmark, Records, check_images, contained, images_table, join, list_names, normalize_root, queries_table, read_json

SPLITS = ("val", "train", "test")
DEFAULT_SPLIT = "val"
NO_GT_SPLITS = ("test",)
CATEGORIES = ("dress", "shirt", "toptee")
EXTENSIONS = ("png", "jpg", "jpeg")
JOINS = ("and", "and_reversed")
# What SEARLE/LinCIR strip from each caption before joining (metrics-and-methods.md A.3).
STRIP_CHARS = ".?, "


def join_captions(captions: list[str], policy: str = "and") -> str:
    """'<c1> and <c2>' ('and_reversed': c2 first); an empty caption is dropped instead of leaving ' and x'."""
    if policy not in JOINS:
        raise ConfigError(f"fashioniq: unknown caption join {policy!r} (expected one of {', '.join(JOINS)})")
    parts = [c.strip(STRIP_CHARS) for c in captions]
    if policy == "and_reversed":
        parts = parts[::-1]
    return " and ".join(p for p in parts if p)


def _file_names(asins: list[str], listing: set[str] | None) -> tuple[list[str], dict[str, int]]:
    names, counts = [], {ext: 0 for ext in EXTENSIONS}
    present = listing or set()
    for asin in asins:
        ext = next((e for e in EXTENSIONS if f"{asin}.{e}" in present), EXTENSIONS[0])
        counts[ext] += 1
        names.append(f"{asin}.{ext}")
    return names, counts


def load_fashioniq(data_root: str, split: str, category: str, *, image_root: str | None = None, fiq_join: str = "and", check: bool = True) -> Benchmark:
    if fiq_join not in JOINS:
        raise ConfigError(f"fashioniq: unknown caption join {fiq_join!r} (expected one of {', '.join(JOINS)})")
    data_root = normalize_root(data_root)
    root = normalize_root(image_root) if image_root is not None else data_root
    files: dict[str, dict[str, str]] = {}
    cap_path = join(data_root, "captions", f"cap.{category}.{split}.json")
    split_path = join(data_root, "image_splits", f"split.{category}.{split}.json")
    caps = Records(cap_path, read_json(cap_path, "captions", files), list)
    split_file = Records(split_path, read_json(split_path, "image_split", files), list)

    gallery: dict[str, None] = {}
    for i, asin in enumerate(split_file.data):
        if not isinstance(asin, str):
            raise split_file.fail(i, None, f"expected an ASIN string, got {asin!r}")
        if asin in gallery:
            raise split_file.fail(i, None, f"duplicate ASIN {asin!r}")
        # checked even under --skip-image-check: the path is still read later by every image stage
        if contained(join(root, "images"), f"{asin}.png") is None:
            raise split_file.fail(i, None, f"ASIN {asin!r} leaves the image folder {join(root, 'images')}")
        gallery[asin] = None

    has_gt = split not in NO_GT_SPLITS
    rows: list[dict[str, Any]] = []
    empty_captions = padded_captions = empty_modifications = 0
    for i, rec in enumerate(caps.data):
        candidate = caps.get(rec, i, "candidate", str)
        target = caps.get(rec, i, "target", str, required=has_gt)
        captions = caps.str_list(rec, i, "captions", length=2)
        for name, value in (("candidate", candidate), ("target", target)):
            if value is not None and value not in gallery:
                raise caps.fail(i, name, f"ASIN {value!r} is not listed in {split_path}")
        empty_captions += sum(not c.strip() for c in captions)
        padded_captions += sum(c != c.strip() and bool(c.strip()) for c in captions)
        modification = join_captions(captions, fiq_join)
        empty_modifications += not modification
        rows.append(
            {
                "query_id": str(i),
                "reference_id": candidate,
                "modification": modification,
                "captions": captions,
                "target_ids": [target] if target is not None else [],
                "members": [],
                "candidate_ids": [],
                "shared_concept": None,
                "semantic_aspects": [],
            }
        )

    image_dir = join(root, "images")
    asins = list(gallery)
    names, ext_counts = _file_names(asins, list_names(image_dir))
    paths = [f"{image_dir}/{n}" for n in names]
    if check:
        check_images(paths, hint=f"; Fashion-IQ images are expected at {image_dir}/<asin>.png|jpg|jpeg; pass --image-root")
    info = {
        "benchmark": "fashioniq",
        "split": split,
        "category": category,
        "fiq_join": fiq_join,
        "data_root": data_root,
        "image_root": root,
        "image_layout": "<image_root>/images/<asin>.<first of png|jpg|jpeg present, else png>",
        "image_extensions": ext_counts,
        "annotation_files": files,
        "counts": {"queries": len(rows), "images": len(paths), "gallery": len(paths)},
        "quirks": {"empty_captions": empty_captions, "padded_captions": padded_captions, "empty_modifications": empty_modifications},
        "has_ground_truth": has_gt,
    }
    return Benchmark(queries_table(rows), images_table(asins, paths, [True] * len(paths)), info)


__all__ = ["CATEGORIES", "DEFAULT_SPLIT", "JOINS", "SPLITS", "join_captions", "load_fashioniq"]
