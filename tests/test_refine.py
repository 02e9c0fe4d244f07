"""Refined benchmarks (CoLLM §4.2 / supp. 8.2) on a slice of the real CIRR val annotations with placeholder
images: the tiny random MLLM (answers never parse → everything is removed), and a scripted stand-in for an
external LLM (a stdlib HTTP server speaking the chat completions API) for the kept / revised / removed paths.
The refined folder is then read back by the loader, `cirflow ingest` and `cirflow evaluate`."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from cirflow.flows.refine import refine
from cirflow.models.mllm.http import encode_image
from cirflow.flows.refine import RefineConfig
from cirflow.storage import ArtifactStore
from cirflow.storage.manifest import MANIFEST
from cirflow.tasks.benchmarks import load_benchmark
from cirflow.tasks.benchmarks.placeholders import make_slice
from cirflow.tasks.refine.candidate_strip import GAP, cell_box, fit_cell
from cirflow.tasks.refine.refine_validate import _orders, classify
from cirflow.models.images import load_image
from cirflow.models.mllm.protocol import ChatResult



def cli_main(argv: list[str]) -> int:
    """`cirflow ingest|evaluate ...` through the subcommands' own register() (as tests/test_evaluation_cli.py)."""
    import argparse

    from cirflow.cli import evaluate, ingest

    parser = argparse.ArgumentParser(prog="cirflow")
    sub = parser.add_subparsers(dest="command", required=True)
    ingest.register(sub)
    evaluate.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _config(tmp_path, data_root, tiny_models, mllm: dict, **refine) -> dict:
    return RefineConfig.model_validate({
        "name": "refine-test", "store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "cirr", "data_root": str(data_root), "split": "val"},
        "mllm": mllm,
        "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
        "refine": {"out_dir": str(tmp_path / "refined"), "shard_size": 5} | refine,
    }).model_dump(mode="json")


@pytest.fixture()
def cirr_slice(tmp_path, shared_benchmarks) -> Path:
    return make_slice("cirr", shared_benchmarks / "cirr", tmp_path / "cirr", n_queries=12)


# ------------------------------------------------------------------------------ pure helpers (fast)


def test_vote_orders_differ_and_answers_are_classified():
    orders = _orders(4, 3, seed=7)
    assert len({tuple(o) for o in orders}) == 3 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    assert _orders(4, 3, seed=7) == orders  # seeded: a resumed run shows the same orders
    pre = ["i apologize", "i cannot"]
    refusal = ChatResult("q", None, "failed", "invalid JSON: x; raw text: \"I apologize, but I can't.\"", 0.1, 1)
    junk = ChatResult("q", None, "failed", "invalid JSON: x; raw text: 'candidate two'", 0.1, 1)
    down = ChatResult("q", None, "failed", "gave up after 5 attempts: HTTP 503", 0.1, 1)
    assert classify(refusal, pre) == ("refused", "I apologize, but I can't.")
    assert classify(junk, pre) == ("unparsable", "candidate two")
    assert classify(down, pre) == ("failed", None)


# ------------------------------------------------------------------------------ the tiny random MLLM


