"""The store on an S3-compatible object store: a local S3 server process (moto_server) spoken to over HTTP by
s3fs, exactly as a GPU worker would speak to its team's bucket. Shard commits, verification, corruption
detection and a whole PEFUSE T→I run with its store in the bucket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cirflow.storage import ArtifactStore
from cirflow.storage.store import StoreError

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "server.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    # credentials come from the environment, never from configs or manifests
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="cirflow-test", AWS_SECRET_ACCESS_KEY="cirflow-test-secret",
                      AWS_DEFAULT_REGION="us-east-1")
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": url}).mkdir("cirflow-bucket")
    yield url
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_shards_verify_and_corruption_on_s3(s3_endpoint):
    import pyarrow as pa

    from cirflow.storage import begin

    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    store = ArtifactStore("s3://cirflow-bucket/unit", opts)
    run = begin(store, "toy", "1", {"a": 1}, inputs={})
    for sh in run.pending(10, 4):
        run.commit(sh, pa.table({"x": list(range(sh.start, sh.stop))}))
    art = run.finish()
    again = begin(ArtifactStore("s3://cirflow-bucket/unit", opts), "toy", "1", {"a": 1}, inputs={})
    assert again.cached and again.artifact.read().column("x").to_pylist() == list(range(10))
    assert store.verify() == []
    # overwrite one shard in the bucket: detected by checksum, never read, recomputed by the next run
    store.fs.pipe(art.file_path(art.manifest.shards[0].name), b"not parquet")
    assert [p.name for p in store.verify()] == ["data-00000.parquet"]
    with pytest.raises(StoreError, match="checksum"):
        store.open("toy", art.key).read()
    redo = begin(store, "toy", "1", {"a": 1}, inputs={})
    assert not redo.cached and [s.index for s in redo.pending(10, 4)] == [0]


def test_pefuse_t2i_with_the_store_in_a_bucket(tmp_path, s3_endpoint, mini_bench, tiny_models, prefect_server):
    from cirflow.cli.run import run_config
    from cirflow.schemas.config import parse_config

    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    cfg = parse_config({
        "name": "s3-run", "store": "s3://cirflow-bucket/store",
        "storage_options": {"client_kwargs": {"endpoint_url": s3_endpoint}}, "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "circo", "data_root": str(mini_bench["circo"]), "split": "val"},
        "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
        "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
        "compose": {"prompt": str(prompt), "sampling": {"temperature": 0.0, "max_tokens": 6}},
    })
    first = run_config(cfg, progress=False)
    assert {s["status"] for s in first["stages"]} == {"computed"} and "map@10" in first["metrics"]
    second = run_config(cfg, progress=False)
    assert {s["status"] for s in second["stages"]} == {"cached"} and second["metrics"] == first["metrics"]
    store = ArtifactStore("s3://cirflow-bucket/store", cfg.storage_options)
    manifests = list(store.manifests())
    assert len(manifests) == 6
    # no credential reaches a manifest
    assert not any("cirflow-test-secret" in m.model_dump_json() for m in manifests)
