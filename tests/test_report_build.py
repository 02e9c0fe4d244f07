"""report.html of an MTCIR build (`cirflow build mtcir`: the generated collection with a corrupt file, the tiny
random-weight CLIP for pairing, the stand-in LLM of the build tests answering valid, malformed and refused JSON),
opened in headless Chromium: a screenshot for docs/, and DOM checks that every image loaded, that the stage
table's kept / failed counts are the store's, and that the failures filter shows exactly the failed rows."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from cirflow.cli.main import main
from cirflow.cli.run import run_config
from cirflow.flows.registry import get, load_config
from cirflow.storage import ArtifactStore

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


hr = _sibling("test_html_report")  # chromium(), browse(), attr()
bc = _sibling("test_builds_common")  # make_collection(), CannedLLM

WIDE = {"min_similarity": -1.0, "max_similarity": 1.0, "spacing": 0.0, "exclusive": True}


def body(dom: str) -> str:
    return re.search(r'<tbody id="rows">(.*?)</tbody>', dom, re.S).group(1)


def shown(dom: str) -> list[str]:
    return re.findall(r'<tr class="triplet [a-z]+" data-rid="([^"]+)"', body(dom))


def stage_cells(dom: str) -> dict[str, list[str]]:
    """stage -> its row of the page's stage table (cell texts)."""
    table = re.search(r'<div id="stages">(.*?)</div>', dom, re.S).group(1)
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", table)]
    return {r[1]: r for r in rows if r}


