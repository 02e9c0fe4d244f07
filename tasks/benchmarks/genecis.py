"""GeneCIS ("v0") task files: `<data_root>/genecis/<task>.json` (the upstream repo's doubled folder: data_root is
the folder that contains `genecis/`; a data_root that holds `<task>.json` directly is accepted too).

Image rule, root = image_root or data_root:
- attribute tasks (Visual Genome): `<root>/VG_100K_all/<image_id>.jpg`;
- object tasks (COCO 2017 val): `<root>/val2017/<id:012d>.jpg`.
If root itself is named `VG_100K_all` (resp. `val2017`), it is used as the image folder directly.

Each distinct item (image + box) is one images row. Attribute item ids are `"<vg id>@<x>,<y>,<w>,<h>"` with the
box numbers written by repr(), so the id is exactly what the file says (ints stay ints, floats keep full
precision); crop_box = [x, y, w, h]. Object item ids are the COCO id as a string. There is no global gallery, so
in_gallery is False everywhere and each query carries its own candidate_ids = [target] + gallery.
"""

from __future__ import annotations

from typing import Any

from .common import Benchmark, Records, check_images, contained, exists, images_table, join, normalize_root, queries_table, read_json

TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
ATTRIBUTE_TASKS = ("focus_attribute", "change_attribute")
VG_FOLDER = "VG_100K_all"
COCO_FOLDER = "val2017"


def _image_dir(root: str, folder: str) -> str:
    return root if root.rstrip("/").rsplit("/", 1)[-1] == folder else join(root, folder)


class _Items:
    """Parses image items of one task file and collects the distinct ones in first-seen order."""

    def __init__(self, recs: Records, attribute: bool, image_dir: str):
        self.recs, self.attribute, self.image_dir = recs, attribute, image_dir
        self.rows: dict[str, tuple[str, list[float] | None]] = {}  # item id -> (path, crop_box)

    def parse(self, item: Any, index: int, name: str) -> tuple[str, str]:
        """(item id, image file id) of one item, registering it."""
        recs = self.recs
        if self.attribute:
            image_id = recs.get(item, index, f"{name}.image_id", str)
            box = recs.get(item, index, f"{name}.instance_bbox", list)
            if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
                raise recs.fail(index, f"{name}.instance_bbox", f"expected [x, y, w, h] numbers, got {box!r}")
            path = contained(self.image_dir, f"{image_id}.jpg")
            if path is None:  # an image outside the image folder would be read, sent to models and embedded
                raise recs.fail(index, f"{name}.image_id",
                                f"image id {image_id!r} leaves the image folder {self.image_dir}")
            item_id = f"{image_id}@{','.join(repr(v) for v in box)}"
            if item_id not in self.rows:
                self.rows[item_id] = (path, [float(v) for v in box])
            return item_id, image_id
        coco_id = recs.get(item, index, f"{name}.val_image_id", int)
        item_id = str(coco_id)
        if item_id not in self.rows:
            self.rows[item_id] = (f"{self.image_dir}/{coco_id:012d}.jpg", None)
        return item_id, item_id


def _task_path(data_root: str, task: str) -> str:
    nested = join(data_root, "genecis", f"{task}.json")
    flat = join(data_root, f"{task}.json")
    return flat if not exists(nested) and exists(flat) else nested


def load_genecis(data_root: str, task: str, *, image_root: str | None = None, check: bool = True) -> Benchmark:
    data_root = normalize_root(data_root)
    root = normalize_root(image_root) if image_root is not None else data_root
    attribute = task in ATTRIBUTE_TASKS
    image_dir = _image_dir(root, VG_FOLDER if attribute else COCO_FOLDER)
    files: dict[str, dict[str, str]] = {}
    path = _task_path(data_root, task)
    recs = Records(path, read_json(path, "task", files), list)
    items = _Items(recs, attribute, image_dir)

    rows: list[dict[str, Any]] = []
    noise = {"target_in_gallery": 0, "reference_in_gallery": 0, "galleries_with_duplicates": 0, "target_same_image_as_reference": 0}
    lengths: dict[int, int] = {}
    for i, rec in enumerate(recs.data):
        condition = recs.get(rec, i, "condition", str)
        reference, ref_image = items.parse(recs.get(rec, i, "reference", dict), i, "reference")
        target, target_image = items.parse(recs.get(rec, i, "target", dict), i, "target")
        gallery_items = recs.get(rec, i, "gallery", list)
        gallery = [items.parse(g, i, f"gallery[{j}]")[0] for j, g in enumerate(gallery_items)]
        # v0 noise is kept as-is so scores match published numbers; only counted here
        noise["target_in_gallery"] += target in gallery
        noise["reference_in_gallery"] += reference in gallery
        noise["galleries_with_duplicates"] += len(set(gallery)) < len(gallery)
        noise["target_same_image_as_reference"] += target_image == ref_image
        candidates = [target, *gallery]
        lengths[len(candidates)] = lengths.get(len(candidates), 0) + 1
        rows.append(
            {
                "query_id": str(i),
                "reference_id": reference,
                "modification": condition,
                "captions": [condition],
                "target_ids": [target],
                "members": [],
                "candidate_ids": candidates,
                "shared_concept": None,
                "semantic_aspects": [],
            }
        )

    ids = list(items.rows)
    paths = [items.rows[x][0] for x in ids]
    if check:
        layout = f"{image_dir}/<image_id>.jpg" if attribute else f"{image_dir}/<id:012d>.jpg"
        check_images(paths, hint=f"; GeneCIS {task} images are expected at {layout}; pass --image-root")
    candidate_ids = {c for r in rows for c in r["candidate_ids"]}
    info = {
        "benchmark": "genecis",
        "split": None,
        "task": task,
        "data_root": data_root,
        "image_root": root,
        "image_layout": f"<image_root>/{VG_FOLDER}/<image_id>.jpg" if attribute else f"<image_root>/{COCO_FOLDER}/<id:012d>.jpg",
        "annotation_files": files,
        "counts": {
            "queries": len(rows),
            "images": len(ids),
            "gallery": len(candidate_ids),  # distinct candidate items; there is no global gallery
            "image_files": len(set(paths)),
            "candidate_list_lengths": {str(k): v for k, v in sorted(lengths.items())},
        },
        "quirks": noise,
        "has_ground_truth": True,
    }
    return Benchmark(queries_table(rows), images_table(ids, paths, [False] * len(ids), [items.rows[x][1] for x in ids]), info)


__all__ = ["ATTRIBUTE_TASKS", "TASKS", "load_genecis"]
