"""`cirflow demo --method M` for every method of demo/methods.py, as a user runs it: the real CLI in a subprocess
(its own temporary Prefect server), offline on CPU, with the tiny models each method needs. Each exits 0, leaves
the config it ran in WORKDIR/configs/, and prints its report: metrics for retrieval methods, counts for refine,
stages and the release for dataset builds (loadable by `datasets.load_dataset(dir)`); IP-CIR draws proxy images
from the layouts the random model wrote under the layout schema. The demos share one workdir, so tiny models and
the mini benchmark are built once, as for a user who tries one demo after another."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cirflow.demo.methods import METHODS
from cirflow.storage import ArtifactStore
from cirflow.storage.item_files import ItemFiles

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "cirflow.cli.main"]

# what each report must show: the benchmark's metric names, or the stages a build ran
EXPECTED = {
    "pefuse": ["synthesize_images", "recall@1", "recall_subset@1"],
    "cirevl": ["rewrite_caption", "recall@1", "recall_subset@1"],
    "ldre": ["ldre_query", "recall@1"],
    "ip_cir": ["plan_layout", "synthesize_proxies", "robust_proxy", "map@5", "map@50"],
    "build_mtcir": ["pair_groups", "mtcir_texts", "ok failed", "release:"],  # JSON texts: constrained decoding
    "build_instructcir": ["random_pairs", "instructcir_texts", "ok failed", "release:"],
    "build_mvft": ["mvft_texts", "caption_collection", "ok failed", "release:"],
}


def _assert_proxies_drawn(store: ArtifactStore) -> None:
    """Constrained decoding gives the random MLLM valid layout JSON: some layouts pass the layout rules (boxes
    with x1 < x2 and y1 < y2) and GLIGEN draws proxy images from them."""
    (layouts,) = [m for m in store.manifests() if m.stage == "plan_layout"]
    assert layouts.stats["ok"] > 0, layouts.stats
    ok = [r for r in store.open("plan_layout", layouts.key).read().to_pylist() if r["status"] == "ok"]
    assert all(0 <= v <= 1 for r in ok for i in json.loads(r["layout_json"])["instances"] for v in i["box"])
    (proxies,) = [m for m in store.manifests() if m.stage == "synthesize_proxies"]
    art = store.open("synthesize_proxies", proxies.key)
    drawn = [r for r in art.read().to_pylist() if r["status"] == "ok"]
    assert {r["id"] for r in drawn} == {r["id"] for r in ok}, proxies.stats  # every ok layout is drawn
    files = ItemFiles(art)
    for r in drawn:
        assert Image.open(io.BytesIO(files.read(r))).size == (32, 32)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo-methods")


def _env(home: Path) -> dict:
    # each demo starts its own temporary Prefect server, as from a user's shell: none of pytest's settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("method", METHODS)
def test_demo_of_every_method_runs_offline_and_reports(method, workdir, tmp_path):
    t0 = time.monotonic()
    out = subprocess.run([*CLI, "demo", "--method", method, "--workdir", str(workdir)], env=_env(tmp_path),
                         capture_output=True, text=True, timeout=400)
    print(f"\ncirflow demo --method {method}: {time.monotonic() - t0:.1f} s\n{out.stdout}")
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "Traceback" not in out.stderr and "cirflow: error" not in out.stderr, out.stderr[-3000:]

    config = yaml.safe_load((workdir / "configs" / f"{method}.yaml").read_text())
    assert config["method"] == method  # ran through the registry as this method's own config class

    if method == "refine":
        counts = json.loads(out.stdout[out.stdout.index("{"):])["counts"]["cirr"]
        # every mini-CIRR query is accounted for (random weights: most or all removed)
        assert counts["total"] == 30 == counts["kept"] + counts["revised"] + counts["removed"], counts
        return
    for shown in EXPECTED[method]:
        assert shown in out.stdout, (shown, out.stdout[-3000:])
    if "release" in config:
        release = Path(config["release"]["out_dir"])
        assert (release / "README.md").is_file() and list((release / "data").glob("*.parquet"))
        import datasets

        ds = datasets.load_dataset(str(release), cache_dir=str(tmp_path / "hf"))["train"]
        assert ds.num_rows > 0
    if method == "ip_cir":
        _assert_proxies_drawn(ArtifactStore(config["store"]))
    if not method.startswith("build_"):
        assert "metrics (percent)" in out.stdout and "run folder:" in out.stdout
