"""plan_layout end to end: against the tiny random Qwen (never valid JSON: every query fails after its
attempts, raw answers kept, one fresh seed per attempt) and against a stdlib HTTP server standing in for an
external LLM with canned answers (the success, salvage and retry paths; request fields; captions; cache)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from cirflow.schemas.layout import load_layout
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.tables import TEXTS
from cirflow.storage import ArtifactStore, begin, item_seed
from cirflow.tasks.runs import ingest
from cirflow.tasks.ip_cir import plan_layout

sys.path.insert(0, str(Path(__file__).parent))
from canned_server import CannedServer, completion  # noqa: E402

SEED = 7


def _layout(label: str, *, bad: int = 0) -> dict:
    good = [{"label": label, "category": "dog", "description": f"a {label}", "box": [0.1, 0.2, 0.5, 0.9],
             "reference": "image"},
            {"label": "ball", "category": "sports ball", "description": "a red ball", "box": [0.6, 0.6, 0.7, 0.7],
             "reference": "text"}]
    broken = [{"label": "cat", "category": "cat", "description": "a cat", "box": [0.8, 0.1, 0.2, 0.5],
               "reference": "text"}] * bad
    return {"scene": f"a scene with a {label}", "instances": good + broken}


def test_tiny_qwen_fails_every_query_after_max_attempts(tmp_path, mini_bench, tiny_models):
    store = ArtifactStore(str(tmp_path / "store"))
    bench = ingest.run(store, "circo", str(mini_bench["circo"]))
    cfg = MLLMConfig(backend="transformers", model=str(tiny_models["mllm"]), device="cpu", batch_size=16)
    # greedy: batched on CPU (sampled requests run one by one); the seeds still differ per attempt
    sampling = SamplingParams(temperature=0.0, max_tokens=8, seed=SEED)
    prompt = tmp_path / "short.txt"  # the built-in prompt is long for a byte-level tiny tokenizer on CPU
    prompt.write_text("Plan the target image as JSON.\n<<<USER>>>\n{shared_concept}: {modification}")
    # a random-weight model never writes a valid layout: every query fails by design, so no failure threshold
    art = plan_layout.run(store, bench, cfg, sampling, prompt=str(prompt), max_attempts=2, shard_size=8,
                          progress=False, max_failure_rate=1.0)
    rows = art.read().to_pylist()
    qids = [q["query_id"] for q in bench.read("queries").to_pylist()]
    assert [r["id"] for r in rows] == qids and len(rows) == 12
    assert art.manifest.stats["failed"] == 12 and art.manifest.stats["ok"] == 0
    assert art.manifest.stats["attempts_total"] == 24
    for r in rows:
        assert r["status"] == "failed" and r["attempts"] == 2 and r["layout_json"] is None and r["scene"] is None
        assert r["raw"] is not None  # the rejected answer is kept (recovered from the backend's error)
        seeds = [item_seed(SEED, f"{r['id']}:{a}") for a in range(2)]
        assert r["seed"] == seeds[-1] and seeds[0] != seeds[1]
        lines = r["error"].splitlines()
        assert [ln.split(":")[0] for ln in lines] == [f"attempt {a + 1} (seed {s})" for a, s in enumerate(seeds)]
    assert art.report.status == "computed"


class _Canned:
    """Chat completions answered from `answers[seed]` (a string, sent as the message content); every request
    body is kept in `bodies`."""

    answers: dict[int, str] = {}
    bodies: list[dict] = []


@pytest.fixture
def canned():
    srv = CannedServer(lambda body: completion(_Canned.answers.get(body["seed"], "I cannot help with that.")))
    _Canned.answers, _Canned.bodies = {}, srv.chats  # the server records every chat request body in order
    yield srv.url
    srv.close()


def _captions(store, bench, missing: str):
    """A small TEXTS artifact (id = image_id) like caption_images writes; `missing` gets a failed caption."""
    refs = sorted({q["reference_id"] for q in bench.read("queries").to_pylist()})
    rows = [{"id": i, "sample": 0, "text": None if i == missing else f"caption of {i}", "raw": "x",
             "status": "failed" if i == missing else "ok", "error": "model said nothing" if i == missing else None,
             "seed": 0, "seconds": 0.1} for i in refs]
    run_ = begin(store, "test_captions", "1", {"refs": refs, "missing": missing}, inputs={"bench": bench},
                 schemas={"data": TEXTS})
    run_.write_table("data", pa.Table.from_pylist(rows, schema=TEXTS))
    return run_.finish()


def test_canned_llm_success_salvage_retry_and_failure(tmp_path, mini_bench, canned):
    store = ArtifactStore(str(tmp_path / "store"))
    bench = ingest.run(store, "circo", str(mini_bench["circo"]))
    queries = bench.read("queries").to_pylist()
    q = [x["query_id"] for x in queries]
    s = lambda qid, a: item_seed(SEED, f"{qid}:{a}")  # noqa: E731
    A = _Canned.answers
    for qid in q:
        A[s(qid, 0)] = json.dumps(_layout(f"dog{qid}"))
    A[s(q[1], 0)] = '{"scene": "unfinished'  # malformed, then valid on the second attempt
    A[s(q[1], 1)] = json.dumps(_layout("late"))
    A[s(q[2], 0)] = json.dumps(_layout("partial", bad=2))  # two bad instances dropped, layout kept
    for a in range(3):  # never valid: every instance inverted
        A[s(q[3], a)] = json.dumps({"scene": "x", "instances": _layout("y", bad=1)["instances"][2:]})
    A[s(q[4], 0)] = "```json\n" + json.dumps(_layout("fenced")) + "\n```"
    missing_ref = queries[5]["reference_id"]
    caps = _captions(store, bench, missing_ref)
    no_caption = [x["query_id"] for x in queries if x["reference_id"] == missing_ref]

    cfg = MLLMConfig(backend="http", model="canned", base_url=canned, api_flavor="openai", retries=0)
    sampling = SamplingParams(temperature=0.7, max_tokens=512, seed=SEED)
    # the canned answers fail some queries on purpose (missing caption, never-valid layouts)
    art = plan_layout.run(store, bench, cfg, sampling, captions=caps, max_attempts=3, shard_size=5, progress=False,
                          max_failure_rate=1.0)
    rows = {r["id"]: r for r in art.read().to_pylist()}
    assert list(rows) == q

    ok = {k for k, r in rows.items() if r["status"] == "ok"}
    assert ok == set(q) - {q[3]} - set(no_caption)
    assert rows[q[0]]["attempts"] == 1 and rows[q[0]]["seed"] == s(q[0], 0)
    assert load_layout(rows[q[0]]["layout_json"]).instances[0].label == f"dog{q[0]}"
    assert rows[q[1]]["attempts"] == 2 and rows[q[1]]["scene"] == "a scene with a late"
    assert len(rows[q[2]]["dropped"]) == 2 and "x1=0.8 must be < x2=0.2" in rows[q[2]]["dropped"][0]
    assert len(load_layout(rows[q[2]]["layout_json"]).instances) == 2
    r3 = rows[q[3]]
    assert r3["status"] == "failed" and r3["attempts"] == 3 and r3["raw"] == A[s(q[3], 2)]
    assert len(r3["error"].splitlines()) == 3 and "0 valid instance(s)" in r3["error"] and "dropped" in r3["error"]
    assert rows[q[4]]["scene"] == "a scene with a fenced"
    for k in no_caption:
        r = rows[k]
        assert r["status"] == "failed" and r["attempts"] == 0 and "model said nothing" in r["error"]
    st = art.manifest.stats
    assert st["ok"] == len(ok) and st["failed"] == 12 - len(ok) and st["retried"] == 2 and st["instances_dropped"] == 2

    # requests: text only, system message, JSON schema, caption + shared concept + modification in the prompt
    bodies = _Canned.bodies
    assert len(bodies) == (12 - len(no_caption)) + 1 + 2  # first attempts + q1's retry + q3's two retries
    by_seed = {b["seed"]: b for b in bodies}
    b0 = by_seed[s(q[0], 0)]
    assert b0["response_format"]["json_schema"]["schema"] == plan_layout.request_schema()
    assert b0["response_format"]["json_schema"]["strict"] is True
    assert b0["messages"][0]["role"] == "system" and "four steps" in b0["messages"][0]["content"]
    user = b0["messages"][1]["content"]  # text only: a plain string, or a list holding just text parts
    if isinstance(user, list):
        assert {c["type"] for c in user} == {"text"}
        user = " ".join(c["text"] for c in user)
    assert f"caption of {queries[0]['reference_id']}" in user
    assert queries[0]["shared_concept"] in user and queries[0]["modification"] in user

    # cached: nothing is asked again
    n = len(bodies)
    again = plan_layout.run(store, bench, cfg, sampling, captions=caps, max_attempts=3, shard_size=5, progress=False)
    assert again.report.status == "cached" and again.key == art.key and len(_Canned.bodies) == n

    # enrichment is a different artifact; boxes of known categories move, the LLM's box is kept as obox
    enriched = plan_layout.run(store, bench, cfg, sampling, captions=caps, max_attempts=3, enrich=True,
                               shard_size=5, progress=False, max_failure_rate=1.0)
    assert enriched.key != art.key and len(_Canned.bodies) == 2 * n  # same seeds, same answers
    lay = load_layout(enriched.read().to_pylist()[0]["layout_json"])
    assert lay.instances[0].obox == [0.1, 0.2, 0.5, 0.9] and lay.instances[0].box != lay.instances[0].obox
    assert lay.instances[1].obox is None and lay.instances[1].box == [0.6, 0.6, 0.7, 0.7]  # no statistics
