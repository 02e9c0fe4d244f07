"""Failures never lie, through the real CLI (issue 9): `python -m cirflow.cli.main run CONFIG` with the http
backend against a real local OpenAI-compatible server (tests/canned_server.py) whose answers the test switches.

* the server is up for the /models preflight but answers 500 to every chat: non-zero exit, one
  `cirflow: error:` line naming the server and the cause, no traceback, no compose_target_text manifest; with the
  server answering properly, the same command computes and exits 0;
* 30% of the answers unusable (refusals): StageFailed (exit 3) with one line of counts, the shards stay
  committed, and the rerun against a healthy server asks for exactly the failed items;
* the printed stage table shows ok / failed counts for every stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from canned_server import CannedServer, completion, refusal  # noqa: E402

pytestmark = pytest.mark.slow

N_QUERIES = 30  # mini CIRR
STAGE_NAMES = ["ingest", "compose_target_text", "embed_texts", "embed_images", "retrieve", "evaluate"]


def good(body: dict):
    return completion(f"a photo for seed {body.get('seed')}")


def down(body: dict):
    return 500, {"error": {"message": "CUDA out of memory on the server", "type": "internal"}}


def unusable(body: dict):
    """About 30% of the items (by their per-item seed, so the same items every time) get a refusal."""
    return refusal() if refused(body.get("seed")) else good(body)


def refused(seed) -> bool:
    return seed % 10 < 3


@pytest.fixture
def server():
    s = CannedServer(good)
    yield s
    s.close()


def write_config(tmp_path: Path, url: str, mini_bench, tiny_models, **over) -> Path:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    doc = {
        "name": "e2e", "method": "pefuse", "store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
        # retries that finish in milliseconds: the policy is tested, not the waiting
        "mllm": {"backend": "http", "model": "m", "base_url": url, "retries": 1, "backoff_s": 0.01, "timeout_s": 5},
        "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
        "compose": {"prompt": str(prompt), "shard_size": 4, "sampling": {"temperature": 0.0, "max_tokens": 16}},
        "embed": {"shard_size": 16},
        **over,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cirflow(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, against the session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run([sys.executable, "-m", "cirflow.cli.main", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def one_error_line(p: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in p.stdout + p.stderr, p.stderr[-4000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("cirflow: error:")]
    assert len(errors) == 1, p.stderr[-4000:]
    return errors[0]


def compose_dir(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "store").glob("compose_target_text/*"))


def stored_status(folder: Path) -> dict[str, str]:
    """id -> status over every committed shard of compose_target_text's data table (manifest or not)."""
    out = {}
    for f in sorted(folder.glob("data-*.parquet")):
        t = pq.read_table(f, columns=["id", "status"])
        out.update(zip(t.column("id").to_pylist(), t.column("status").to_pylist()))
    return out


def stage_rows(stdout: str) -> dict[str, dict[str, str]]:
    """The printed stage table, as stage -> {column: cell}."""
    out = stdout.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("| group | stage |"))
    head = [c.strip() for c in out[start].strip("|").split("|")]
    rows = {}
    for line in out[start + 2:]:
        if not line.startswith("|"):
            break  # the end of the table (the metrics table follows)
        row = dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
        rows[row["stage"]] = row
    return rows


def test_server_down_fails_the_run_and_commits_nothing_then_recovers(tmp_path, server, mini_bench, tiny_models,
                                                                     prefect_server):
    config = write_config(tmp_path, server.url, mini_bench, tiny_models)
    server.answer = down
    p = cirflow(tmp_path, "run", str(config))
    assert p.returncode != 0
    line = one_error_line(p)
    assert server.url in line and "HTTP 500" in line, line
    assert server.chats  # the chat requests were made (the preflight passed) and all failed
    assert not list((tmp_path / "store").glob("compose_target_text/*/_manifest.json"))
    assert not list((tmp_path / "runs").rglob("summary.json")) if (tmp_path / "runs").exists() else True

    server.answer, server.chats = good, []
    p = cirflow(tmp_path, "run", str(config))
    assert p.returncode == 0, p.stderr[-4000:]
    assert "Traceback" not in p.stderr and "cirflow: error" not in p.stderr
    assert len(server.chats) == N_QUERIES  # computed, not "cached" with the failures
    assert len(list((tmp_path / "store").glob("compose_target_text/*/_manifest.json"))) == 1
    rows = stage_rows(p.stdout)
    assert list(rows) == STAGE_NAMES
    # the console stage table: ok / failed counts for every stage
    assert (rows["compose_target_text"]["ok"], rows["compose_target_text"]["failed"]) == (str(N_QUERIES), "0")
    # stages that count per-item status show numbers; the others (features, rankings, metrics) leave them blank
    counts = {s: (r["ok"], r["failed"]) for s, r in rows.items()}
    assert {s for s, (ok, failed) in counts.items() if ok != ""} >= {"compose_target_text", "embed_images"}, counts
    assert counts["embed_images"][1] == "0" and int(counts["embed_images"][0]) > 0, counts
    assert all((ok == "") == (failed == "") for ok, failed in counts.values()), counts


def test_unusable_answers_over_the_threshold_fail_the_stage_and_the_rerun_asks_only_for_them(
        tmp_path, server, mini_bench, tiny_models, prefect_server):
    config = write_config(tmp_path, server.url, mini_bench, tiny_models)
    server.answer = unusable
    p = cirflow(tmp_path, "run", str(config))
    assert p.returncode == 3, p.stderr[-4000:]
    line = one_error_line(p)
    asked = server.seeds()
    assert len(asked) == len(set(asked)) == N_QUERIES  # every item asked once: no retry re-asked the refusals
    bad = {s for s in asked if refused(s)}
    assert 0 < len(bad) < N_QUERIES
    assert f"compose_target_text: {len(bad)} of {N_QUERIES} items failed" in line, line
    assert "refused" in line
    (folder,) = compose_dir(tmp_path)
    assert not (folder / "_manifest.json").exists()
    status = stored_status(folder)
    assert len(status) == N_QUERIES and sum(s != "ok" for s in status.values()) == len(bad)  # all shards kept

    server.answer, server.chats = good, []
    p = cirflow(tmp_path, "run", str(config))
    assert p.returncode == 0, p.stderr[-4000:]
    assert sorted(server.seeds()) == sorted(bad)  # exactly the failed items, once each
    assert set(stored_status(folder).values()) == {"ok"} and (folder / "_manifest.json").exists()
    rows = stage_rows(p.stdout)
    assert rows["compose_target_text"]["status"] == "resumed"
    assert (rows["compose_target_text"]["ok"], rows["compose_target_text"]["failed"]) == (str(N_QUERIES), "0")
