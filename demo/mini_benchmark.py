"""A tiny procedural benchmark in the official CIRR and CIRCO formats, for demos and end-to-end tests.

Every image is one shape (kind x colour) on a plain background, and every modification text says what changes
between reference and target ("change the red circle to a blue square"), so a working CLIP-style pipeline scores
far above chance on it. Deterministic from the seed.

    roots = build_mini_benchmark(tmp)   # {"cirr": <data root>, "circo": <data root>}
    load_benchmark("cirr", roots["cirr"]); load_benchmark("circo", roots["circo"])
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 96
SHAPES = ("circle", "square", "triangle", "star")
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128), "pink": (250, 200, 210)}

# 10 groups of 6 = 60 images: a gallery larger than the 50 entries a CIRR submission list must hold
CIRR_GROUPS, CIRR_QUERIES_PER_GROUP = 10, 3
CIRCO_GALLERY, CIRCO_QUERIES = 60, 12
# image stem -> {shape, color, background}: what each generated image shows, written beside the annotations
ATTRIBUTES = "attributes.json"


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    background: str

    def phrase(self) -> str:
        return f"{self.color} {self.shape}"


def draw(scene: Scene, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUNDS[scene.background])
    d = ImageDraw.Draw(img)
    r = rng.randint(SIZE // 5, SIZE // 3)  # size and position jitter: same scene, different pixels
    cx, cy = rng.randint(r + 2, SIZE - r - 2), rng.randint(r + 2, SIZE - r - 2)
    fill = COLORS[scene.color]
    if scene.shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene.shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        pts = [(cx + (r if k % 2 == 0 else r // 2) * math.sin(k * math.pi / 5), cy - (r if k % 2 == 0 else r // 2) * math.cos(k * math.pi / 5)) for k in range(10)]
        d.polygon(pts, fill=fill)
    return img


def describe_change(ref: Scene, tgt: Scene) -> str:
    if ref.shape == tgt.shape:
        text = f"make the {ref.shape} {tgt.color} instead of {ref.color}"
    elif ref.color == tgt.color:
        text = f"turn the {ref.color} {ref.shape} into a {tgt.shape}"
    else:
        text = f"change the {ref.phrase()} to a {tgt.phrase()}"
    if ref.background != tgt.background:
        text += f" on a {tgt.background} background"
    return text


def _build_cirr(root: Path, rng: random.Random) -> None:
    (root / "dev").mkdir(parents=True, exist_ok=True)
    split: dict[str, str] = {}
    attributes: dict[str, dict] = {}  # the generator's own labels (MVFT-JI demo training data, cirflow.demo.mvft)
    captions = []
    pairid = 100
    for g in range(CIRR_GROUPS):
        # a group shares its background, like CIRR's groups of visually similar images
        background = rng.choice(list(BACKGROUNDS))
        combos = rng.sample([(s, c) for s in SHAPES for c in COLORS], 6)
        scenes = [Scene(s, c, background) for s, c in combos]
        names = [f"dev-{500 + g}-{k // 2}-img{k % 2}" for k in range(6)]
        for name, scene in zip(names, scenes):
            split[name] = f"./dev/{name}.png"
            attributes[name] = scene.__dict__
            draw(scene, rng).save(root / "dev" / f"{name}.png")
        members = names[:]
        rng.shuffle(members)
        # CIRR's rank chain 0->1, 1->2, ... within a group
        for q in range(CIRR_QUERIES_PER_GROUP):
            ref, tgt = 2 * q, 2 * q + 1
            captions.append(
                {
                    "pairid": pairid,
                    "reference": names[ref],
                    "target_hard": names[tgt],
                    "target_soft": {names[tgt]: 1.0},
                    "caption": describe_change(scenes[ref], scenes[tgt]),
                    "img_set": {"id": g, "members": members, "reference_rank": ref, "target_rank": tgt},
                }
            )
            pairid += 1
    (root / "captions").mkdir(parents=True, exist_ok=True)
    (root / "image_splits").mkdir(parents=True, exist_ok=True)
    (root / "captions" / "cap.rc2.val.json").write_text(json.dumps(captions))
    (root / "image_splits" / "split.rc2.val.json").write_text(json.dumps(split))
    (root / ATTRIBUTES).write_text(json.dumps(attributes, indent=1, sort_keys=True))


def _build_circo(root: Path, rng: random.Random) -> None:
    image_dir = root / "COCO2017_unlabeled" / "unlabeled2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    combos = rng.sample([Scene(s, c, b) for s in SHAPES for c in COLORS for b in BACKGROUNDS], CIRCO_GALLERY)
    ids = rng.sample(range(1, 600_000), CIRCO_GALLERY)  # COCO-unlabeled-like integer ids
    for coco_id, scene in zip(ids, combos):
        draw(scene, rng).convert("RGB").save(image_dir / f"{coco_id:012d}.jpg", quality=90)
    by_id = dict(zip(ids, combos))
    (root / ATTRIBUTES).write_text(json.dumps({f"{i:012d}": s.__dict__ for i, s in sorted(by_id.items())}, indent=1))

    # A query asks for the same shape in another colour; every gallery image with that shape and colour (any
    # background) is a ground truth. Keep the (reference, colour) pairs with 1-3 matches, as CIRCO has several.
    candidates = []
    for ref_id, ref in by_id.items():
        for color in COLORS:
            if color == ref.color:
                continue
            gts = [i for i, s in by_id.items() if s.shape == ref.shape and s.color == color]
            if 1 <= len(gts) <= 3:
                candidates.append((ref_id, color, gts))
    rng.shuffle(candidates)
    queries, used_refs = [], set()
    for ref_id, color, gts in candidates:
        if len(queries) == CIRCO_QUERIES:
            break
        if ref_id in used_refs:
            continue
        used_refs.add(ref_id)
        ref = by_id[ref_id]
        gts = sorted(gts, key=lambda i: by_id[i].background != ref.background)  # the same-background one is "the" target
        queries.append(
            {
                "id": len(queries),
                "reference_img_id": ref_id,
                "target_img_id": gts[0],
                "relative_caption": f"is {color} instead of {ref.color}",
                "shared_concept": f"a {ref.shape}",
                "gt_img_ids": gts,
                "semantic_aspects": ["direct_addressing"] if len(gts) == 1 else ["direct_addressing", "compare_change"],
            }
        )
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "val.json").write_text(json.dumps(queries, indent=4))


def build_mini_benchmark(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the mini CIRR and CIRCO data roots under `root`; returns {"cirr": path, "circo": path}."""
    root = Path(root)
    rng = random.Random(seed)
    roots = {"cirr": root / "cirr", "circo": root / "circo"}
    _build_cirr(roots["cirr"], rng)
    _build_circo(roots["circo"], rng)
    return roots


__all__ = ["ATTRIBUTES", "build_mini_benchmark", "describe_change", "Scene"]
