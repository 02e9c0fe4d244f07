"""A run stopped by a stage over its failure threshold (StageFailed, exit 3) still writes its run folder: summary.json
marked failed with the failing stage, stages.md, and a report.html that lists every failed item with its reason,
so the failures can be looked at. Through the real CLI against a real local OpenAI-compatible server
(tests/canned_server.py) that refuses most items; the report is checked in headless Chromium."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from canned_server import CannedServer, completion, refusal  # noqa: E402
from test_failures_end_to_end import N_QUERIES, cirflow, one_error_line, write_config  # noqa: E402
from test_html_report import body, browse  # noqa: E402

pytestmark = pytest.mark.slow

REASON = "I will not describe this image."


def mostly_refused(body: dict):
    """About 80% of the items (by their per-item seed: the same items every time) get a refusal."""
    seed = body.get("seed")
    return refusal(REASON) if seed % 10 < 8 else completion(f"a photo for seed {seed}")


@pytest.fixture
def server():
    s = CannedServer(mostly_refused)
    yield s
    s.close()


def test_failed_run_writes_a_report_of_its_failures(tmp_path, server, mini_bench, tiny_models, prefect_server):
    config = write_config(tmp_path, server.url, mini_bench, tiny_models)
    p = cirflow(tmp_path, "run", str(config))
    assert p.returncode == 3, p.stderr[-4000:]
    line = one_error_line(p)  # the same one line as a run that writes no folder
    refused = [s for s in server.seeds() if s % 10 < 8]
    assert f"compose_target_text: {len(refused)} of {N_QUERIES} items failed" in line, line

    folders = re.findall(r"^run folder: (.+) \(report\.html\)$", p.stdout, re.M)
    assert len(folders) == 1, p.stdout
    run_dir = Path(folders[0])
    assert run_dir.parent == tmp_path / "runs" / "e2e"
    doc = json.loads((run_dir / "summary.json").read_text())
    assert doc["status"] == "failed"
    failed = doc["failed_stage"]
    assert (failed["stage"], failed["label"]) == ("compose_target_text", "cirr")
    assert (failed["stats"]["items"], failed["stats"]["failed"]) == (N_QUERIES, len(refused))
    assert failed["error"] in line
    ids = {r["id"] for r in failed["failures"]}
    assert len(ids) == len(refused) and all(REASON in r["error"] for r in failed["failures"])
    # the stage table: what was committed before it (ingest), and the failing stage with its counts
    stages = (run_dir / "stages.md").read_text()
    assert re.search(r"\| cirr \| ingest \| computed \|", stages), stages
    assert re.search(rf"\| cirr \| compose_target_text \| failed \| {N_QUERIES - len(refused)} \| {len(refused)} \|",
                     stages), stages
    assert not (run_dir / "metrics.md").read_text().count("recall")  # no metrics: nothing was evaluated

    dom = browse((run_dir / "report.html").as_uri(), tmp_path)
    table = re.search(r'<table class="grid" id="failures">(.*?)</table>', dom, re.S).group(1)
    cells = re.findall(r'<tr class="failure"><td>([^<]*)</td><td>([^<]*)</td></tr>', table)
    assert {c[0] for c in cells} == ids and all(REASON in c[1] for c in cells)
    assert "compose_target_text" in re.search(r'<h2 id="failed-stage">(.*?)</h2>', dom).group(1)
    # each query row of the failed items shows the stage's reason (the rendered rows, not the page's template)
    rows = dict(re.findall(r'<tr class="query" data-qid="([^"]+)">(.*?)</tr>', body(dom), re.S))
    assert rows and all("compose_target_text:</b> failed:" in rows[q] for q in ids if q in rows)
    assert any(q in rows for q in ids)

    # `cirflow report DIR` rebuilds it from summary.json and the store
    (run_dir / "report.html").unlink()
    p = cirflow(tmp_path, "report", str(run_dir))
    assert p.returncode == 0, p.stderr[-4000:]
    assert 'id="failures"' in (run_dir / "report.html").read_text()


def test_failed_build_writes_a_report_of_its_failures(tmp_path, server, prefect_server):
    """`cirflow build instructcir` (`max_failure_rate: 0.5`) whose MLLM refuses every image: exit 3 after
    caption_collection, and the build's run folder lists every refused image with the reason."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("builds_common",
                                                  Path(__file__).with_name("test_builds_common.py"))
    bc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bc)
    server.answer = lambda body: refusal(REASON)
    coll = bc.make_collection(tmp_path / "collection")
    config = tmp_path / "build.yaml"
    config.write_text(yaml.safe_dump({
        "name": "refused-build", "store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"),
        "collection": {"kind": "folder", "uri": str(coll)},
        "mllm": {"backend": "http", "model": "m", "base_url": server.url, "api_flavor": "openai", "retries": 1,
                 "backoff_s": 0.01, "timeout_s": 5},
        "captions": {"shard_size": 8}, "texts": {"shard_size": 8}, "max_failure_rate": 0.5}))
    p = cirflow(tmp_path, "build", "instructcir", str(config))
    assert p.returncode == 3, p.stderr[-4000:]
    line = one_error_line(p)
    assert "caption_collection:" in line and "items failed" in line, line
    (folder,) = re.findall(r"^run folder: (.+) \(report\.html\)$", p.stdout, re.M)
    run_dir = Path(folder)
    doc = json.loads((run_dir / "summary.json").read_text())
    assert doc["status"] == "failed" and doc["failed_stage"]["stage"] == "caption_collection"
    n = doc["failed_stage"]["stats"]["items"]
    assert n > 0 and doc["failed_stage"]["stats"]["failed"] == n == len(doc["failed_stage"]["failures"])
    assert "ingest_collection" in doc["artifacts"]  # what the build committed before the failed stage
    stages = (run_dir / "stages.md").read_text()
    assert re.search(rf"\| caption_collection \| caption_collection \| failed \| 0 \| {n} \|", stages), stages
    dom = browse((run_dir / "report.html").as_uri(), tmp_path)
    cells = re.findall(r'<tr class="failure"><td>([^<]*)</td><td>([^<]*)</td></tr>', dom)
    assert len(cells) == n and all(REASON in reason for _, reason in cells)
    assert len({item for item, _ in cells}) == n
