"""CIRCO in the SEARLE layout: annotations at `<data_root>/annotations/<split>.json`, images at
`<image_root or data_root>/COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg`.

If that root has no `COCO2017_unlabeled/` folder but has `unlabeled2017/` directly, that folder is used (so
image_root may also point at the COCO2017_unlabeled folder itself).

Gallery = the whole COCO 2017 unlabeled set. Its ids come from, in order of preference:
1. `COCO2017_unlabeled/annotations/image_info_unlabeled2017.json` (COCO's list, "images"[*]["id"]);
2. the `*.jpg` names in the image folder (one listing);
3. when neither exists (only possible with check_images=False), the ids the annotations mention; info records
   which source was used as `gallery_source` so a run on an incomplete gallery is visible.
"""

from __future__ import annotations

from typing import Any

from cirflow.schemas.errors import MissingImagesError

from .common import Benchmark, Records, exists, images_table, isdir, join, list_names, normalize_root, queries_table, read_json

SPLITS = ("val", "test")
DEFAULT_SPLIT = "val"
NO_GT_SPLITS = ("test",)


def image_name(coco_id: int | str) -> str:
    return f"{coco_id:0>12}.jpg"  # ids are digit strings (or ints): zero-pad without an int() round trip


def _unlabeled_root(root: str) -> tuple[str, str]:
    """(folder holding annotations/ and unlabeled2017/, image folder)."""
    base = join(root, "COCO2017_unlabeled")
    if not isdir(base) and isdir(join(root, "unlabeled2017")):
        base = root
    return base, join(base, "unlabeled2017")


def _gallery_ids(base: str, image_dir: str, listing: set[str] | None, files: dict) -> tuple[list[str] | None, str]:
    info_path = join(base, "annotations", "image_info_unlabeled2017.json")
    if exists(info_path):
        recs = Records(info_path, read_json(info_path, "image_info_unlabeled2017", files), dict)
        images = recs.get(recs.data, None, "images", list)
        try:  # fast path for the 123k entries; the checked loop below only runs to name a bad record
            raw = [im["id"] for im in images]
            ok = all(type(x) is int for x in raw)
        except (KeyError, TypeError):
            ok = False
        ids = [str(x) for x in raw] if ok else [str(recs.get(im, i, "id", int)) for i, im in enumerate(images)]
        return list(dict.fromkeys(ids)), "image_info_unlabeled2017.json"
    if listing is not None:
        ids = sorted(int(n[:-4]) for n in listing if n.endswith(".jpg") and n[:-4].isdigit())
        return [str(i) for i in ids], f"listing of {image_dir}"
    return None, "annotations"


def load_circo(data_root: str, split: str, *, image_root: str | None = None, check: bool = True) -> Benchmark:
    data_root = normalize_root(data_root)
    root = normalize_root(image_root) if image_root is not None else data_root
    files: dict[str, dict[str, str]] = {}
    ann_path = join(data_root, "annotations", f"{split}.json")
    ann = Records(ann_path, read_json(ann_path, "annotations", files), list)

    has_gt = split not in NO_GT_SPLITS
    rows: list[dict[str, Any]] = []
    mentioned: dict[str, None] = {}
    seen: set[int] = set()
    ids_equal_index = True
    padding_stripped = 0
    for i, rec in enumerate(ann.data):
        qid = ann.get(rec, i, "id", int)
        if qid in seen:
            raise ann.fail(i, "id", f"duplicate id {qid}")
        seen.add(qid)
        ids_equal_index &= qid == i
        reference = ann.get(rec, i, "reference_img_id", int)
        caption = ann.get(rec, i, "relative_caption", str)
        concept = ann.get(rec, i, "shared_concept", str)
        target = ann.get(rec, i, "target_img_id", int, required=has_gt)
        gts = ann.get(rec, i, "gt_img_ids", list, required=has_gt)
        aspects = ann.str_list(rec, i, "semantic_aspects", required=has_gt)
        target_ids: list[str] = []
        if gts is not None:
            # SEARLE-style copies pad gt_img_ids with "" to a fixed length for batching
            kept = [g for g in gts if g != ""]
            padding_stripped += len(gts) - len(kept)
            for g in kept:
                if not isinstance(g, int) or isinstance(g, bool):
                    raise ann.fail(i, "gt_img_ids", f"expected integer COCO ids, found {g!r}")
            if target is not None and (not kept or kept[0] != target):
                raise ann.fail(i, "gt_img_ids", f"first entry must be target_img_id {target}")
            target_ids = [str(g) for g in kept]
        elif target is not None:
            target_ids = [str(target)]
        mentioned[str(reference)] = None
        mentioned.update(dict.fromkeys(target_ids))
        rows.append(
            {
                "query_id": str(qid),
                "reference_id": str(reference),
                "modification": caption,
                "captions": [caption],
                "target_ids": target_ids,
                "members": [],
                "candidate_ids": [],
                "shared_concept": concept,
                "semantic_aspects": aspects or [],
            }
        )

    base, image_dir = _unlabeled_root(root)
    listing = list_names(image_dir)
    gallery, source = _gallery_ids(base, image_dir, listing, files)
    gallery_set = set(gallery) if gallery is not None else set(mentioned)
    ids = list(gallery) if gallery is not None else list(mentioned)
    # references / GTs outside the gallery list still need rows (and are reported missing by the check)
    ids.extend(x for x in mentioned if x not in gallery_set)
    names = [image_name(x) for x in ids]
    paths = [f"{image_dir}/{n}" for n in names]

    if check:
        present = listing or set()
        missing = [p for n, p in zip(names, paths) if n not in present]
        if missing:
            raise MissingImagesError(missing, len(ids), f"; CIRCO images are expected at {image_dir}/<12-digit id>.jpg; pass --image-root")
    info = {
        "benchmark": "circo",
        "split": split,
        "data_root": data_root,
        "image_root": root,
        "image_layout": "<image_root>/COCO2017_unlabeled/unlabeled2017/<id:012d>.jpg",
        "gallery_source": source,
        "annotation_files": files,
        "counts": {"queries": len(rows), "images": len(ids), "gallery": sum(x in gallery_set for x in ids), "ground_truths": sum(len(r["target_ids"]) for r in rows)},
        "quirks": {
            "ids_equal_index": ids_equal_index,
            "gt_padding_stripped": padding_stripped,
            "references_in_ground_truth": sum(r["reference_id"] in r["target_ids"] for r in rows),
        },
        "has_ground_truth": has_gt,
    }
    return Benchmark(queries_table(rows), images_table(ids, paths, [x in gallery_set for x in ids]), info)


__all__ = ["DEFAULT_SPLIT", "SPLITS", "image_name", "load_circo"]
