"""synthesize_images end to end on the mini CIRR benchmark with a tiny InstructPix2Pix: modification and composed
conditioning, failed items, corrupted image files, and kill -9 then resume."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from cirflow.models.tiny_diffusion import build_tiny_instruct_pix2pix
from cirflow.schemas.diffusion import DiffusionConfig
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.tables import TEXTS
from cirflow.storage import ArtifactStore, begin, item_seed
from cirflow.storage.item_files import ItemFiles
from cirflow.tasks.runs import ingest, synthesize_images

N_QUERIES = 30  # mini CIRR


@pytest.fixture(scope="module")
def ip2p(tmp_path_factory) -> Path:
    return build_tiny_instruct_pix2pix(tmp_path_factory.mktemp("tiny-ip2p") / "ip2p")


@pytest.fixture(scope="module")
def shared(ip2p):
    """One loaded pipeline for every in-process run of this module (the stage checks it holds cfg's weights)."""
    from cirflow.models.diffusion import load_pipeline
    from cirflow.tasks.lazy import Lazy

    with Lazy(lambda: load_pipeline(_cfg(ip2p))) as lazy:
        yield lazy


def _cfg(model, **kw) -> DiffusionConfig:
    # 32 x 32 and 2 steps: about 0.05 s an image on one CPU core
    return DiffusionConfig(**({"pipeline": "instruct_pix2pix", "model": str(model), "resolution": 32,
                               "num_inference_steps": 2, "image_guidance_scale": 1.5, "batch_size": 8,
                               "device": "cpu", "conditioning": "modification"} | kw))


def _content(art) -> list[dict]:
    return art.read().drop_columns(["seconds"]).to_pylist()


def _files(art) -> dict[tuple[str, int], bytes]:
    files = ItemFiles(art)
    return {(r["id"], r["sample"]): files.read(r) for r in art.read().to_pylist() if r["status"] == "ok"}


def test_modification_conditioning_failures_corruption_and_grid(tmp_path, mini_bench, ip2p, shared):
    data = tmp_path / "cirr"
    shutil.copytree(mini_bench["cirr"], data)
    store = ArtifactStore(str(tmp_path / "store"))
    bench = ingest.run(store, "cirr", str(data))
    queries = bench.read("queries").to_pylist()
    paths = {r["image_id"]: r["path"] for r in bench.read("images").to_pylist()}
    # one unreadable reference image: its query must become failed rows, the others must not care
    broken = queries[3]
    Path(paths[broken["reference_id"]]).write_bytes(b"not a png")
    n_broken = sum(q["reference_id"] == broken["reference_id"] for q in queries)

    cfg = _cfg(ip2p, num_images=2)
    art = synthesize_images.run(store, bench, cfg, shard_size=8, progress=False, pipeline=shared)
    assert art.report.status == "computed"
    rows = art.read().to_pylist()
    assert [(r["id"], r["sample"]) for r in rows] == [(q["query_id"], n) for q in queries for n in range(2)]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 2 * n_broken and all("reference image unreadable" in r["error"] for r in failed)
    assert all(r["file"] is None for r in failed)
    mods = {q["query_id"]: q["modification"] for q in queries}
    for r in rows:
        assert r["prompt"] == mods[r["id"]] and r["seed"] == item_seed(0, f"{r['id']}:{r['sample']}")
        if r["status"] == "ok":  # PNGs in the images side table, not one file each (storage/item_files.py)
            assert (r["width"], r["height"]) == (32, 32) and r["file"] is None
            assert Image.open(io.BytesIO(ItemFiles(art).read(r))).size == (32, 32)
    assert not Path(art.file_path("images")).exists()
    stats = art.manifest.stats
    assert (stats["images"], stats["failed"], stats["ok"]) == (2 * N_QUERIES, 2 * n_broken, 2 * (N_QUERIES - n_broken))
    assert stats["peak_gpu_memory_bytes"] is None and stats["model_seconds_per_image"] > 0
    assert stats["backend"]["pipeline_class"] == "StableDiffusionInstructPix2PixPipeline"
    assert len({r["sha256"] for r in rows if r["status"] == "ok"}) == 2 * (N_QUERIES - n_broken)
    assert synthesize_images.verify_images(art) == []

    grid = synthesize_images.image_grid(art, bench, tmp_path / "grid.png", n_queries=5)
    assert Image.open(grid).size[1] > Image.open(grid).size[0] > 400

    # a corrupted images shard is detected, and the next run recomputes just that shard (its intact index shard
    # is kept, counted as skipped)
    target = Path(art.file_path("images-00001.parquet"))
    good = target.read_bytes()
    target.write_bytes(good[:-30] + b"0123456789" + good[-20:])
    problems = synthesize_images.verify_images(art)
    shard_ids = {r["id"] for r in rows[16:32] if r["status"] == "ok"}
    assert problems and all("checksum mismatch" in p and p.split("#")[0] in shard_ids for p in problems)
    again = synthesize_images.run(store, bench, cfg, shard_size=8, progress=False, pipeline=shared)
    assert again.key == art.key and again.report.status == "resumed"
    assert (again.report.shards_computed, again.report.shards_skipped) == (1, 4)
    assert target.read_bytes() == good and synthesize_images.verify_images(again) == []
    assert synthesize_images.run(store, bench, cfg, shard_size=8, progress=False, pipeline=shared).report.status == "cached"


def _texts_artifact(store, bench, texts: dict[str, str | None]):
    """A TEXTS artifact in the shape compose_target_text writes (None = a failed composition)."""
    run_ = begin(store, "test_texts", "1", {"texts": texts}, inputs={"bench": bench}, schemas={"data": TEXTS})
    run_.write_table("data", pa.Table.from_pylist([
        {"id": i, "sample": 0, "text": t, "raw": t or "garbage", "status": "ok" if t else "failed",
         "error": None if t else "unparseable", "seed": 0, "seconds": 0.1} for i, t in texts.items()], schema=TEXTS))
    return run_.finish()


def test_composed_conditioning(tmp_path, mini_bench, tiny_models, ip2p, shared):
    from cirflow.schemas.mllm import MLLMConfig, SamplingParams
    from cirflow.tasks.runs import compose_target_text

    store = ArtifactStore(str(tmp_path / "store"))
    bench = ingest.run(store, "cirr", str(mini_bench["cirr"]))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    texts = compose_target_text.run(
        store, bench, MLLMConfig(backend="transformers", model=str(tiny_models["mllm"]), device="cpu"),
        SamplingParams(temperature=0.0, max_tokens=6, seed=3), prompt=str(prompt), shard_size=64, progress=False)
    composed = {r["id"]: (r["text"], r["status"]) for r in texts.read().to_pylist()}

    cfg = _cfg(ip2p, conditioning="composed")
    art = synthesize_images.run(store, bench, cfg, texts=texts, shard_size=16, progress=False, pipeline=shared)
    assert art.manifest.inputs["texts"] == texts.key
    mods = {q["query_id"]: q["modification"] for q in bench.read("queries").to_pylist()}
    n_fallback = 0
    for r in art.read().to_pylist():
        text, status = composed[r["id"]]
        if status == "ok" and text and text.strip():
            assert r["prompt"] == text
        else:
            assert r["prompt"] == mods[r["id"]]
            n_fallback += 1
    assert art.manifest.stats["fallbacks"] == n_fallback and art.manifest.stats["ok"] == N_QUERIES

    # the same seeds with other conditioning text give other images (and another artifact)
    plain = synthesize_images.run(store, bench, _cfg(ip2p), shard_size=16, progress=False, pipeline=shared)
    assert plain.key != art.key
    assert sum(a != b for a, b in zip(_files(plain).values(), _files(art).values())) >= N_QUERIES - n_fallback

    # a failed composition falls back to the modification (counted), or fails the stage when asked
    qids = list(mods)
    handmade = _texts_artifact(store, bench, {q: (None if q == qids[4] else f"a picture of {q}") for q in qids})
    fb = synthesize_images.run(store, bench, cfg, texts=handmade, shard_size=16, progress=False, pipeline=shared)
    assert fb.manifest.stats["fallbacks"] == 1 and fb.manifest.stats["fallback_ids"] == [qids[4]]
    prompts = {r["id"]: r["prompt"] for r in fb.read().to_pylist()}
    assert prompts[qids[4]] == mods[qids[4]] and prompts[qids[5]] == f"a picture of {qids[5]}"
    with pytest.raises(CirflowError, match=qids[4]):
        synthesize_images.run(store, bench, cfg, texts=handmade, fallback="fail", shard_size=16, progress=False,
                              pipeline=shared)
    with pytest.raises(CirflowError):
        synthesize_images.run(store, bench, cfg, shard_size=16, progress=False, pipeline=shared)  # no texts
    with pytest.raises(CirflowError):
        synthesize_images.run(store, bench, _cfg(ip2p), texts=handmade, shard_size=16, progress=False,
                              pipeline=shared)
    with pytest.raises(CirflowError, match="loaded for"):  # a shared backend holding other weights is refused
        synthesize_images.run(store, bench, _cfg(ip2p, dtype="bf16"), shard_size=16, progress=False,
                              pipeline=shared)


SCRIPT = textwrap.dedent("""
    import sys
    from cirflow.schemas.diffusion import DiffusionConfig
    from cirflow.storage import ArtifactStore
    from cirflow.tasks.runs import ingest, synthesize_images
    store_root, data_root, cfg_json = sys.argv[1:4]
    store = ArtifactStore(store_root)
    bench = ingest.run(store, "cirr", data_root)
    synthesize_images.run(store, bench, DiffusionConfig.model_validate_json(cfg_json), shard_size=2, progress=False)
""")


@pytest.mark.slow
def test_kill9_then_resume_keeps_committed_images_and_equals_uninterrupted(tmp_path, mini_bench, ip2p, shared):
    cfg = _cfg(ip2p, batch_size=2)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(killed), str(mini_bench["cirr"]), cfg.model_dump_json()],
                            env=os.environ | {"HF_HUB_OFFLINE": "1"})
    commits: list[Path] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        commits = list(killed.glob("synthesize_images/*/_commits/data-*.json"))
        if len(commits) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the synthesis finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(commits) < 15
    art_dir = commits[0].parent.parent
    assert not (art_dir / "_manifest.json").exists()
    # the images shards of committed shards: remember their bytes and mtimes
    committed_files = [c.name.removesuffix(".json").replace("data-", "images-") for c in commits]
    before = {f: ((art_dir / f).read_bytes(), (art_dir / f).stat().st_mtime_ns) for f in committed_files}
    assert len(before) >= 3

    store = ArtifactStore(str(killed))
    bench = ingest.run(store, "cirr", str(mini_bench["cirr"]))
    resumed = synthesize_images.run(store, bench, cfg, shard_size=2, progress=False, pipeline=shared)
    assert resumed.report.status == "resumed" and resumed.report.shards_skipped >= 3
    # every shard not skipped is computed as two commits: its images side table and its index
    assert resumed.report.shards_computed == 2 * (15 - resumed.report.shards_skipped)
    for f, (data, mtime) in before.items():
        assert (art_dir / f).read_bytes() == data and (art_dir / f).stat().st_mtime_ns == mtime, f

    clean_store = ArtifactStore(str(tmp_path / "clean"))
    clean = synthesize_images.run(clean_store, ingest.run(clean_store, "cirr", str(mini_bench["cirr"])), cfg,
                                  shard_size=2, progress=False, pipeline=shared)
    assert clean.report.status == "computed" and clean.key == resumed.key
    assert _content(resumed) == _content(clean)
    assert _files(resumed) == _files(clean) and len(_files(clean)) == N_QUERIES
    assert synthesize_images.verify_images(resumed) == []
