"""Kill -9 during compose_target_text, rerun: committed shards are skipped and the result equals an
uninterrupted run's (sampled decoding, so this also checks per-item seeds are independent of resumption)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.storage import ArtifactStore
from cirflow.tasks.runs import compose_target_text, ingest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import sys
    from cirflow.schemas.mllm import MLLMConfig, SamplingParams
    from cirflow.storage import ArtifactStore
    from cirflow.tasks.runs import compose_target_text, ingest
    store_root, data_root, model, prompt = sys.argv[1:5]
    store = ArtifactStore(store_root)
    bench = ingest.run(store, "cirr", data_root)
    compose_target_text.run(store, bench, MLLMConfig(backend="transformers", model=model, device="cpu"),
                            SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=12, seed=7),
                            prompt=prompt, shard_size=2, progress=False)
""")


def _compose(store_root, mini_bench, tiny_models, prompt):
    store = ArtifactStore(str(store_root))
    bench = ingest.run(store, "cirr", str(mini_bench["cirr"]))
    return compose_target_text.run(
        store, bench, MLLMConfig(backend="transformers", model=str(tiny_models["mllm"]), device="cpu"),
        SamplingParams(temperature=0.8, top_p=0.9, top_k=50, max_tokens=12, seed=7),
        prompt=str(prompt), shard_size=2, progress=False)


def _content(art):
    return art.read().drop_columns(["seconds"]).to_pylist()


def test_kill9_then_resume_equals_uninterrupted(tmp_path, mini_bench, tiny_models):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    killed_store = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(killed_store), str(mini_bench["cirr"]),
                             str(tiny_models["mllm"]), str(prompt)], env=os.environ | {"HF_HUB_OFFLINE": "1"})
    commits: list[Path] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        commits = list(killed_store.glob("compose_target_text/*/_commits/*.json"))
        if len(commits) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the composition finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(commits) < 15
    assert not list(killed_store.glob("compose_target_text/*/_manifest.json"))

    resumed = _compose(killed_store, mini_bench, tiny_models, prompt)
    assert resumed.report.status == "resumed"
    assert resumed.report.shards_skipped >= 3
    assert resumed.report.shards_computed + resumed.report.shards_skipped == 15

    clean = _compose(tmp_path / "clean", mini_bench, tiny_models, prompt)
    assert clean.report.status == "computed" and clean.key == resumed.key
    assert _content(resumed) == _content(clean)
    assert resumed.manifest.stats["items"] == 30 and resumed.manifest.stats == clean.manifest.stats | {
        "model_seconds_per_item": resumed.manifest.stats["model_seconds_per_item"]}
