"""synthesize_proxies with tiny random GLIGEN pipelines (cirflow.models.tiny_diffusion): N images per query,
seeds per image (pixel-identical on rerun and across batch/shard sizes), failed layouts kept as failed rows,
a cached rerun computes nothing; the text-image pipeline really receives the reference image."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from cirflow.models.gligen import call_kwargs, generate, load_gligen
from cirflow.models.tiny_diffusion import build_tiny_gligen, build_tiny_gligen_text_image
from cirflow.schemas.layout import Layout, ProxyConfig
from cirflow.storage import ArtifactStore, begin, item_seed
from cirflow.storage.item_files import ItemFiles
from cirflow.tasks.runs import ingest
from cirflow.tasks.ip_cir import synthesize_proxies
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.ip_cir.plan_layout import LAYOUTS

LAYOUT = Layout.model_validate({"scene": "a dog and a ball on grass", "instances": [
    {"label": "dog", "category": "dog", "description": "a brown dog", "box": [0.1, 0.2, 0.5, 0.9],
     "reference": "image"},
    {"label": "ball", "category": "sports ball", "description": "a red ball", "box": [0.6, 0.6, 0.8, 0.8],
     "reference": "text"}]})  # fmt: skip
TEXT_ONLY = Layout.model_validate({"scene": "a red bus", "instances": [
    {"label": "bus", "category": "bus", "description": "a red bus", "box": [0.0, 0.3, 1.0, 0.9], "reference": "text"}]})


@pytest.fixture(scope="module")
def tiny_gligen(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gligen")
    return {"gligen_text_box": str(build_tiny_gligen(root / "tb")),
            "gligen_text_image": str(build_tiny_gligen_text_image(root / "ti"))}


def _cfg(paths, kind="gligen_text_box", **kw) -> ProxyConfig:
    base = dict(pipeline=kind, model=paths[kind], device="cpu", steps=2, resolution=32, guidance=2.0,
                num_proxies=3, seed=11)
    return ProxyConfig(**(base | kw))


def _layouts(store, bench):
    """A hand-written plan_layout-like artifact: two good layouts and one failed query."""
    q = [r["query_id"] for r in bench.read("queries").to_pylist()][:3]
    rows = [{"id": q[0], "status": "ok", "attempts": 1, "seed": 1, "scene": LAYOUT.scene,
             "layout_json": LAYOUT.model_dump_json(exclude_none=True), "dropped": [], "raw": "{}", "error": None,
             "seconds": 0.1},
            {"id": q[1], "status": "failed", "attempts": 3, "seed": 2, "scene": None, "layout_json": None,
             "dropped": [], "raw": "nonsense", "error": "attempt 3 (seed 2): invalid JSON", "seconds": 0.1},
            {"id": q[2], "status": "ok", "attempts": 1, "seed": 3, "scene": TEXT_ONLY.scene,
             "layout_json": TEXT_ONLY.model_dump_json(exclude_none=True), "dropped": [], "raw": "{}",
             "error": None, "seconds": 0.1}]
    run_ = begin(store, "test_layouts", "1", {"q": q}, inputs={"bench": bench}, schemas={"data": LAYOUTS})
    run_.write_table("data", pa.Table.from_pylist(rows, schema=LAYOUTS))
    return run_.finish(), q


# `_layouts` fails a query on purpose (layout failed → its proxies are failed rows): no failure threshold
LAYOUT_FAILURES_EXPECTED = 1.0


def _pixels(art) -> dict:
    return {(r["id"], r["sample"]): np.asarray(Image.open(io.BytesIO(ItemFiles(art).read(r))))
            for r in art.read().to_pylist() if r["status"] == "ok"}


def test_text_box_proxies(tmp_path, mini_bench, tiny_gligen):
    store = ArtifactStore(str(tmp_path / "a"))
    bench = ingest.run(store, "circo", str(mini_bench["circo"]))
    layouts, q = _layouts(store, bench)
    cfg = _cfg(tiny_gligen)
    pipe = Lazy(lambda: load_gligen(cfg))
    art = synthesize_proxies.run(store, bench, layouts, cfg, shard_size=2, pipeline=pipe, progress=False, max_failure_rate=LAYOUT_FAILURES_EXPECTED)
    rows = art.read().to_pylist()
    assert [(r["id"], r["sample"]) for r in rows] == [(i, n) for i in q for n in range(3)]
    assert [r["seed"] for r in rows] == [item_seed(11, f"{i}:{n}") for i in q for n in range(3)]
    failed = [r for r in rows if r["status"] != "ok"]
    assert {r["id"] for r in failed} == {q[1]} and len(failed) == 3
    assert all(r["error"].startswith("layout failed: attempt 3") and r["file"] is None for r in failed)
    st = art.manifest.stats
    assert (st["images"], st["ok"], st["failed"], st["queries_layout_failed"]) == (9, 6, 3, 1)
    pix = _pixels(art)
    assert len(pix) == 6 and all(p.shape == (32, 32, 3) for p in pix.values())
    assert not np.array_equal(pix[(q[0], 0)], pix[(q[0], 1)])  # different seeds, different images
    ok0 = next(r for r in rows if r["id"] == q[0])
    assert '"a brown dog"' in ok0["prompt"] and LAYOUT.scene in ok0["prompt"]
    assert (ok0["width"], ok0["height"]) == (32, 32)

    # cached rerun: nothing computed, the pipeline is not even loaded
    fresh = Lazy(lambda: load_gligen(cfg))
    again = synthesize_proxies.run(store, bench, layouts, cfg, shard_size=2, pipeline=fresh, progress=False, max_failure_rate=LAYOUT_FAILURES_EXPECTED)
    assert again.report.status == "cached" and again.report.shards_computed == 0 and not fresh.loaded

    # another store, another shard size: the very same pixels (per-image CPU generators)
    store_b = ArtifactStore(str(tmp_path / "b"))
    bench_b = ingest.run(store_b, "circo", str(mini_bench["circo"]))
    layouts_b, _ = _layouts(store_b, bench_b)
    other = synthesize_proxies.run(store_b, bench_b, layouts_b, cfg, shard_size=1, pipeline=pipe, progress=False, max_failure_rate=LAYOUT_FAILURES_EXPECTED)
    pix_b = _pixels(other)
    assert pix_b.keys() == pix.keys() and all(np.array_equal(pix[k], pix_b[k]) for k in pix)
    # images per call (batch_size) is a runtime knob: same key, same noise; CPU kernels chosen per batch shape
    # may move a few pixels by one level (float rounding), never more
    store_c = ArtifactStore(str(tmp_path / "c"))
    bench_c = ingest.run(store_c, "circo", str(mini_bench["circo"]))
    layouts_c, _ = _layouts(store_c, bench_c)
    one = synthesize_proxies.run(store_c, bench_c, layouts_c, cfg, batch_size=1, pipeline=pipe, progress=False, max_failure_rate=LAYOUT_FAILURES_EXPECTED)
    assert one.key == other.key
    pix_c = _pixels(one)
    diff = [np.abs(pix[k].astype(int) - pix_c[k]) for k in pix]
    assert max(int(d.max()) for d in diff) <= 1 and sum(int((d > 0).sum()) for d in diff) <= 0.001 * 6 * 32 * 32 * 3

    # a different seed changes the images (and the key)
    reseeded = synthesize_proxies.run(store_b, bench_b, layouts_b, cfg.model_copy(update={"seed": 12}),
                                      shard_size=3, pipeline=pipe, progress=False, max_failure_rate=LAYOUT_FAILURES_EXPECTED)
    assert reseeded.key != other.key
    assert not np.array_equal(_pixels(reseeded)[(q[0], 0)], pix[(q[0], 0)])


def test_text_image_pipeline_grounds_image_instances_with_the_reference(tmp_path, mini_bench, tiny_gligen):
    ref_a = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    ref_b = Image.fromarray(np.random.default_rng(1).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    kw = call_kwargs("gligen_text_image", LAYOUT, ref_a)
    assert kw["gligen_phrases"] == ["a brown dog", "a red ball"]
    assert kw["gligen_images"][0] is ref_a and kw["gligen_images"][1] is None
    assert kw["input_phrases_mask"] == [1, 1] and kw["input_images_mask"] == [1, 0]
    crop = call_kwargs("gligen_text_image", LAYOUT, ref_a, "box_crop")["gligen_images"][0]
    assert crop.size == (32, 34)  # 0.1..0.5 of 80 wide, 0.2..0.9 of 48 high
    assert set(call_kwargs("gligen_text_box", LAYOUT)) == {"gligen_phrases", "gligen_boxes"}
    with pytest.raises(ValueError, match="reference image"):
        call_kwargs("gligen_text_image", LAYOUT, None)

    cfg = _cfg(tiny_gligen, "gligen_text_image", num_proxies=2)
    pipe = load_gligen(cfg)
    # Random-init GLIGEN gates are 0 (tanh(0) = 0: grounding tokens have no effect); open them so that the
    # tiny model's output depends on what is grounded.
    from diffusers.models.attention import GatedSelfAttentionDense

    gates = [m for m in pipe.unet.modules() if isinstance(m, GatedSelfAttentionDense)]
    assert gates
    for m in gates:
        m.alpha_attn.data.fill_(1.0)
        m.alpha_dense.data.fill_(1.0)
    a = generate(pipe, cfg, LAYOUT, [5, 6], ref_a)
    again = generate(pipe, cfg, LAYOUT, [5, 6], ref_a)
    alone = generate(pipe, cfg, LAYOUT, [6], ref_a)
    b = generate(pipe, cfg, LAYOUT, [5, 6], ref_b)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, again))
    assert np.abs(np.asarray(a[1]).astype(int) - np.asarray(alone[0])).max() <= 1  # batch shape: rounding only
    assert not np.array_equal(np.asarray(a[0]), np.asarray(b[0]))  # the reference picture reaches the model

    store = ArtifactStore(str(tmp_path / "s"))
    bench = ingest.run(store, "circo", str(mini_bench["circo"]))
    layouts, q = _layouts(store, bench)
    art = synthesize_proxies.run(store, bench, layouts, cfg, pipeline=Lazy(lambda: pipe), progress=False, max_failure_rate=LAYOUT_FAILURES_EXPECTED)
    st = art.manifest.stats
    assert (st["images"], st["ok"], st["failed"]) == (6, 4, 2)
    assert len(_pixels(art)) == 4
