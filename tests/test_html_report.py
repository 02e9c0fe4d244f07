"""report.html of a PEFUSE run and of a two-encoder comparison (mini CIRR, tiny random-weight models, under
Prefect), opened in headless Chromium: a screenshot for docs/, and DOM checks that every image loaded, the
target is marked, and the failure / disagreement filters show exactly the queries the store's rankings say."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cirflow.cli.main import main
from cirflow.flows import FLOWS
from cirflow.flows.compare import CompareConfig
from cirflow.flows.registry import parse_config
from cirflow.storage import ArtifactStore

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[1] / "docs"


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        # `make test` installs it (root + apt); on CI (CI=true) a missing browser is a failure, never a skip
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("headless Chromium is needed on CI: `make test` installs the Debian package chromium")
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    return exe


def browse(url: str, tmp_path: Path, screenshot: Path | None = None) -> str:
    """The DOM after the page's scripts ran (virtual time lets the image check finish); optionally a screenshot."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000",
            "--window-size=1400,1000"]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*args, f"--screenshot={screenshot}", url], check=True, capture_output=True, timeout=120)
        assert screenshot.stat().st_size > 10_000
    return subprocess.run([*args, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=120).stdout


def attr(dom: str, element_id: str, name: str) -> str:
    tag = re.search(rf'<[^>]*id="{element_id}"[^>]*>', dom).group(0)
    return re.search(rf'{name}="([^"]*)"', tag).group(1)


def run_config(tmp_path, mini_bench, tiny_models) -> dict:
    prompt = tmp_path / "short_prompt.txt"
    # a short template keeps the tiny byte-level model's prompts (and the test) short
    prompt.write_text("Describe the target image after this change: {modification}")
    return {
        "name": "report-run", "store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
        "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
        "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
        "compose": {"prompt": str(prompt), "shard_size": 16, "sampling": {"temperature": 0.0, "max_tokens": 8}},
        "embed": {"shard_size": 64},
    }


def target_ranks(store: ArtifactStore, doc: dict, variant_filter=lambda s: True) -> list[dict[str, int | None]]:
    """Per retrieve artifact of the run: query -> 1-based rank of its first target (None: not ranked)."""
    out = []
    for s in doc["stages"]:
        if s["stage"] != "retrieve" or not variant_filter(s):
            continue
        ingest = next(x for x in doc["stages"] if x["stage"] == "ingest")
        queries = store.open("ingest", ingest["key"]).read("queries").to_pylist()
        targets = {q["query_id"]: set(q["target_ids"]) for q in queries}
        ranks = {}
        for r in store.open("retrieve", s["key"]).read("data").to_pylist():
            hits = (i + 1 for i, x in enumerate(r["ranked_ids"]) if x in targets[r["query_id"]])
            ranks[r["query_id"]] = next(hits, None)
        out.append(ranks)
    return out


def body(dom: str) -> str:
    """The rendered query rows (the page's script, also in the DOM, holds the row template)."""
    return re.search(r'<tbody id="rows">(.*?)</tbody>', dom, re.S).group(1)


def shown_rows(dom: str) -> set[str]:
    return set(re.findall(r'<tr class="query" data-qid="([^"]+)"', body(dom)))


def failing(ranks: dict, k: int) -> set[str]:
    return {q for q, r in ranks.items() if r is None or r > k}


def test_run_and_comparison_reports_in_chromium(tmp_path, mini_bench, tiny_models, prefect_server):
    base = run_config(tmp_path, mini_bench, tiny_models)
    doc = FLOWS["pefuse"](parse_config(base).model_dump(mode="json"), progress=False)
    report = Path(doc["report"])
    assert report.is_file() and report.parent == Path(doc["output_dir"])
    page = report.read_text()
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched from a network
    store = ArtifactStore(base["store"])
    [ranks] = target_ranks(store, doc)

    dom = browse(report.as_uri(), tmp_path, DOCS / "report-run.png")
    assert attr(dom, "img-status", "data-state") == "loaded", re.search(r'id="img-status"[^<]*', dom).group(0)
    n_img = len(re.findall(r"<img ", body(dom)))
    assert n_img > len(ranks) * 10  # reference + targets + top-10 of every query on the page
    assert attr(dom, "count", "data-shown") == str(len(ranks))
    # the target is marked where the ranking has it, with its rank
    marked = len(re.findall(r'class="t hit target"', body(dom)))
    assert marked == sum(1 for r in ranks.values() if r is not None and r <= 10)
    q, r = next((q, r) for q, r in ranks.items() if r is not None)
    row = re.search(rf'<tr class="query" data-qid="{q}">.*?</tr>', body(dom), re.S).group(0)
    assert f"target rank {r}</div>" in row and "compose_target_text:" in row

    # the failure filter, applied from the URL on load, shows the queries whose target is below rank k
    k = next(k for k in (1, 5, 10, 50) if 0 < len(failing(ranks, k)) < len(ranks))
    dom_f = browse(report.as_uri() + f"#filter=failures&k={k}", tmp_path)
    assert attr(dom_f, "count", "data-matching") == str(len(failing(ranks, k)))
    assert shown_rows(dom_f) == failing(ranks, k)

    # a thumbnail that cannot load is reported by the page (the check above can fail)
    broken = tmp_path / "broken"
    shutil.copytree(report.parent, broken)
    next((broken / "thumbs").iterdir()).unlink()
    assert attr(browse((broken / "report.html").as_uri(), tmp_path), "img-status", "data-state") == "broken"

    # `cirflow report RUN_DIR` rebuilds the page from the store, reusing the thumbnails made by the flow
    thumbs = {p.name: p.stat().st_mtime_ns for p in (report.parent / "thumbs").iterdir()}
    report.unlink()
    assert main(["report", str(report.parent)]) == 0
    assert report.read_text() == page
    assert {p.name: p.stat().st_mtime_ns for p in (report.parent / "thumbs").iterdir()} == thumbs
    assert main(["report", str(tmp_path)]) == 2  # not a run folder: one error line

    # a comparison of two encoders: both side by side per query, and the disagreement filter
    b_enc = {"model": f"local-dir:{tiny_models['encoder_b']}", "device": "cpu", "num_workers": 0}
    grid = {"name": "report-compare", "base": base | {"method": "pefuse"}, "modes": ["t2i"],
            "encoders": [base["encoder"], b_enc]}
    cmp = FLOWS["compare"](CompareConfig.model_validate(grid).model_dump(mode="json"), progress=False)
    cmp_report = Path(cmp["report"])
    variants = [s for s in cmp["stages"] if s["stage"] == "retrieve"]
    assert len(variants) == 2
    ranks_a, ranks_b = target_ranks(store, cmp)
    dom_c = browse(cmp_report.as_uri(), tmp_path, DOCS / "report-compare.png")
    assert attr(dom_c, "img-status", "data-state") == "loaded"
    assert len(re.findall(r'<td class="v ', body(dom_c))) == 2 * len(ranks_a)  # two variant columns per query
    # two random-weight encoders rank differently: for some k one finds a target the other misses
    k = next(k for k in (1, 5, 10, 50) if failing(ranks_a, k) ^ failing(ranks_b, k))
    dom_d = browse(cmp_report.as_uri() + f"#filter=disagree&k={k}", tmp_path)
    assert shown_rows(dom_d) == failing(ranks_a, k) ^ failing(ranks_b, k)
