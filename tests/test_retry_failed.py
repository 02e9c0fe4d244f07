"""`cirflow run --retry-failed CONFIG` (issue 9): a stage that completed with a few failed rows (under its
`max_failure_rate`) is cached by a plain rerun, which asks the server nothing; with --retry-failed the run asks
the server for exactly those items, the artifact keeps its key and ok rows, its failed count drops, and every
stage downstream of it is recomputed from the new rows (never served stale from the cache)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from canned_server import CannedServer, completion, refusal  # noqa: E402
from test_failures_end_to_end import N_QUERIES, cirflow, good, stage_rows, write_config  # noqa: E402

pytestmark = pytest.mark.slow


def few_refused(body: dict):
    return refusal() if body.get("seed") % 10 == 0 else good(body)


def summary(p) -> dict:
    return json.loads(p.stdout)


def test_retry_failed_asks_only_for_the_failed_rows(tmp_path, mini_bench, tiny_models, prefect_server):
    server = CannedServer(few_refused)
    try:
        config = write_config(tmp_path, server.url, mini_bench, tiny_models, max_failure_rate=0.3)
        p = cirflow(tmp_path, "run", str(config), "--json")
        assert p.returncode == 0, p.stderr[-4000:]
        first = summary(p)
        bad = sorted(s for s in server.seeds() if s % 10 == 0)
        compose = next(s for s in first["stages"] if s["stage"] == "compose_target_text")
        assert 0 < compose["stats"]["failed"] == len(bad) <= 0.3 * N_QUERIES

        server.answer, server.chats = good, []
        p = cirflow(tmp_path, "run", str(config), "--json")  # a plain rerun: everything cached, nothing asked
        assert p.returncode == 0 and server.chats == []
        assert {s["status"] for s in summary(p)["stages"]} == {"cached"}

        p = cirflow(tmp_path, "run", str(config), "--retry-failed")
        assert p.returncode == 0, p.stderr[-4000:]
        assert sorted(server.seeds()) == bad  # exactly the failed items, once each
        rows = stage_rows(p.stdout)
        assert rows["compose_target_text"]["status"] == "resumed"
        assert (rows["compose_target_text"]["ok"], rows["compose_target_text"]["failed"]) == (str(N_QUERIES), "0")
        # what reads the composed texts is recomputed from the new rows; what does not read them stays cached
        assert rows["embed_texts"]["status"] != "cached" and rows["embed_images"]["status"] == "cached"
        assert rows["ingest"]["status"] == "cached"

        server.chats = []
        p = cirflow(tmp_path, "run", str(config), "--json")
        again = summary(p)
        assert server.chats == [] and {s["status"] for s in again["stages"]} == {"cached"}
        compose = next(s for s in again["stages"] if s["stage"] == "compose_target_text")
        assert compose["key"] == next(s["key"] for s in first["stages"] if s["stage"] == "compose_target_text")
        assert (compose["stats"]["ok"], compose["stats"]["failed"]) == (N_QUERIES, 0)
    finally:
        server.close()