@pytest.mark.slow
def test_tiny_mllm_fails_everything_and_removes_everything(tmp_path, cirr_slice, tiny_models, prefect_server):
    mllm = {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"}
    cfg = _config(tmp_path, cirr_slice, tiny_models, mllm,
                  validate_sampling={"max_tokens": 6}, regenerate_sampling={"max_tokens": 6, "temperature": 0.0})
    doc = refine(cfg, progress=False)
    stages = {(s["stage"], s["stats"].get("level")): s for s in doc["stages"]}
    v0 = stages[("refine_validate", 0)]["stats"]
    assert v0["tested"] == 12 and v0["votes"] == 36 and v0["passed"] == 0
    assert v0["vote_status"] == {"unparsable": 36}  # random tokens never form {"choice": k}
    regen = stages[("refine_regenerate", None)]["stats"]
    assert regen["items"] == 12 and regen["ok"] == 0 and regen["failed_items"] == 12
    for level in (1, 2, 3):  # nothing to re-validate: no usable regenerated text
        assert stages[("refine_validate", level)]["stats"]["tested"] == 0
    assert doc["counts"] == {"cirr": {"total": 12, "kept": 0, "revised": 0, "removed": 12, "revised_by_level": {},
                                      "removed_by_reason": {"regeneration_failed": 12}}}
    decisions = pq.read_table(Path(doc["output_dir"]) / "decisions.parquet").to_pylist()
    assert len(decisions) == 12 and {d["decision"] for d in decisions} == {"removed"}
    assert all(d["unparsable"] == 3 and d["correct"] == [0, -1, -1, -1] and len(d["negatives"]) == 3
               for d in decisions)
    assert load_benchmark("cirr", doc["output_dir"], check_images=False).queries.num_rows == 0


# ------------------------------------------------------------------------------ a scripted external LLM

# Per query (slice position): what the stand-in answers. "right"/"wrong" per validation vote at level 0,
# then for regenerated texts the level (1-3) at which it starts answering right (None: never).
SCRIPT = {
    0: ("right", None), 1: ("right", None), 2: ("right", None), 10: ("right", None), 11: ("right", None),
    3: ("2of3", None),        # two of three votes right: kept
    4: ("1of3", 1),           # one of three: regenerated, the coarse text passes -> revised, level 1
    5: ("wrong", 2),          # revised at level 2
    6: ("wrong", None),       # every regenerated text stays ambiguous -> removed (unresolved)
    7: ("refuse", None),      # "I apologize ..." -> removed (refused)
    8: ("junk", 3),           # unparsable original answers; the finest text passes -> revised, level 3
    9: ("wrong", "badjson"),  # regeneration answer is not the asked JSON -> removed (regeneration_failed)
}


CELL = 336  # RefineOptions.candidate_cell default


class StandIn:
    """Answers chat completions from the script, recognising queries by their texts and images by content."""

    def __init__(self, data_root: Path):
        caps = json.loads((data_root / "captions" / "cap.rc2.val.json").read_text())
        splits = json.loads((data_root / "image_splits" / "split.rc2.val.json").read_text())
        self.caps = caps
        self.by_text = {c["caption"]: i for i, c in enumerate(caps)}
        self.image_of = {encode_image(str(data_root / p)): name for name, p in splits.items()}
        # validation sends the candidates as one strip (supp. 8.2): a cell's pixels identify its image
        self.cell_of = {fit_cell(load_image(str(data_root / p)), CELL).tobytes(): name for name, p in splits.items()}
        self.calls: Counter = Counter()
        self.lock = threading.Lock()

    def strip_cells(self, url: str) -> list[str]:
        strip = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
        n = (strip.width + GAP) // (CELL + GAP)
        return [self.cell_of[strip.crop(cell_box(k, CELL)).tobytes()] for k in range(n)]

    def answer(self, body: dict) -> str:
        content = body["messages"][-1]["content"]
        urls = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
        images = [self.image_of[urls[0]], *(self.image_of.get(u) or self.strip_cells(u) for u in urls[1:])]
        images = [images[0], *(i for x in images[1:] for i in (x if isinstance(x, list) else [x]))]
        prompt = next(c["text"] for c in content if c["type"] == "text")
        text = re.search(r'"(.*)"', prompt).group(1)  # the (first) quoted line: the text under test
        if "TARGET photo" in prompt:  # regeneration
            i = self.by_text[text]
            with self.lock:
                self.calls["regenerate", i] += 1
            if SCRIPT[i][1] == "badjson":
                return "Sure! Here are three texts: one, two, three."
            return json.dumps({"texts": [f"[{i}] coarse", f"[{i}] medium", f"[{i}] fine"]})
        m = re.match(r"\[(\d+)\] (coarse|medium|fine)$", text)
        i, level = (int(m.group(1)), ["coarse", "medium", "fine"].index(m.group(2)) + 1) if m else (self.by_text[text], 0)
        target = self.caps[i]["target_hard"]
        assert len(urls) == 2 and urls[1] not in self.image_of  # reference + one candidate strip (supp. 8.2)
        assert images[0] == self.caps[i]["reference"] and target in images[1:]
        right = images[1:].index(target) + 1
        wrong = 1 if right != 1 else 2
        with self.lock:
            self.calls["validate", i, level] += 1
            n = self.calls["validate", i, level]
        if level == 0:
            mode = SCRIPT[i][0]
            if mode == "refuse":
                return "I apologize, but I cannot help identify people in these images."
            if mode == "junk":
                return "It is probably the second one."
            ok = {"right": True, "wrong": False, "2of3": n != 2, "1of3": n == 1}[mode]
        else:
            ok = SCRIPT[i][1] is not None and SCRIPT[i][1] == level
        return json.dumps({"choice": right if ok else wrong})


@pytest.fixture()
def stand_in(cirr_slice):
    llm = StandIn(cirr_slice)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            text = llm.answer(body)
            out = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the backend sends up to 16 requests at once; the default backlog is 5
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield llm, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.mark.slow
def test_scripted_llm_keeps_revises_removes_and_the_result_reads_like_cirr(tmp_path, cirr_slice, tiny_models,
                                                                         stand_in, prefect_server, capsys):
    llm, url = stand_in
    mllm = {"backend": "http", "api_flavor": "openai", "model": "stand-in", "base_url": url, "retries": 0}
    cfg = _config(tmp_path, cirr_slice, tiny_models, mllm)
    doc = refine(cfg, progress=False)
    v0 = next(s for s in doc["stages"] if s["stage"] == "refine_validate")["stats"]
    assert v0["vote_status"] == {"ok": 30, "refused": 3, "unparsable": 3}, v0["failures"]
    c = doc["counts"]["cirr"]
    assert (c["total"], c["kept"], c["revised"], c["removed"]) == (12, 6, 3, 3)
    assert c["revised_by_level"] == {"1": 1, "2": 1, "3": 1}
    assert c["removed_by_reason"] == {"refused": 1, "unresolved": 1, "regeneration_failed": 1}
    # only failed triplets are regenerated, each re-validated only until a text passes
    assert {k[1] for k in llm.calls if k[0] == "regenerate"} == {4, 5, 6, 8, 9}
    assert {(k[1], k[2]) for k in llm.calls if k[0] == "validate" and k[2] > 0} == {
        (4, 1), (5, 1), (5, 2), (6, 1), (6, 2), (6, 3), (8, 1), (8, 2), (8, 3)}
    assert all(n == 3 for k, n in llm.calls.items() if k[0] == "validate")  # three votes per tested text

    caps = json.loads((cirr_slice / "captions" / "cap.rc2.val.json").read_text())
    out = Path(doc["output_dir"])
    decisions = {d["query_id"]: d for d in pq.read_table(out / "decisions.parquet").to_pylist()}
    d = {i: decisions[str(caps[i]["pairid"])] for i in range(12)}
    assert d[3]["correct"][0] == 2 and d[3]["decision"] == "kept"
    assert d[4]["final_text"] == "[4] coarse" and d[4]["correct"] == [1, 3, -1, -1]
    assert d[5]["final_text"] == "[5] medium" and d[5]["level"] == 2
    assert d[8]["final_text"] == "[8] fine" and d[8]["unparsable"] == 3
    assert d[7]["refusals"] == 3 and d[7]["regenerated"] == []
    assert d[6]["regenerated"] == ["[6] coarse", "[6] medium", "[6] fine"] and d[6]["reason"] == "unresolved"

    # the refined file: the original records (every field), revised captions in place, removed ones gone
    refined = json.loads((out / "captions" / "cap.rc2.val.json").read_text())
    kept_or_revised = [i for i in range(12) if d[i]["decision"] != "removed"]
    assert [r["pairid"] for r in refined] == [caps[i]["pairid"] for i in kept_or_revised]
    for r, i in zip(refined, kept_or_revised):
        assert r == caps[i] | {"caption": d[i]["final_text"]}
    assert (out / "image_splits" / "split.rc2.val.json").read_bytes() == \
        (cirr_slice / "image_splits" / "split.rc2.val.json").read_bytes()
    report = (out / "report.md").read_text()
    assert "| cirr | 12 | 6 (50.0%) | 3 (25.0%) | 3 (25.0%) |" in report
    assert (out / "refinement.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # read like the original: loader, `cirflow ingest` (images found through the links), `cirflow evaluate`
    bench = load_benchmark("cirr", out)
    assert bench.queries.num_rows == 9
    assert dict(zip(bench.queries["query_id"].to_pylist(), bench.queries["modification"].to_pylist())) == {
        str(caps[i]["pairid"]): d[i]["final_text"] for i in kept_or_revised}
    assert cli_main(["ingest", "cirr", "--data-root", str(out), "--out", str(tmp_path / "ingested"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["queries"] == 9
    names = bench.images["image_id"].to_pylist()
    recall, subset = {"version": "rc2", "metric": "recall"}, {"version": "rc2", "metric": "recall_subset"}
    for q in bench.queries.to_pylist():
        t = q["target_ids"][0]
        recall[q["query_id"]] = ([t] + [n for n in names if n not in (t, q["reference_id"])])[:50]
        subset[q["query_id"]] = [t] + [m for m in q["members"] if m not in (t, q["reference_id"])][:2]
    (tmp_path / "r.json").write_text(json.dumps(recall))
    (tmp_path / "s.json").write_text(json.dumps(subset))
    assert cli_main(["evaluate", "cirr", "--data-root", str(out), "--predictions", str(tmp_path / "r.json"),
                     "--subset-predictions", str(tmp_path / "s.json"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["recall@1"] == 100.0 and metrics["recall_subset@1"] == 100.0

    # warm: every stage cached, the stand-in not asked again
    before = sum(llm.calls.values())
    again = refine(cfg, progress=False)
    assert {s["status"] for s in again["stages"]} == {"cached"} and sum(llm.calls.values()) == before
    assert again["counts"] == doc["counts"]

    # interrupted in round 2 (manifest not written, one shard committed): resumes that round, redoes the rest
    store = ArtifactStore(cfg["store"])
    r2 = next(s for s in doc["stages"] if s["stage"] == "refine_validate" and s["stats"]["level"] == 2)
    art = store.open("refine_validate", r2["key"])
    store.fs.rm(art.file_path(MANIFEST))
    resumed = refine(cfg, progress=False)
    status = {(s["stage"], s["stats"].get("level")): s["status"] for s in resumed["stages"]}
    assert status[("refine_validate", 2)] == "resumed" and status[("refine_validate", 1)] == "cached"
    assert status[("refine_validate", 3)] == "cached" and sum(llm.calls.values()) == before
    assert resumed["counts"] == doc["counts"]
