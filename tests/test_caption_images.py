"""caption_images on the mini benchmark and a GeneCIS slice with the tiny random Qwen2.5-VL: rows per image and
sample, per-sample seeds, caching, `which` selection, prompt selection, GeneCIS crops."""

from __future__ import annotations

from collections import Counter

import pytest

from cirflow.models.mllm import load_mllm
from cirflow.prompts import load_template
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.storage import ArtifactStore, item_seed
from cirflow.tasks.runs import caption_images, ingest
from cirflow.tasks.benchmarks.placeholders import make_slice
from cirflow.tasks.lazy import Lazy

SAMPLED = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=4, seed=3)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model's many small generate() calls run up to 15x faster on one thread than on two contended
    ones (shared CI / dev machines); restored afterwards so other modules keep their setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cfg(tiny_models):
    return MLLMConfig(backend="transformers", model=str(tiny_models["mllm"]), device="cpu")


@pytest.fixture(scope="module")
def model(cfg):
    with Lazy(lambda: load_mllm(cfg)) as lazy:
        yield lazy


@pytest.fixture(scope="module")
def cirr(tmp_path_factory, mini_bench):
    store = ArtifactStore(str(tmp_path_factory.mktemp("caption-store")))
    return store, ingest.run(store, "cirr", str(mini_bench["cirr"]))


def test_gallery_samples_seeds_and_cache(cirr, cfg, model):
    store, bench = cirr
    art = caption_images.run(store, bench, cfg, SAMPLED, n_samples=3, shard_size=50, mllm=model, progress=False)
    assert art.report.status == "computed"
    images = bench.read("images").to_pylist()
    gallery = [r["image_id"] for r in images if r["in_gallery"]]
    rows = art.read().to_pylist()
    assert Counter(r["id"] for r in rows) == {g: 3 for g in gallery}
    assert sorted({r["sample"] for r in rows}) == [0, 1, 2]
    for r in rows:
        assert r["seed"] == item_seed(SAMPLED.seed, f"{r['id']}:{r['sample']}")
        assert r["status"] == "ok" and r["text"] and r["text"] == r["raw"].strip()
    assert len({r["seed"] for r in rows}) == len(rows)
    # sampled under distinct seeds: the three captions of an image are not all copies of each other
    by_image = {}
    for r in rows:
        by_image.setdefault(r["id"], set()).add(r["text"])
    assert sum(len(v) > 1 for v in by_image.values()) > len(gallery) // 2
    st = art.manifest.stats
    assert (st["rows"], st["ok"], st["failed"], st["images"], st["n_samples"]) == (len(rows), len(rows), 0, len(gallery), 3)
    assert art.manifest.params["which"] == "gallery"

    again = caption_images.run(store, bench, cfg, SAMPLED, n_samples=3, shard_size=7, mllm=model, progress=False)
    assert again.report.status == "cached" and again.key == art.key  # shard size is not part of the key
    # a caption depends only on (image, sample) through its seed, never on the shard it ran in: a lone request
    # with a row's seed reproduces that row
    from cirflow.models.mllm.protocol import ChatRequest

    paths = {r["image_id"]: r["path"] for r in images}
    probe = [rows[1], rows[-1]]
    again = model.get().generate([ChatRequest(id=r["id"], prompt=art.manifest.params["template"],
                                              images=(paths[r["id"]],),
                                              sampling=SAMPLED.model_copy(update={"seed": r["seed"]}))
                                  for r in probe], progress=False)
    assert [a.text for a in again] == [r["raw"] for r in probe]


def test_which_selects_ids_and_changes_key(cirr, cfg, model):
    store, bench = cirr
    greedy = SamplingParams(max_tokens=2)
    queries = bench.read("queries").to_pylist()
    images = bench.read("images").to_pylist()
    refs = caption_images.run(store, bench, cfg, greedy, which="references", mllm=model, progress=False)
    assert refs.read().column("id").to_pylist() == [r["image_id"] for r in images
                                                    if r["image_id"] in {q["reference_id"] for q in queries}]
    assert set(refs.read().column("sample").to_pylist()) == {0}
    everything = caption_images.run(store, bench, cfg, greedy, which="all", mllm=model, progress=False)
    assert everything.read().column("id").to_pylist() == [r["image_id"] for r in images]
    gallery = caption_images.run(store, bench, cfg, greedy, which="gallery", mllm=model, progress=False)
    assert gallery.read().column("id").to_pylist() == [r["image_id"] for r in images if r["in_gallery"]]
    assert len({refs.key, everything.key, gallery.key}) == 3
    # greedy: the same image gives the same caption whichever selection asked for it
    texts = dict(zip(everything.read().column("id").to_pylist(), everything.read().column("text").to_pylist()))
    assert all(texts[i] == t for i, t in zip(refs.read().column("id").to_pylist(), refs.read().column("text").to_pylist()))


