"""`--retry-failed` on `cirflow compare`, `cirflow sweep` and `cirflow build` (issue 9 follow-up), with the same
semantics as on `cirflow run` (tests/test_retry_failed.py): a first command against a real local OpenAI-format
server (tests/canned_server.py) that refuses some items completes with failed rows (under max_failure_rate);
the same command with `--retry-failed` against a server that answers asks for exactly those items, and each MLLM
artifact keeps its key and its ok rows (row for row, and the shards that had no failure byte for byte) while its
failed count drops to 0."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from canned_server import CannedServer, completion, refusal  # noqa: E402
from test_failures_end_to_end import N_QUERIES, cirflow, good, write_config  # noqa: E402

from cirflow.storage import ArtifactStore

pytestmark = pytest.mark.slow

ID_COLUMNS = ("id", "image_id", "pair_id")


def few_refused(body: dict):
    return refusal() if body.get("seed") % 10 == 0 else good(body)


def stored(store_root: Path, stage: str) -> dict[str, dict]:
    """key -> {stats, rows (item id -> row), shards (file name -> (sha256, whether it holds a failed row))} of
    every complete `stage` artifact."""
    store = ArtifactStore(str(store_root))
    out = {}
    for m in store.manifests():
        if m.stage != stage:
            continue
        rows, shards = {}, {}
        for s in (s for s in m.shards if s.table == "data"):
            part = pq.read_table(store.path(stage, m.key, s.name)).to_pylist()
            id_col = next(c for c in ID_COLUMNS if c in part[0])
            rows.update({r[id_col]: r for r in part})
            shards[s.name] = (s.sha256, any(r["status"] != "ok" for r in part))
        out[m.key] = {"stats": m.stats, "rows": rows, "shards": shards}
    return out


def assert_retried(before: dict, after: dict) -> None:
    """Same keys; failed count 0; every ok row of the first run unchanged; shards without a failure identical
    (never rewritten), shards with one rewritten."""
    assert set(after) == set(before) and before
    for key, b in before.items():
        a = after[key]
        assert b["stats"]["failed"] > 0 and a["stats"]["failed"] == 0, (b["stats"], a["stats"])
        assert a["stats"]["ok"] == len(a["rows"]) == len(b["rows"])
        ok = {i: r for i, r in b["rows"].items() if r["status"] == "ok"}
        assert 0 < len(ok) < len(b["rows"])
        assert {i: a["rows"][i] for i in ok} == ok
        assert all(r["status"] == "ok" for r in a["rows"].values())
        assert set(a["shards"]) == set(b["shards"])
        for name, (sha, had_failure) in b["shards"].items():
            assert (a["shards"][name][0] != sha) == had_failure, name
            assert not a["shards"][name][1]
        assert not all(f for _, f in b["shards"].values())  # some shards were left alone


def compare_config(tmp_path: Path, url: str, mini_bench, tiny_models, **grid) -> Path:
    base = yaml.safe_load(write_config(tmp_path, url, mini_bench, tiny_models, max_failure_rate=0.3).read_text())
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"name": "grid", "base": base, **grid}))
    return path


def statuses(doc: dict, stage: str) -> set[str]:
    return {s["status"] for s in doc["stages"] if s["stage"] == stage}


@pytest.mark.parametrize("command,grid", [
    ("compare", {"modes": ["t2i"]}),
    ("sweep", {"sweep": {"param": "compose.sampling.temperature", "values": [0.0, 0.5], "seeds": [0],
                         "metrics": ["recall@5"]}}),
])
def test_compare_and_sweep_retry_failed(command, grid, tmp_path, mini_bench, tiny_models, prefect_server):
    server = CannedServer(few_refused)
    try:
        config = compare_config(tmp_path, server.url, mini_bench, tiny_models, **grid)
        p = cirflow(tmp_path, command, str(config), "--json")
        assert p.returncode == 0, p.stderr[-4000:]
        bad = sorted(s for s in server.seeds() if s % 10 == 0)
        before = stored(tmp_path / "store", "compose_target_text")
        assert len(before) == (2 if command == "sweep" else 1)
        assert sum(b["stats"]["failed"] for b in before.values()) == len(bad) > 0

        server.answer, server.chats = good, []
        p = cirflow(tmp_path, command, str(config), "--retry-failed", "--json")
        assert p.returncode == 0, p.stderr[-4000:]
        assert sorted(server.seeds()) == bad  # exactly the failed items, once each
        doc = json.loads(p.stdout)
        assert statuses(doc, "compose_target_text") == {"resumed"}
        # what reads the composed texts is recomputed from the new rows; the gallery is not
        assert "cached" not in statuses(doc, "embed_texts") and statuses(doc, "embed_images") == {"cached"}
        after = stored(tmp_path / "store", "compose_target_text")
        assert_retried(before, after)
        assert all(a["stats"]["ok"] == N_QUERIES for a in after.values())
    finally:
        server.close()


_spec = importlib.util.spec_from_file_location("builds_common", Path(__file__).with_name("test_builds_common.py"))
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)


def _has_image(body: dict) -> bool:
    return any(isinstance(m.get("content"), list) and any(c.get("type") == "image_url" for c in m["content"])
               for m in body.get("messages", []))


def build_answer(refuse_captions: bool):
    def answer(body: dict):
        seed = body.get("seed")
        if _has_image(body):  # a caption request
            return refusal() if refuse_captions and seed % 4 == 0 else completion(f"a small photo number {seed}")
        return completion(f"make it look like number {seed}")  # a reformulation text, within 12 words
    return answer


def test_build_retry_failed(tmp_path, prefect_server):
    root = bc.make_collection(tmp_path / "c")
    server = CannedServer(build_answer(refuse_captions=True))
    try:
        config = tmp_path / "build.yaml"
        config.write_text(yaml.safe_dump({
            "store": str(tmp_path / "store"), "collection": {"kind": "folder", "uri": str(root)},
            "mllm": {"backend": "http", "model": "m", "base_url": server.url, "api_flavor": "openai",
                     "retries": 1, "backoff_s": 0.01, "timeout_s": 5},
            "captions": {"shard_size": 8}, "texts": {"shard_size": 8}}))
        p = cirflow(tmp_path, "build", "instructcir", str(config), "--json")
        assert p.returncode == 0, p.stderr[-4000:]
        refused = sorted(b["seed"] for b in server.chats if _has_image(b) and b["seed"] % 4 == 0)
        captions = stored(tmp_path / "store", "caption_collection")
        assert sum(c["stats"]["failed"] for c in captions.values()) == len(refused) > 0
        texts_first = stored(tmp_path / "store", "instructcir_texts")
        assert sum(t["stats"]["failed"] for t in texts_first.values()) > 0  # pairs whose caption is missing

        server.answer, server.chats = build_answer(refuse_captions=False), []
        p = cirflow(tmp_path, "build", "instructcir", str(config), "--retry-failed", "--json")
        assert p.returncode == 0, p.stderr[-4000:]
        # the captions asked again are exactly the refused ones (the others come from the store)
        assert sorted(b["seed"] for b in server.chats if _has_image(b)) == refused
        doc = json.loads(p.stdout)
        by_stage = {s["stage"]: s for s in doc["stages"]}
        assert by_stage["caption_collection"]["status"] == "resumed"
        assert by_stage["ingest_collection"]["status"] == "cached" and by_stage["random_pairs"]["status"] == "cached"
        assert_retried(captions, stored(tmp_path / "store", "caption_collection"))
        # the texts read the new captions (same key, recomputed from the rewritten input): none fails now
        texts = stored(tmp_path / "store", "instructcir_texts")
        assert set(texts) == set(texts_first) and by_stage["instructcir_texts"]["status"] != "cached"
        assert all(t["stats"]["failed"] == 0 for t in texts.values())
    finally:
        server.close()
