"""kill -9 during a build's LLM stage (mvft_texts, sampled decoding, shards of 2), rerun: exactly the rows of an
uninterrupted build, no duplicates, none missing; answers the killed run already got come from the cache."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cirflow.schemas.builds import CollectionSource, MVFTTextConfig
from cirflow.schemas.mllm import MLLMConfig
from cirflow.storage import ArtifactStore
from cirflow.tasks.builds import ingest_collection, mvft_texts

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("builds_common", Path(__file__).with_name("test_builds_common.py"))
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)

SCRIPT = textwrap.dedent("""
    import sys
    from cirflow.schemas.builds import CollectionSource, MVFTTextConfig
    from cirflow.schemas.mllm import MLLMConfig
    from cirflow.storage import ArtifactStore
    from cirflow.tasks.builds import ingest_collection, mvft_texts
    store_root, root, url, cache = sys.argv[1:5]
    store = ArtifactStore(store_root)
    coll = ingest_collection.run(store, CollectionSource(kind="folder", uri=root), progress=False)
    mvft_texts.run(store, coll, MLLMConfig(backend="http", model="m", base_url=url, api_flavor="openai"),
                   MVFTTextConfig(shard_size=2), cache_root=cache, progress=False)
""")


def _build(store_root, root, url, cache):
    store = ArtifactStore(str(store_root))
    coll = ingest_collection.run(store, CollectionSource(kind="folder", uri=str(root)), progress=False)
    return mvft_texts.run(store, coll, MLLMConfig(backend="http", model="m", base_url=url, api_flavor="openai"),
                          MVFTTextConfig(shard_size=2), cache_root=str(cache), progress=False)


def test_kill9_then_resume_equals_uninterrupted(tmp_path):
    root = bc.make_collection(tmp_path / "c")
    srv = bc.CannedLLM(delay=0.1)
    try:
        killed = tmp_path / "killed"
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(killed), str(root), srv.url, str(killed / "_cache")],
                                env=os.environ | {"HF_HUB_OFFLINE": "1"})
        commits: list[Path] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            commits = list(killed.glob("mvft_texts/*/_commits/*.json"))
            if len(commits) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the build finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert 3 <= len(commits) < 14 and not list(killed.glob("mvft_texts/*/_manifest.json"))

        asked_before = srv.total()
        resumed = _build(killed, root, srv.url, killed / "_cache")
        assert resumed.report.status == "resumed" and resumed.report.shards_skipped >= 3
        assert resumed.report.shards_computed + resumed.report.shards_skipped == 14
        # committed shards are not asked again; answers of the interrupted shard come from the cache
        assert srv.total() - asked_before <= 2 * (14 - resumed.report.shards_skipped) * 2
        assert resumed.manifest.stats["ok"] == 28 and srv.total() - asked_before < 56

        srv.delay = 0.0
        clean = _build(tmp_path / "clean", root, srv.url, tmp_path / "clean_cache")
        assert clean.report.status == "computed" and clean.key == resumed.key
        got, want = (a.read().drop_columns(["seconds"]).to_pylist() for a in (resumed, clean))
        assert got == want and len({r["image_id"] for r in got}) == len(got) == 28
    finally:
        srv.close()
