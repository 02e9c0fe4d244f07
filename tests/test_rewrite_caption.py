"""rewrite_caption: the answer parser on crafted answers (each path and its recorded reason), the built-in
templates, and the stage end to end on the mini benchmark with the tiny random model as a text-only LLM."""

from __future__ import annotations

from collections import Counter

import pytest

from cirflow.models.mllm import load_mllm
from cirflow.prompts import load_template, render
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.storage import ArtifactStore, item_seed
from cirflow.tasks.runs import caption_images, ingest, rewrite_caption
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.runs.rewrite_caption import (FAILED, MARKER, MARKER_NEXT_LINE, MODIFICATION, PARSE_PATHS,
                                                WHOLE_ANSWER, parse_edited_description, parse_path)

MOD = "make the dog black"


@pytest.mark.parametrize("answer, text, path, reason", [
    ("Edited Description: a black dog on the grass", "a black dog on the grass", MARKER, None),
    # chatty preamble, marker on a later line, casing and quotes of the model's own
    ("Sure, here is the edit.\nedited description: \"a black dog on the grass\"\nHope this helps!",
     "a black dog on the grass", MARKER, None),
    # only the first marker counts; the model continuing the few-shot pattern is cut off
    ("Edited Description: a black dog Image Content: a cat\nInstruction: x\nEdited Description: a white cat",
     "a black dog", MARKER, None),
    ("Edited Description:\n\n  a black dog lying on a sofa\nmore text", "a black dog lying on a sofa",
     MARKER_NEXT_LINE, None),
    ("Edited Description:\nImage Content: a cat", MOD, MODIFICATION, "nothing after the 'Edited Description:' marker"),
    ("A black dog running\non a beach.", "A black dog running on a beach.", WHOLE_ANSWER,
     "no 'Edited Description:' marker"),
    ("", MOD, MODIFICATION, "empty answer"),
    ("   \n\t", MOD, MODIFICATION, "empty answer"),
    (None, MOD, MODIFICATION, "empty answer"),
    ("I'm sorry, but I cannot help with editing images.", MOD, MODIFICATION, "refusal"),
    ("As an AI language model, I can't see images.", MOD, MODIFICATION, "refusal"),
    ("?? 42 !", MOD, MODIFICATION, "answer does not read like a description"),
])
def test_parse_paths(answer, text, path, reason):
    assert parse_edited_description(answer, MOD) == (text, path, reason)


def test_parse_path_roundtrip():
    assert parse_path("ok", None) == MARKER
    assert parse_path("ok", "parse:marker_next_line") == MARKER_NEXT_LINE
    assert parse_path("ok", "parse:modification: refusal") == MODIFICATION
    assert parse_path("failed", "generation failed: boom") == FAILED


@pytest.mark.parametrize("benchmark", ["cirr", "circo", "fashioniq", "genecis"])
def test_builtin_templates(benchmark):
    template, _ = load_template("rewrite_caption", benchmark)
    prompt = render(template, caption="a red bus on a street", modification="make it blue")
    # ends with the I/O markers, the query filled in, the answer left to the model
    assert prompt.endswith("Image Content: a red bus on a street\nInstruction: make it blue\nEdited Description:")
    assert "{" not in prompt
    # role statement first, then examples (or, for CIRCO, the list of aspects) in the same I/O format
    assert prompt.count("Edited Description:") >= (3 if benchmark == "circo" else 8)
    if benchmark == "circo":
        assert sum(f"\n{i}. " in prompt for i in range(1, 10)) == 9


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """See test_caption_images: one thread avoids thread contention in the many tiny generate() calls."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mini_bench, tiny_models):
    cfg = MLLMConfig(backend="transformers", model=str(tiny_models["mllm"]), device="cpu")
    store = ArtifactStore(str(tmp_path_factory.mktemp("rewrite-store")))
    bench = ingest.run(store, "cirr", str(mini_bench["cirr"]))
    with Lazy(lambda: load_mllm(cfg)) as model:
        yield store, bench, cfg, model


def _check_rows(art, bench, answers_expected: int):
    """Every ok row's text is what the parser makes of its raw answer; the stats count every row once."""
    mods = dict(zip(bench.read("queries").column("query_id").to_pylist(),
                    bench.read("queries").column("modification").to_pylist()))
    rows = art.read().to_pylist()
    assert len(rows) == answers_expected
    paths = Counter()
    for r in rows:
        p = parse_path(r["status"], r["error"])
        paths[p] += 1
        if r["status"] == "ok":
            text, path, reason = parse_edited_description(r["raw"], mods[r["id"]])
            assert (r["text"], p) == (text, path)
            assert r["error"] == (None if path == MARKER else f"parse:{path}" + (f": {reason}" if reason else ""))
    st = art.manifest.stats
    assert st["parse"] == {p: paths[p] for p in (*PARSE_PATHS, FAILED)}
    assert sum(st["parse"].values()) == st["rows"] == len(rows)
    assert st["fallbacks"] == paths[WHOLE_ANSWER] + paths[MODIFICATION]
    assert st["failed"] == paths[FAILED] and st["ok"] == len(rows) - paths[FAILED]
    return rows