def test_build_report_in_chromium(tmp_path, tiny_models, prefect_server, capsys):
    hr.chromium()  # skip (or fail on CI) before building anything
    coll = bc.make_collection(tmp_path / "collection")
    srv = bc.CannedLLM()
    try:
        cfg = {"name": "report-build", "store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"),
               "collection": {"kind": "folder", "uri": str(coll)},
               "mllm": {"backend": "http", "model": "m", "base_url": srv.url, "api_flavor": "openai"},
               "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
               "pairing": WIDE, "captions": {"shard_size": 8}, "texts": {"shard_size": 8}}
        path = tmp_path / "build.yaml"
        path.write_text(yaml.safe_dump(cfg))
        # as `cirflow build mtcir` runs it, less the preflight's server check (the stand-in serves chat only)
        doc = run_config(load_config(str(path), "build_mtcir"), progress=False)
    finally:
        srv.close()
    get("build_mtcir").report(doc, False)
    assert f"run folder: {doc['output_dir']} (report.html)" in capsys.readouterr().out.splitlines()
    run_dir = Path(doc["output_dir"])
    report = Path(doc["report"])
    assert report.is_file() and report.parent == run_dir and run_dir.parent == tmp_path / "runs" / "report-build"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["artifacts"].values()) == set(doc["artifacts"].values())
    assert yaml.safe_load((run_dir / "config.resolved.yaml").read_text())["pairing"]["exclusive"] is True
    page = report.read_text()
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched from a network

    # what the store says: per stage kept / failed from its tables (and its manifest agrees), every row's id
    store = ArtifactStore(cfg["store"])
    arts = {store.find(k).stage: store.find(k) for k in doc["artifacts"].values()}
    col, emb, pairs, caps, texts = (arts[s] for s in ("ingest_collection", "embed_images", "pair_groups",
                                                      "caption_collection", "mtcir_texts"))
    cap_rows, text_rows = caps.read().to_pylist(), texts.read().to_pylist()
    requests = texts.read("requests").to_pylist()
    expect = {
        "ingest_collection": (col.read("images").num_rows, col.read("failures").num_rows),
        "embed_images": (emb.read().num_rows, emb.read("failures").num_rows),
        "pair_groups": (pairs.read("pairs").num_rows, None),
        "caption_collection": (sum(r["status"] == "ok" for r in cap_rows), sum(r["status"] != "ok" for r in cap_rows)),
        "mtcir_texts": (sum(r["status"] == "ok" for r in requests), sum(r["status"] != "ok" for r in requests)),
    }
    st = {s: a.manifest.stats for s, a in arts.items()}
    assert expect["ingest_collection"] == (st["ingest_collection"]["images"], st["ingest_collection"]["failed"])
    assert expect["ingest_collection"] == (28, 1)  # the generated collection: one corrupt JPEG
    assert expect["mtcir_texts"] == (st["mtcir_texts"]["ok"], st["mtcir_texts"]["failed"])
    assert expect["caption_collection"] == (st["caption_collection"]["ok"], st["caption_collection"]["failed"])
    kept = [f"{r['pair_id']}/{r['direction']}/{r['index']}" for r in text_rows if r["status"] == "ok"]
    failed = ({r["pair_id"] for r in requests if r["status"] != "ok"}
              | {f"{r['pair_id']}/{r['direction']}/{r['index']}" for r in text_rows if r["status"] != "ok"}
              | {f"file:{r['path']}" for r in col.read("failures").to_pylist()}
              | {f"caption:{r['id']}" for r in cap_rows if r["status"] != "ok"})
    assert expect["mtcir_texts"][1] > 0 and any(r["status"] != "ok" for r in text_rows)  # there is something to filter
    assert len(kept) + len(failed) > 50  # more than one page

    dom = hr.browse(report.as_uri(), tmp_path, DOCS / "report-build.png")
    assert hr.attr(dom, "img-status", "data-state") == "loaded", re.search(r'id="img-status"[^<]*', dom).group(0)
    assert len(re.findall(r"<img ", body(dom))) == 2 * 50  # reference + target of every triplet on page 1
    cells = stage_cells(dom)
    for stage, (k, f) in expect.items():
        assert cells[stage][3:5] == [str(k), "" if f is None else str(f)], (stage, cells[stage])
    assert hr.attr(dom, "count", "data-matching") == str(len(kept) + len(failed))
    row = re.search(rf'<tr class="triplet kept" data-rid="{kept[0]}">.*?</tr>', body(dom), re.S).group(0)
    ok0 = next(r for r in text_rows if r["status"] == "ok")
    assert f"<b>modification:</b> {ok0['text']}</div>" in row and "<b>reference caption:</b>" in row

    # page 2 holds the rest; the kept filter shows the kept triplets
    dom2 = hr.browse(report.as_uri() + "#filter=all&page=2", tmp_path)
    assert set(shown(dom)) | set(shown(dom2)) == set(kept) | failed and not set(shown(dom)) & set(shown(dom2))
    dom_k = hr.browse(report.as_uri() + "#filter=kept", tmp_path)
    assert hr.attr(dom_k, "count", "data-matching") == str(len(kept))

    # the failures filter: exactly the failed rows, each with its reason
    dom_f = hr.browse(report.as_uri() + "#filter=failures", tmp_path)
    assert hr.attr(dom_f, "img-status", "data-state") == "loaded"
    assert set(shown(dom_f)) == failed and len(shown(dom_f)) == len(failed)
    assert len(re.findall(r'class="out bad reason"', body(dom_f))) == len(failed)
    assert "Truncated File Read" in body(dom_f)  # the corrupt file's reason

    # a thumbnail that cannot load is reported by the page (the image check above can fail)
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / re.search(r'<img [^>]*src="(thumbs/[^"]+)"', body(dom)).group(1)).unlink()  # one on page 1
    assert hr.attr(hr.browse((broken / "report.html").as_uri(), tmp_path), "img-status", "data-state") == "broken"

    # `cirflow report RUN_DIR` rebuilds the page from the store, reusing the thumbnails made by the build
    thumbs = {p.name: p.stat().st_mtime_ns for p in (run_dir / "thumbs").iterdir()}
    report.unlink()
    assert main(["report", str(run_dir)]) == 0
    assert report.read_text() == page
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "thumbs").iterdir()} == thumbs

    # the Prefect run links the report
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [art] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["report-build-build"])))
    assert report.resolve().as_uri() in art.data and "mtcir_texts" in art.data
