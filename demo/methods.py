"""`cirflow demo --method M`: one offline CPU run of any method on the mini benchmark (demo/mini_benchmark.py) with
the tiny random-weight models it needs, through the method registry like `cirflow run CONFIG`.

Each demo writes a real run config to <workdir>/configs/<method>.yaml (edit it, then `cirflow run` it) and runs
that file with `cirflow.cli.run.run_file`: the same preflight, store-first planning, flow and report as a user's
own config. Random weights give near-chance numbers and mostly unusable texts (counted as failed rows, reported,
never a reason to stop: `max_failure_rate: 1.0`); the demos show the pipeline and its stages, not a result.
JSON answers (IP-CIR's layouts, MTCIR's modification texts) are decoded under their schema by the in-process
backend (models/mllm/constrained.py), so even random weights write valid JSON within the token budget: IP-CIR
draws proxies from the layouts whose boxes happen to be ordered, and the MTCIR build ends with a release.

Models per method (built once into <workdir>/models, reused by every demo):
  pefuse       tiny Qwen2.5-VL + tiny OpenCLIP + tiny InstructPix2Pix (mode i2i: the query is a generated image)
  cirevl/ldre  tiny Qwen2.5-VL + tiny OpenCLIP
  ip_cir       tiny Qwen2.5-VL + tiny OpenCLIP + tiny GLIGEN (proxy images drawn from the planned layouts)
  refine       tiny Qwen2.5-VL + tiny OpenCLIP
  build_*      tiny Qwen2.5-VL (+ tiny OpenCLIP for MTCIR's similarity pairing) over a folder of mini-benchmark
               images sorted by shape (the meta-class)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

# cli/demo.py imports this at `--help` time: the module imports nothing heavy at the top
METHODS = ("pefuse", "cirevl", "ldre", "ip_cir", "refine", "build_mtcir", "build_instructcir", "build_mvft")

# short templates: the tiny byte-level model's cost grows with prompt length, and its answers are noise anyway
PROMPTS = {
    "compose.txt": "Describe the target image after this change: {modification}",
    "caption.txt": "Describe this image.",
    "rewrite.txt": "Image Content: {caption}\nInstruction: {modification}\nEdited Description:",
    "layout.txt": "Plan the target image as JSON.\n<<<USER>>>\n{caption} | {shared_concept}: {modification}",
}
SHORT = {"temperature": 0.0, "max_tokens": 6, "seed": 0}
COLLECTION_IMAGES = 16  # images in the build demos' collection: enough for pairs in every meta-class


def _models(workdir: Path, method: str) -> dict[str, str]:
    """The tiny models `method` needs, built into <workdir>/models on first use (each builder returns an
    existing folder as is)."""
    from cirflow.models.tiny import build_tiny_open_clip, build_tiny_qwen25vl

    root = workdir / "models"
    out = {"mllm": str(build_tiny_qwen25vl(root / "tiny-qwen25vl"))}
    if method != "build_instructcir" and method != "build_mvft":
        out["encoder"] = str(build_tiny_open_clip(root / "tiny-open-clip"))
    if method == "pefuse":
        from cirflow.models.tiny_diffusion import build_tiny_instruct_pix2pix

        out["diffusion"] = str(build_tiny_instruct_pix2pix(root / "tiny-instruct-pix2pix"))
    if method == "ip_cir":
        from cirflow.models.tiny_diffusion import build_tiny_gligen

        out["gligen"] = str(build_tiny_gligen(root / "tiny-gligen"))
    return out


def _collection(workdir: Path, cirr_root: Path) -> Path:
    """<workdir>/collection/<shape>/<image>.png: the first mini-CIRR images, one folder per shape, so a folder
    collection with `meta_class_from: top_dir` has meta-classes (InstructCIR pairs within them)."""
    from cirflow.demo.mini_benchmark import ATTRIBUTES

    out = workdir / "collection"
    attributes = json.loads((cirr_root / ATTRIBUTES).read_text())
    for stem in sorted(attributes)[:COLLECTION_IMAGES]:
        dst = out / attributes[stem]["shape"] / f"{stem}.png"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(cirr_root / "dev" / f"{stem}.png", dst)
    return out


def demo_config(method: str, workdir: str | Path) -> dict:
    """The run config (as YAML data) of `method`'s demo, with its data and models built under `workdir`."""
    if method not in METHODS:
        from cirflow.schemas.errors import ConfigError

        raise ConfigError(f"no demo for method {method!r}; demos: {', '.join(METHODS)}")
    from cirflow.demo.mini_benchmark import build_mini_benchmark

    workdir = Path(workdir).resolve()
    roots = build_mini_benchmark(workdir / "data")
    models = _models(workdir, method)
    prompts = workdir / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    for name, text in PROMPTS.items():
        (prompts / name).write_text(text)
    p = {k.removesuffix(".txt"): str(prompts / k) for k in PROMPTS}
    # structured_outputs forced on: the in-process constrained decoder is off by default (slow on real
    # vocabularies) but instant on the tiny one, and it is what lets random weights write valid layouts
    mllm = {"backend": "transformers", "model": models["mllm"], "device": "cpu", "dtype": "float32",
            "structured_outputs": True}
    encoder = {"model": f"local-dir:{models['encoder']}", "device": "cpu", "num_workers": 0} if "encoder" in models \
        else None
    store = str(workdir / "store")

    if method.startswith("build_"):
        cfg = {"method": method, "name": f"demo-{method.replace('_', '-')}", "store": store,
               "output_dir": str(workdir / "runs"),
               "collection": {"kind": "folder", "uri": str(_collection(workdir, roots["cirr"])),
                              "meta_class_from": "top_dir"},
               "mllm": mllm, "captions": {"sampling": SHORT, "shard_size": 8},
               "release": {"out_dir": str(workdir / "releases" / method), "name": f"demo-{method.replace('_', '-')}"}}
        if method == "build_mtcir":
            # random-weight CLIP similarities are not CIRR-like: accept every neighbour so groups form
            cfg |= {"encoder": encoder, "pairing": {"group_size": 3, "min_similarity": -1.0, "max_similarity": 1.0,
                                                    "spacing": 0.0, "exclusive": True},
                    # MTCIR's texts are JSON answers, decoded under their schema: a budget that leaves the random
                    # model a few words per text (keys and category take most of it), so texts pass max_words
                    "texts": {"sampling": SHORT | {"max_tokens": 80}, "shard_size": 8}}
        elif method == "build_instructcir":
            cfg |= {"pairing": {"within": "meta_class", "pairs_per_image": 1, "seed": 0},
                    "texts": {"sampling": SHORT, "shard_size": 8}}
        else:
            cfg |= {"texts": {"sampling": SHORT, "target_sampling": SHORT, "shard_size": 8}}
        return cfg

    bench = "circo" if method == "ip_cir" else "cirr"
    cfg = {"method": method, "name": f"demo-{method.replace('_', '-')}", "store": store,
           "output_dir": str(workdir / "runs"),
           "benchmark": {"name": bench, "data_root": str(roots[bench]), "split": "val"},
           "mllm": mllm, "encoder": encoder}
    if method == "refine":
        # small candidate strips and one regeneration level: the tiny vision tower's cost grows with pixels
        return cfg | {"refine": {"out_dir": str(workdir / "refined" / "cirr"), "shard_size": 8, "levels": 1,
                                 "candidate_cell": 64, "validate_sampling": SHORT, "regenerate_sampling": SHORT}}
    cfg["max_failure_rate"] = 1.0  # the tiny MLLM's texts are noise: counted and reported, never fatal
    if method == "pefuse":
        return cfg | {"mode": "i2i", "compose": {"prompt": p["compose"], "shard_size": 8, "sampling": SHORT},
                      "diffusion": {"pipeline": "instruct_pix2pix", "model": models["diffusion"], "device": "cpu",
                                    "resolution": 32, "num_inference_steps": 2, "batch_size": 8,
                                    "conditioning": "composed"}}
    cfg |= {"reference_caption": {"prompt": p["caption"], "sampling": SHORT},
            "rewrite": {"prompt": p["rewrite"], "sampling": SHORT}}
    if method == "ldre":
        cfg["ldre"] = {"n_captions": 2, "caption_sampling": {"temperature": 1.0, "top_p": 0.9, "max_tokens": 6}}
    if method == "ip_cir":
        # layouts decoded under their schema, texts capped at 4 characters: 240 tokens hold two or three
        # instances. Sampled, because a greedy random model writes the same digit four times (a box of zero
        # width); several instances and three attempts, because few random boxes have x1 < x2 and y1 < y2
        cfg["ip_cir"] = {"baseline": "cirevl", "layout_prompt": p["layout"], "max_attempts": 3,
                         "layout_text_chars": 4,
                         "layout_sampling": {"temperature": 1.0, "max_tokens": 240, "seed": 0},
                         "proxies": {"pipeline": "gligen_text_box", "model": models["gligen"], "device": "cpu",
                                     "steps": 2, "resolution": 32, "guidance": 2.0, "num_proxies": 2, "seed": 0}}
    return cfg


def write_demo_config(method: str, workdir: str | Path) -> Path:
    """<workdir>/configs/<method>.yaml: the demo's config as a file a user can read, edit and `cirflow run`."""
    cfg = demo_config(method, workdir)
    path = Path(workdir).resolve() / "configs" / f"{method}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# `cirflow demo --method {method}` wrote this; `cirflow run {path.name}` runs it again\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_method_demo(method: str, workdir: str | Path, as_json: bool = False) -> int:
    """Write `method`'s demo config and run it as `cirflow run` would (prints the method's own report)."""
    from cirflow.cli.run import run_file

    return run_file(str(write_demo_config(method, workdir)), as_json=as_json)


__all__ = ["METHODS", "demo_config", "run_method_demo", "write_demo_config"]