def test_cirevl_end_to_end(setup):
    store, bench, cfg, model = setup
    greedy = SamplingParams(max_tokens=6)
    caps = caption_images.run(store, bench, cfg, greedy, which="references", prompt="detailed", mllm=model,
                              progress=False)
    art = rewrite_caption.run(store, bench, caps, cfg, greedy, shard_size=8, mllm=model, progress=False)
    queries = bench.read("queries").to_pylist()
    rows = _check_rows(art, bench, len(queries))
    assert [r["id"] for r in rows] == [q["query_id"] for q in queries] and {r["sample"] for r in rows} == {0}
    assert all(r["seed"] == item_seed(0, f"{r['id']}:0") for r in rows)
    # the tiny model writes random text and does not follow the format: fallbacks happen and are counted
    st = art.manifest.stats
    assert st["failed"] == 0 and st["fallbacks"] > len(rows) // 2
    assert st["fallbacks"] + st["parse"][MARKER] + st["parse"][MARKER_NEXT_LINE] == len(rows)
    assert len(st["fallback_examples"]) == min(20, st["fallbacks"])
    # the request really is text-only and carries the caption and the modification: the same prompt, sent by
    # hand without an image, gives the same answer
    from cirflow.models.mllm.protocol import ChatRequest

    cap_of = dict(zip(caps.read().column("id").to_pylist(), caps.read().column("text").to_pylist()))
    q = queries[0]
    tmpl = art.manifest.params["template"]
    by_hand = model.get().generate([ChatRequest(
        id="x", prompt=render(tmpl, caption=cap_of[q["reference_id"]], modification=q["modification"]),
        sampling=greedy.model_copy(update={"seed": rows[0]["seed"]}))], progress=False)[0]
    assert by_hand.status == "ok" and by_hand.text == rows[0]["raw"]
    again = rewrite_caption.run(store, bench, caps, cfg, greedy, shard_size=3, mllm=model, progress=False)
    assert again.report.status == "cached" and again.key == art.key


def test_ldre_one_edit_per_caption_sample(setup):
    store, bench, cfg, model = setup
    sampled = SamplingParams(temperature=1.0, max_tokens=4, seed=5)
    caps = caption_images.run(store, bench, cfg, sampled, which="references", n_samples=2, prompt="detailed",
                              mllm=model, progress=False)
    queries = bench.read("queries").to_pylist()
    ldre = rewrite_caption.run(store, bench, caps, cfg, sampled, style="ldre", shard_size=16, mllm=model, progress=False)
    rows = _check_rows(ldre, bench, 2 * len(queries))
    assert Counter((r["id"], r["sample"]) for r in rows) == {(q["query_id"], s): 1 for q in queries for s in (0, 1)}
    assert len({r["seed"] for r in rows}) == len(rows)
    cirevl = rewrite_caption.run(store, bench, caps, cfg, sampled, style="cirevl", mllm=model, progress=False)
    assert cirevl.key != ldre.key and cirevl.manifest.stats["rows"] == len(queries)


def test_failed_captions_missing_references_bad_template(setup, tmp_path, mini_bench):
    import shutil

    store, bench, cfg, model = setup
    greedy = SamplingParams(max_tokens=4)
    # a reference whose caption request failed (unreadable image) gives failed rewrite rows: counted, not dropped
    shutil.copytree(mini_bench["cirr"], tmp_path / "cirr")
    other = ArtifactStore(str(tmp_path / "store"))
    b2 = ingest.run(other, "cirr", str(tmp_path / "cirr"), check_images=False)
    queries = b2.read("queries").to_pylist()
    bad_ref = queries[0]["reference_id"]
    path = next(r["path"] for r in b2.read("images").to_pylist() if r["image_id"] == bad_ref)
    with open(path, "wb") as f:
        f.write(b"not an image")
    caps = caption_images.run(other, b2, cfg, greedy, which="references", mllm=model, progress=False)
    assert caps.manifest.stats["failed"] == 1
    art = rewrite_caption.run(other, b2, caps, cfg, greedy, mllm=model, progress=False)
    rows = _check_rows(art, b2, len(queries))
    n_bad = sum(q["reference_id"] == bad_ref for q in queries)
    failed = [r for r in rows if r["status"] == "failed"]
    assert n_bad >= 1 and len(failed) == n_bad == art.manifest.stats["failed"]
    assert all(r["id"] in {q["query_id"] for q in queries if q["reference_id"] == bad_ref} for r in failed)
    assert all(r["error"].startswith("reference caption failed") and r["text"] is None for r in failed)

    # captions that do not cover the queries' references (here: another benchmark's) stop before any request
    circo = ingest.run(other, "circo", str(mini_bench["circo"]))
    circo_caps = caption_images.run(other, circo, cfg, greedy, which="references", mllm=model, progress=False)
    with pytest.raises(ConfigError, match="no caption for"):
        rewrite_caption.run(store, bench, circo_caps, cfg, greedy, mllm=model, progress=False)

    # a template without the {modification} placeholder would silently drop the instruction
    bad = tmp_path / "bad.txt"
    bad.write_text("Image Content: {caption}\nEdited Description:")
    with pytest.raises(ConfigError, match="modification"):
        rewrite_caption.run(store, bench, caps, cfg, greedy, prompt=str(bad), mllm=model, progress=False)
