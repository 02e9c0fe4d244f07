"""MVFT-JI training data for the demo, from the mini benchmark's own generated attributes (attributes.json).

The paper's data come from an MLLM (modification, target text, caption per unlabeled image, §3.2). The demo's
tiny MLLM has random weights, so its text would be noise and nothing could be learned from it; the mini
benchmark knows what each image shows, so the demo writes those three texts from the labels instead, with the
benchmark's own phrasing. The unlabeled images are the mini benchmark's images (CIRR and CIRCO); every
(reference, target shape, target colour) that a benchmark query asks for is left out, so the evaluation queries
are compositions the model never trained on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa

from cirflow.demo.mini_benchmark import ATTRIBUTES, BACKGROUNDS, COLORS, SHAPES, Scene, describe_change
from cirflow.models.mvft.training import TRAINING_ROWS


def caption(s: Scene) -> str:
    return f"a {s.color} {s.shape} on a {s.background} background"


def _images(roots: dict[str, Path]) -> list[tuple[str, str, Scene]]:
    """(image_id, path, scene) of every generated image, CIRR then CIRCO, in name order."""
    out = []
    for bench, folder, suffix in (("cirr", "dev", ".png"), ("circo", "COCO2017_unlabeled/unlabeled2017", ".jpg")):
        root = Path(roots[bench])
        for stem, a in sorted(json.loads((root / ATTRIBUTES).read_text()).items()):
            out.append((f"{bench}/{stem}", str(root / folder / f"{stem}{suffix}"), Scene(**a)))
    return out


def query_compositions(roots: dict[str, Path]) -> set[tuple[str, str, str]]:
    """(reference image_id, target shape, target colour) of every benchmark query."""
    cirr, circo = Path(roots["cirr"]), Path(roots["circo"])
    a_cirr = json.loads((cirr / ATTRIBUTES).read_text())
    a_circo = json.loads((circo / ATTRIBUTES).read_text())
    asked = set()
    for q in json.loads((cirr / "captions" / "cap.rc2.val.json").read_text()):
        t = a_cirr[q["target_hard"]]
        asked.add((f"cirr/{q['reference']}", t["shape"], t["color"]))
    for q in json.loads((circo / "annotations" / "val.json").read_text()):
        for g in q["gt_img_ids"]:
            t = a_circo[f"{int(g):012d}"]
            asked.add((f"circo/{int(q['reference_img_id']):012d}", t["shape"], t["color"]))
    return asked


def training_rows(roots: dict[str, Path], per_image: int = 6, seed: int = 0) -> pa.Table:
    """`per_image` (modification, target text, caption) rows per image, none of them a benchmark query."""
    rng = random.Random(seed)
    asked = query_compositions(roots)
    rows = []
    for image_id, path, ref in _images(roots):
        sample = 0
        for _ in range(per_image * 20):  # draws that hit a query composition are skipped
            if sample == per_image:
                break
            change = rng.choice(("color", "shape", "both", "background"))
            tgt = Scene(rng.choice([s for s in SHAPES if s != ref.shape]) if change in ("shape", "both") else ref.shape,
                        rng.choice([c for c in COLORS if c != ref.color]) if change in ("color", "both") else ref.color,
                        rng.choice([b for b in BACKGROUNDS if b != ref.background]) if change == "background"
                        else ref.background)
            if (image_id, tgt.shape, tgt.color) in asked:
                continue
            # the two phrasings of the benchmark: CIRR's describe_change and CIRCO's "is X instead of Y"
            if change == "background":
                text = f"same {ref.phrase()} but on a {tgt.background} background"
            elif change == "color" and rng.random() < 0.5:
                text = f"is {tgt.color} instead of {ref.color}"
            else:
                text = describe_change(ref, tgt)
            rows.append({"image_id": image_id, "sample": sample, "path": path, "modification": text,
                         "target_text": caption(tgt), "caption": caption(ref)})
            sample += 1
    return pa.Table.from_pylist(rows, schema=TRAINING_ROWS)


# ------------------------------------------------------------------------------------------------ the demo

BENCHMARKS = ("cirr", "circo")
WEIGHTS = ("base", "trained")  # untrained, trained


def demo_configs(workdir: str | Path) -> dict[tuple[str, str], object]:
    """{(benchmark, weights): MVFTJIConfig} for the mini CIRR and CIRCO, untrained and trained."""
    from importlib import resources

    import pyarrow.parquet as pq
    import yaml

    from cirflow.demo.mini_benchmark import build_mini_benchmark
    from cirflow.flows.registry import parse_config
    from cirflow.models.mvft.tiny import build_tiny_mvft
    from cirflow.models.tiny import build_tiny_qwen25vl

    workdir = Path(workdir).resolve()
    roots = build_mini_benchmark(workdir / "data")
    rows = workdir / "data" / "mvft_rows.parquet"
    table = training_rows(roots)
    if not rows.is_file() or not pq.read_table(rows).equals(table):  # same bytes on a rerun: the store caches
        pq.write_table(table, rows)
    fill = {"workdir": str(workdir), "rows": str(rows),
            "mllm_dir": str(build_tiny_qwen25vl(workdir / "models" / "tiny-qwen25vl")),
            "mvft_dir": str(build_tiny_mvft(workdir / "models" / "tiny-mvft"))}
    template = resources.files("cirflow.demo").joinpath("mvft_ji.yaml").read_text()
    out = {}
    for bench in BENCHMARKS:
        for weights in WEIGHTS:
            text = template
            for k, v in {**fill, "benchmark": bench, "data_root": str(roots[bench]), "weights": weights}.items():
                text = text.replace("{" + k + "}", v)
            out[bench, weights] = parse_config(yaml.safe_load(text), "cirflow/demo/mvft_ji.yaml")
    return out


def run_demo(workdir: str | Path, progress: bool = True) -> dict:
    """Untrained vs trained metrics: {"untrained": {metric: value}, "trained": {...}, "benchmarks": {...}}; metric
    names are CIRR's own (recall@K, recall_subset@K) and CIRCO's prefixed ("circo/map@5"), all in percent."""
    from cirflow.cli.run import run_config

    docs = {key: run_config(cfg, progress=progress) for key, cfg in demo_configs(workdir).items()}
    side = {"untrained": {}, "trained": {}}
    for (bench, weights), doc in docs.items():
        # CIRR's names as they are ("recall@1"); CIRCO's prefixed, since both benchmarks report recall@K
        prefix = "" if bench == BENCHMARKS[0] else f"{bench}/"
        side["untrained" if weights == "base" else "trained"].update({prefix + k: v for k, v in doc["metrics"].items()})
    return {**side, "mode": "composed (ŝ only: the demo's MLLM has random weights)",
            "benchmarks": {b: {w: docs[b, w]["metrics"] for w in WEIGHTS} for b in BENCHMARKS},
            "stages": [s for d in docs.values() for s in d["stages"]],
            "train": next(s for d in docs.values() for s in d["stages"] if s["stage"] == "train_mvft"),
            "store": docs[BENCHMARKS[0], "trained"]["store"]}


def print_demo(doc: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
        return
    print("\nMVFT-JI demo: a tiny Q-Former fine-tuned on the mini benchmark's labels, evaluated on queries it never")
    print("trained on (score ŝ: composed query -> image; percent)\n")
    print(f"| {'metric':<20} | untrained | trained |\n|---|--:|--:|")
    for name in doc["trained"]:
        print(f"| {name:<20} | {doc['untrained'].get(name, float('nan')):9.2f} | {doc['trained'][name]:7.2f} |")
    t = doc["train"]
    print(f"\ntrain_mvft {t['status']} ({t['seconds']:.1f} s, key {t['key'][:12]}); store: {doc['store']}")