def test_prompt_selection(cirr, cfg, model, tmp_path):
    store, bench = cirr
    greedy = SamplingParams(max_tokens=2)
    default = caption_images.run(store, bench, cfg, greedy, which="references", mllm=model, progress=False)
    detailed = caption_images.run(store, bench, cfg, greedy, which="references", prompt="detailed", mllm=model,
                                  progress=False)
    assert default.manifest.params["template"] == load_template("caption_images", "cirr")[0]
    assert detailed.manifest.params["template"] == load_template("caption_images", "detailed")[0]
    assert detailed.manifest.runtime["template_source"] == "cirflow.prompts/caption_images.detailed.txt"
    own = tmp_path / "mine.txt"
    own.write_text("Caption this.")
    custom = caption_images.run(store, bench, cfg, greedy, which="references", prompt=str(own), mllm=model,
                                progress=False)
    assert custom.manifest.params["template"] == "Caption this."
    assert len({default.key, detailed.key, custom.key}) == 3
    with pytest.raises(ConfigError):
        caption_images.run(store, bench, cfg, greedy, prompt="no_such_prompt", mllm=model, progress=False)
    with pytest.raises(ConfigError):  # n identical greedy captions would be silently useless for LDRE
        caption_images.run(store, bench, cfg, greedy, n_samples=2, mllm=model, progress=False)


@pytest.mark.parametrize("benchmark", ["cirr", "circo", "fashioniq", "genecis", "detailed"])
def test_builtin_prompts_exist(benchmark):
    text, _ = load_template("caption_images", benchmark)
    assert len(text.split()) > 20 and "{" not in text


def test_genecis_all_with_crops(tmp_path, shared_benchmarks, cfg, model):
    if not (shared_benchmarks / "genecis" / "genecis" / "focus_attribute.json").exists():
        pytest.skip("shared GeneCIS files not present")
    root = make_slice("genecis", shared_benchmarks / "genecis", tmp_path / "genecis", n_queries=3, task="focus_attribute")
    store = ArtifactStore(str(tmp_path / "store"))
    bench = ingest.run(store, "genecis", str(root), task="focus_attribute")
    images = bench.read("images").to_pylist()
    assert all(r["crop_box"] for r in images)  # attribute items: every one is a crop
    queries = bench.read("queries").to_pylist()
    # GeneCIS has no global gallery: "gallery" means the per-query candidates, "all" adds the references
    candidates = {c for q in queries for c in q["candidate_ids"]}
    assert not any(r["in_gallery"] for r in images)
    assert {r["image_id"] for r in caption_images.select_images(bench, "gallery")} == candidates
    assert {r["image_id"] for r in caption_images.select_images(bench, "references")} == {q["reference_id"] for q in queries}

    # a short prompt: the tiny random model's answer then depends visibly on the pixels it is given
    prompt = tmp_path / "short.txt"
    prompt.write_text("Describe.")
    greedy = SamplingParams(max_tokens=8)
    everything = caption_images.run(store, bench, cfg, greedy, which="all", prompt=str(prompt), shard_size=16,
                                    mllm=model, progress=False)
    rows = everything.read().to_pylist()
    assert [r["id"] for r in rows] == [r["image_id"] for r in images]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    assert everything.manifest.stats["failed"] == 0 and everything.manifest.stats["images"] == len(images)

    # the model saw the benchmark's crop, not the whole photo: each row equals a request on the crop itself
    from cirflow.models.images import load_image
    from cirflow.models.mllm.protocol import ChatRequest

    differs = 0
    for n, (row, item) in enumerate(list(zip(rows, images))[:4]):
        crop = tmp_path / f"crop{n}.png"
        load_image(item["path"], item["crop_box"]).save(crop)
        on_crop, on_whole = (r.text for r in model.get().generate(
            [ChatRequest(id="c", prompt="Describe.", images=(str(crop),), sampling=greedy),
             ChatRequest(id="w", prompt="Describe.", images=(item["path"],), sampling=greedy)], progress=False))
        assert row["raw"] == on_crop
        differs += on_crop != on_whole
    assert differs > 0  # otherwise this test could not tell a crop from the whole photo
