"""CIRR (rc2) in its official layout: `<data_root>/captions/cap.rc2.<split>.json` and
`<data_root>/image_splits/split.rc2.<split>.json`.

Image root rule (when `image_root` is not given): the split file's paths look like `./dev/<name>.png`
(train: `./train/<n>/<name>.png`). If the first path component (`dev`, `test1`, `train`) is a folder of
data_root, images resolve against data_root; else if it is a folder of data_root's parent, against the parent
(the common download `CIRR/cirr/{captions,image_splits}` + `CIRR/dev/`); else against data_root, and the image
check reports them missing.
"""

from __future__ import annotations

from typing import Any

from .common import Benchmark, Records, check_images, contained, images_table, isdir, join, normalize_root, parent, queries_table, read_json

SPLITS = ("val", "test1", "train")
DEFAULT_SPLIT = "val"
# test1 is the only split without ground truth (target_hard, target_soft, img_set.target_rank are absent).
NO_GT_SPLITS = ("test1",)


def _image_root(data_root: str, rel_paths: list[str]) -> str:
    if not rel_paths:
        return data_root
    top = rel_paths[0].removeprefix("./").split("/", 1)[0]
    for candidate in (data_root, parent(data_root)):
        if isdir(join(candidate, top)):
            return candidate
    return data_root


def load_cirr(data_root: str, split: str, *, image_root: str | None = None, check: bool = True) -> Benchmark:
    data_root = normalize_root(data_root)
    files: dict[str, dict[str, str]] = {}
    cap_path = join(data_root, "captions", f"cap.rc2.{split}.json")
    split_path = join(data_root, "image_splits", f"split.rc2.{split}.json")
    caps = Records(cap_path, read_json(cap_path, "captions", files), list)
    split_file = Records(split_path, read_json(split_path, "image_split", files), dict)

    image_names = list(split_file.data)
    rel_paths = list(split_file.data.values())
    for name, rel in split_file.data.items():
        if not isinstance(rel, str):
            raise split_file.fail(repr(name), None, f"expected a relative path string, got {rel!r}")
    root = normalize_root(image_root) if image_root is not None else _image_root(data_root, rel_paths)
    paths = []
    for name, rel in split_file.data.items():
        path = contained(root, rel)
        if path is None:  # an image outside the image root would be read, sent to models and embedded
            raise split_file.fail(repr(name), None, f"path {rel!r} leaves the image root {root}")
        paths.append(path)
    gallery = set(image_names)

    has_gt = split not in NO_GT_SPLITS
    rows: list[dict[str, Any]] = []
    seen_pairids: set[int] = set()
    blank_captions = 0
    targets_outside_members = 0
    for i, rec in enumerate(caps.data):
        pairid = caps.get(rec, i, "pairid", int)
        if pairid in seen_pairids:
            raise caps.fail(i, "pairid", f"duplicate pairid {pairid}")
        seen_pairids.add(pairid)
        reference = caps.get(rec, i, "reference", str)
        caption = caps.get(rec, i, "caption", str)
        target = caps.get(rec, i, "target_hard", str, required=has_gt)
        img_set = caps.get(rec, i, "img_set", dict)
        members = caps.str_list(img_set, i, "img_set.members", length=6)
        caps.get(img_set, i, "img_set.reference_rank", int)
        caps.get(img_set, i, "img_set.target_rank", int, required=has_gt)
        if has_gt:
            caps.get(rec, i, "target_soft", dict)
        # Recall_subset ranks members minus the reference: a reference outside the group breaks that metric.
        if reference not in members:
            raise caps.fail(i, "img_set.members", f"does not contain the reference {reference!r}")
        for name, values in (("reference", [reference]), ("target_hard", [target] if target else []), ("img_set.members", members)):
            for v in values:
                if v not in gallery:
                    raise caps.fail(i, name, f"image {v!r} is not a key of {split_path}")
        if target is not None and target not in members:
            targets_outside_members += 1
        if not caption.strip():
            blank_captions += 1  # test1 pairid 27098 is " "; kept verbatim, methods decide
        rows.append(
            {
                "query_id": str(pairid),
                "reference_id": reference,
                "modification": caption,
                "captions": [caption],
                "target_ids": [target] if target is not None else [],
                "members": members,
                "candidate_ids": [],
                "shared_concept": None,
                "semantic_aspects": [],
            }
        )

    if check:
        check_images(paths, hint=f"; CIRR images resolve against {root} (split file paths like {rel_paths[0] if rel_paths else '?'}); pass --image-root")
    info = {
        "benchmark": "cirr",
        "split": split,
        "data_root": data_root,
        "image_root": root,
        "image_layout": "<image_root>/<path from image_splits/split.rc2.<split>.json>",
        "annotation_files": files,
        "counts": {"queries": len(rows), "images": len(paths), "gallery": len(paths)},
        "quirks": {"blank_captions": blank_captions, "targets_outside_members": targets_outside_members},
        "has_ground_truth": has_gt,
    }
    return Benchmark(queries_table(rows), images_table(image_names, paths, [True] * len(paths)), info)


__all__ = ["DEFAULT_SPLIT", "SPLITS", "load_cirr"]
