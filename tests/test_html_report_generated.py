"""report.html of a PEFUSE image→image run (tiny InstructPix2Pix): the generated query images, stored as Parquet
image side-table shards (storage/item_files.py), get thumbnails in thumbs/ that load in headless Chromium.
tests/test_html_report.py covers text-only runs; this is the path that reads images back out of an artifact."""

from __future__ import annotations

import io
import re
import shutil
import sys
from pathlib import Path

import pytest
from cirflow.cli.main import main
from cirflow.flows.plan import answer_from_store
from cirflow.flows.registry import parse_config
from cirflow.flows.report_html.thumbs import SIZE
from cirflow.storage import ArtifactStore
from cirflow.storage.item_files import ItemFiles
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from test_html_report import attr, body, browse, run_config  # noqa: E402

pytestmark = pytest.mark.slow


def test_generated_image_thumbnails_load_in_chromium(tmp_path, mini_bench, tiny_models, tiny_ip2p):
    cfg = run_config(tmp_path, mini_bench, tiny_models) | {
        "method": "pefuse", "mode": "i2i", "max_failure_rate": 1.0,
        "diffusion": {"pipeline": "instruct_pix2pix", "model": str(tiny_ip2p), "device": "cpu", "resolution": 32,
                      "num_inference_steps": 2, "batch_size": 8, "conditioning": "composed"}}
    # the flow body run directly (as the CLI's store shortcut runs it): the same stages, summary and report,
    # without starting a Prefect server
    doc = answer_from_store(parse_config(cfg))
    report = Path(doc["report"])
    store = ArtifactStore(cfg["store"])
    [synth] = [s for s in doc["stages"] if s["stage"] == "synthesize_images"]
    art = store.open("synthesize_images", synth["key"])
    rows = art.read("data").to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["file"] is None for r in ok)  # every image lives in an images-<k>.parquet side table
    assert any(s.table == "images" for s in art.manifest.shards)

    # one thumbnail per generated image, made from the stored bytes (named by their sha256)
    files = ItemFiles(art)
    for r in ok:
        thumb = report.parent / "thumbs" / f"g{r['sha256'][:20]}.jpg"
        assert thumb.is_file(), thumb
        with Image.open(thumb) as t, Image.open(io.BytesIO(files.read(r))) as full:
            assert t.format == "JPEG" and 0 < min(t.size) and max(t.size) <= SIZE
            if max(full.size) <= SIZE:  # a small image is never enlarged
                assert t.size == full.size

    dom = browse(report.as_uri(), tmp_path)
    shown = re.findall(r'<img class="t" src="(thumbs/g[0-9a-f]{20}\.jpg)"', body(dom))
    queries = int(attr(dom, "count", "data-shown"))
    by_query = {r["id"] for r in ok}
    assert len(shown) >= min(queries, len(by_query)) > 0  # the generated query image sits in its query's row
    assert {f"thumbs/g{r['sha256'][:20]}.jpg" for r in ok} >= set(shown)
    # every <img> on the page, generated ones included, finished loading with naturalWidth > 0
    assert attr(dom, "img-status", "data-state") == "loaded", re.search(r'id="img-status"[^<]*', dom).group(0)

    # the check can fail: without one generated thumbnail the page reports a broken image
    broken = tmp_path / "broken"
    shutil.copytree(report.parent, broken)
    (broken / shown[0]).unlink()
    assert attr(browse((broken / "report.html").as_uri(), tmp_path), "img-status", "data-state") == "broken"

    # `cirflow report` rebuilds the page from the store and remakes a lost generated thumbnail from the side table
    (report.parent / shown[0]).unlink()
    assert main(["report", str(report.parent)]) == 0
    assert (report.parent / shown[0]).is_file()
    assert attr(browse(report.as_uri(), tmp_path), "img-status", "data-state") == "loaded"
