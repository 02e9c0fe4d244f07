"""CIReVL on GeneCIS focus_attribute (issue 12 item 6; metrics-and-methods B.3): the query is
norm((norm(text query) + norm(reference image)) / 2), as CIReVL's main.py does for that task only; other tasks
and `genecis_focus_attribute_mean: false` keep the rewrite's text feature. Real stages on a slice of the real
GeneCIS files with placeholder images, a tiny random CLIP, and a real HTTP server with canned answers standing
in for the captioner and the LLM."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cirflow.flows.cirevl import CirevlConfig, text_query
from cirflow.flows.models import ModelPool
from cirflow.flows.runs import add_models, ingest
from cirflow.storage import ArtifactStore
from cirflow.tasks.benchmarks.placeholders import make_slice

sys.path.insert(0, str(Path(__file__).parent))
from canned_server import CannedServer, completion  # noqa: E402


def _answer(body: dict):
    user = body["messages"][-1]["content"]
    if isinstance(user, list) and any(p.get("type") == "image_url" for p in user):
        return completion("an object with some attribute")
    return completion("Edited Description: the same object in another colour")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_benchmarks, tiny_models):
    src = shared_benchmarks / "genecis"
    if not (src / "genecis" / "focus_attribute.json").exists():
        pytest.skip("GeneCIS slices not present")
    root = tmp_path_factory.mktemp("genecis-mean")
    data = make_slice("genecis", src, root / "data", n_queries=4, task="focus_attribute")
    data_ca = make_slice("genecis", src, root / "data_ca", n_queries=4, task="change_attribute")
    srv = CannedServer(_answer)
    yield root, data, data_ca, srv, tiny_models
    srv.close()


def _cfg(root: Path, data: Path, task: str, srv, tiny_models, **kw) -> CirevlConfig:
    (root / "cap.txt").write_text("Describe this image.")
    (root / "rw.txt").write_text("Image Content: {caption}\nInstruction: {modification}\nEdited Description:")
    llm = {"backend": "http", "api_flavor": "vllm", "base_url": srv.url, "model": "m", "retries": 3,
           "backoff_s": 0.05}
    return CirevlConfig.model_validate({
        "store": str(root / "store"), "max_failure_rate": 1.0, "mllm": llm, "llm": llm,
        "benchmark": {"name": "genecis", "data_root": str(data), "tasks": [task]},
        "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
        "reference_caption": {"prompt": str(root / "cap.txt")}, "rewrite": {"prompt": str(root / "rw.txt")}} | kw)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _query(cfg: CirevlConfig):
    store = ArtifactStore(cfg.store)
    with ModelPool() as pool:
        add_models(pool, cfg)
        bench = ingest(store, cfg, cfg.benchmark.groups()[0])
        return store, bench, text_query(store, cfg, bench, pool, progress=False)


def test_focus_attribute_query_is_mean_of_text_and_reference(setup):
    root, data, data_ca, srv, tiny = setup
    assert CirevlConfig.model_fields["genecis_focus_attribute_mean"].default is True
    store, bench, b = _query(_cfg(root, data, "focus_attribute", srv, tiny))
    assert b.query.stage == "reference_mean" and b.query in b.artifacts
    text = b.artifacts[4]  # the rewrite's text query features, kept for the summary
    assert text.stage == "embed_texts"
    qids, q = b.query.embeddings()
    tids, t = text.embeddings()
    gids, g = b.gallery.embeddings()
    ref_of = {r["query_id"]: r["reference_id"] for r in bench.read("queries").to_pylist()}
    row_t, row_g = {i: k for k, i in enumerate(tids)}, {i: k for k, i in enumerate(gids)}
    want = np.stack([_unit((_unit(t[row_t[i]]) + _unit(g[row_g[ref_of[i]]])) / 2) for i in qids])
    np.testing.assert_allclose(q, want, atol=1e-6)
    assert not np.allclose(q, t[[row_t[i] for i in qids]], atol=1e-3)  # the reference image changed the query
    assert b.query.manifest.stats["queries_without_reference"] == 0

    # off: the rewrite's text feature is the query, the stages before are shared
    _, _, off = _query(_cfg(root, data, "focus_attribute", srv, tiny, genecis_focus_attribute_mean=False))
    assert off.query.key == text.key and off.query.stage == "embed_texts"


def test_other_genecis_tasks_keep_the_text_query(setup):
    root, data, data_ca, srv, tiny = setup
    _, _, b = _query(_cfg(root, data_ca, "change_attribute", srv, tiny))
    assert b.query.stage == "embed_texts" and not any(a.stage == "reference_mean" for a in b.artifacts)
