"""Concurrent identical runs never crash each other (issue 9): 2 and 4 real processes, released at one instant,
run the same MLLM stage (compose_target_text, tiny Qwen2.5-VL, transformers backend) or diffusion stage
(synthesize_images, tiny InstructPix2Pix) on one store, and 4 run the whole PEFUSE i2i flow through
`cirflow run`. All exit 0, and every artifact equals a single run's: table contents (less timing columns) and
the generated PNGs' bytes."""

from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from cirflow.storage import ArtifactStore

sys.path.insert(0, str(Path(__file__).parent))
from together import spawn  # noqa: E402

pytestmark = pytest.mark.slow

TIMING = ("seconds",)  # wall time per row differs between runs by nature; everything else must not

STAGE = textwrap.dedent("""
    import json, os, sys, time
    from cirflow.schemas.diffusion import DiffusionConfig
    from cirflow.schemas.mllm import MLLMConfig, SamplingParams
    from cirflow.storage import ArtifactStore
    from cirflow.tasks.runs import compose_target_text, ingest, synthesize_images
    import cirflow.models.mllm.transformers_backend, cirflow.models.diffusion  # imports before the start line
    kind, root, bench_root, model, prompt, go = sys.argv[1:7]
    while not os.path.exists(go):
        time.sleep(0.002)
    store = ArtifactStore(root)
    bench = ingest.run(store, "cirr", bench_root)
    if kind == "compose":
        art = compose_target_text.run(store, bench, MLLMConfig(backend="transformers", model=model, device="cpu"),
                                      SamplingParams(temperature=0.8, top_p=0.9, max_tokens=6, seed=3),
                                      prompt=prompt, shard_size=2, progress=False, max_failure_rate=1.0)
    else:
        cfg = DiffusionConfig(pipeline="instruct_pix2pix", model=model, resolution=32, num_inference_steps=2,
                              batch_size=2, device="cpu", conditioning="modification")
        art = synthesize_images.run(store, bench, cfg, shard_size=2, progress=False)
    print(json.dumps({"key": art.key, "computed": art.report.shards_computed}))
    sys.stdout.flush()
    os._exit(0)  # skip Arrow's thread-pool teardown at exit (apache/arrow#34314)
""")


def _ok(outs) -> list[dict]:
    for done, doc in outs:
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        assert doc is not None, done.stdout[-2000:]
    return [doc for _, doc in outs]


def same_artifacts(got: ArtifactStore, want: ArtifactStore) -> list[str]:
    """Every artifact of `want` exists in `got` with equal tables (less timing columns) and equal files."""
    compared = []
    for m in want.manifests():
        a, b = got.open(m.stage, m.key), want.open(m.stage, m.key)
        for table in b.manifest.tables():
            ta, tb = a.read(table), b.read(table)
            drop = [c for c in TIMING if c in tb.column_names]
            assert ta.drop_columns(drop).equals(tb.drop_columns(drop)), (m.stage, table)
        files = {f.name: f.sha256 for f in b.manifest.files}
        assert {f.name: f.sha256 for f in a.manifest.files} == files, m.stage
        data = b.read() if "data" in b.manifest.tables() else None
        if data is not None and "file" in data.column_names:  # per-item blobs (generated images): compare bytes
            for r in data.to_pylist():
                if r["file"]:
                    assert _sha(a.file_path(r["file"])) == _sha(b.file_path(r["file"])) == r["sha256"], r["file"]
        compared.append(m.stage)
    return sorted(compared)


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("writers", [2, 4])
@pytest.mark.parametrize("kind", ["compose", "synthesize"])
def test_identical_stage_runs_on_one_store(tmp_path, writers, kind, mini_bench, tiny_models, tiny_ip2p):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    model = tiny_models["mllm"] if kind == "compose" else tiny_ip2p
    args = [str(mini_bench["cirr"]), str(model), str(prompt)]
    outs = _ok(spawn(["-c", STAGE, kind, str(tmp_path / "store"), *args], writers, tmp_path))
    (single,) = _ok(spawn(["-c", STAGE, kind, str(tmp_path / "single"), *args], 1, tmp_path))
    assert {o["key"] for o in outs} == {single["key"]}
    # leases split the work: every shard computed exactly once across the writers (15 shards; synthesize
    # commits each as two files, its images side table and its index)
    assert sum(o["computed"] for o in outs) == single["computed"] == (15 if kind == "compose" else 30)
    store, one = ArtifactStore(str(tmp_path / "store")), ArtifactStore(str(tmp_path / "single"))
    assert store.verify() == []
    stage = "compose_target_text" if kind == "compose" else "synthesize_images"
    assert stage in same_artifacts(store, one)


FLOW = textwrap.dedent("""
    import os, sys, time
    config, go = sys.argv[1:3]
    from cirflow.cli.main import main
    import cirflow.flows.pefuse  # imports before the start line
    while not os.path.exists(go):
        time.sleep(0.002)
    code = main(["run", config, "--json"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
""")


def i2i_config(tmp_path: Path, store: Path, mini_bench, tiny_models, tiny_ip2p) -> Path:
    prompt = tmp_path / "short_prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    doc = {
        "name": "i2i", "method": "pefuse", "mode": "i2i", "store": str(store), "output_dir": str(tmp_path / "runs"),
        "max_failure_rate": 1.0,  # the random-weight MLLM writes unusable texts: counted, never a reason to stop
        "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
        "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
        "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
        "compose": {"prompt": str(prompt), "shard_size": 4, "sampling": {"temperature": 0.0, "max_tokens": 6}},
        "diffusion": {"pipeline": "instruct_pix2pix", "model": str(tiny_ip2p), "device": "cpu", "resolution": 32,
                      "num_inference_steps": 2, "batch_size": 4, "conditioning": "composed"},
        "embed": {"shard_size": 8},
    }
    path = tmp_path / f"{store.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_four_identical_i2i_flows_on_one_store(tmp_path, mini_bench, tiny_models, tiny_ip2p, prefect_server):
    from prefect.settings import PREFECT_API_URL

    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONWARNINGS": "ignore"}  # the session's test server
    many = i2i_config(tmp_path, tmp_path / "store", mini_bench, tiny_models, tiny_ip2p)
    docs = _ok(spawn(["-c", FLOW, str(many)], 4, tmp_path, env=env))
    (single,) = _ok(spawn(["-c", FLOW, str(i2i_config(tmp_path, tmp_path / "single", mini_bench, tiny_models,
                                                       tiny_ip2p))], 1, tmp_path, env=env))
    stages = ["ingest", "compose_target_text", "synthesize_images", "embed_generated", "embed_images", "retrieve",
              "evaluate"]
    for doc in docs:
        assert [s["stage"] for s in doc["stages"]] == stages
        assert [s["key"] for s in doc["stages"]] == [s["key"] for s in single["stages"]]
        assert doc["metrics"] == single["metrics"]
    assert len({doc["output_dir"] for doc in docs}) == 4  # each run its own run folder, even in the same second
    store, one = ArtifactStore(str(tmp_path / "store")), ArtifactStore(str(tmp_path / "single"))
    assert store.verify() == []
    assert same_artifacts(store, one) == sorted(stages)
