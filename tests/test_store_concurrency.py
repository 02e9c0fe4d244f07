"""Concurrent writers on one store never crash each other: 2 and 4 identical processes (real subprocesses,
released at one instant) run the same stage, all finish, split the shards between them (leases), and the
artifact equals a single run's. A synthetic StageRun loop whose shards carry the writer's pid (so two writers'
bytes differ and any torn commit would show), with lazy and eager (`list(pending())`) consumers, and the real
ingest + embed stages with the tiny open_clip model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from cirflow.storage import ArtifactStore, begin
from cirflow.storage.stage_run import Shard
from cirflow.storage.writers import HOST, temp_name

N_ROWS, SHARD = 24, 2  # 12 shards

TOY = textwrap.dedent("""
    import json, os, sys, time
    import pyarrow as pa
    from cirflow.storage import ArtifactStore, begin
    from cirflow.storage.store import sha256_bytes
    root, go, n, size, eager = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
    while not os.path.exists(go):
        time.sleep(0.002)
    run = begin(ArtifactStore(root), "toy", "1", {"a": 1}, inputs={})
    shards = run.pending(n, size)
    for s in (list(shards) if eager else shards):
        files, shas = [], []
        for i in range(s.start, s.stop):
            shas.append(run.write_blob(f"blobs/{i}.bin", f"item {i}".encode())[0])
            files.append(f"blobs/{i}.bin")
        time.sleep(0.05)  # force overlap between the writers
        rows = list(range(s.start, s.stop))
        run.commit(s, pa.table({"x": rows, "writer": [os.getpid()] * len(rows), "file": files, "sha256": shas}))
    run.write_file("summary.json", json.dumps({"n": n}).encode())
    art = run.finish(stats={"n": n})
    print(json.dumps({"computed": run.report.shards_computed, "x": art.read().column("x").to_pylist(),
                      "summary": art.read_json("summary.json")}))
    sys.stdout.flush()
    os._exit(0)  # skip Arrow's thread-pool teardown at exit (apache/arrow#34314: a rare SIGABRT after all work)
""")


def _spawn(script: str, args: list[str], n: int, tmp_path: Path, timeout: float = 300) -> list[dict]:
    """Start `n` copies of `script`, release them together, and return each one's JSON line."""
    go = tmp_path / f"go-{time.monotonic_ns()}"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, args[0], str(go), *args[1:]], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    time.sleep(0.5)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


@pytest.mark.parametrize("eager", [False, True], ids=["lazy", "eager"])
@pytest.mark.parametrize("writers", [2, 4])
def test_identical_writers_split_shards_and_agree(tmp_path, writers, eager):
    root = tmp_path / "store"
    outs = _spawn(TOY, [str(root), str(N_ROWS), str(SHARD), "1" if eager else "0"], writers, tmp_path)
    assert all(o["x"] == list(range(N_ROWS)) and o["summary"] == {"n": N_ROWS} for o in outs)
    # leases: every shard computed exactly once across the writers, and more than one writer did work
    assert sum(o["computed"] for o in outs) == N_ROWS // SHARD
    store = ArtifactStore(str(root))
    assert store.verify() == []
    art = next(iter(store.manifests()))
    assert len({p for p in store.open("toy", art.key).read().column("writer").to_pylist()}) >= 1
    # the artifact equals a single run's (content columns; `writer` is the pid by construction)
    single = _spawn(TOY, [str(tmp_path / "single"), str(N_ROWS), str(SHARD), "0"], 1, tmp_path)[0]
    assert single["computed"] == N_ROWS // SHARD
    one = ArtifactStore(str(tmp_path / "single")).open("toy", art.key).read().drop_columns(["writer"])
    assert store.open("toy", art.key).read().drop_columns(["writer"]).equals(one)


def test_a_dead_writers_lease_and_temporaries_are_taken_over_but_a_live_ones_are_kept(tmp_path):
    store = ArtifactStore(str(tmp_path))
    run = begin(store, "toy", "1", {"a": 1}, inputs={})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    lease_dir = Path(run.dir) / "_leases"
    lease_dir.mkdir(parents=True)
    (lease_dir / "data-00000.parquet.0.json").write_text(
        json.dumps({"host": HOST, "pid": dead_pid, "token": "x", "expires": time.time() + 999}))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (lease_dir / "data-00001.parquet.0.json").write_text(
            json.dumps({"host": HOST, "pid": live.pid, "token": "y", "expires": time.time() + 999}))
        sibling = Path(temp_name(str(Path(run.dir) / "data-00001.parquet")).replace(f".tmp-{os.getpid()}@",
                                                                                    f".tmp-{live.pid}@"))
        stale = Path(temp_name(str(Path(run.dir) / "data-00000.parquet")).replace(f".tmp-{os.getpid()}@",
                                                                                  f".tmp-{dead_pid}@"))
        sibling.write_bytes(b"half")
        stale.write_bytes(b"half")
        run = begin(store, "toy", "1", {"a": 1}, inputs={})
        assert sibling.exists() and not stale.exists()  # only the dead writer's temporary file is cleaned up
        got = []
        for s in run.pending(4, 2):  # shard 0: its writer died, taken over; shard 1: a live writer holds it
            got.append(s.index)
            run.commit(s, pa.table({"x": list(range(s.start, s.stop))}))
            break
        assert got == [0]
    finally:
        live.kill()
        live.wait()
    # once the holder is gone its shard is taken over too
    run = begin(store, "toy", "1", {"a": 1}, inputs={})
    assert [s.index for s in run.pending(4, 2)] == [1]


def test_a_commit_keeps_a_valid_commit_by_another_writer(tmp_path):
    store = ArtifactStore(str(tmp_path))
    first, second = (begin(store, "toy", "1", {"a": 1}, inputs={}) for _ in range(2))
    shard = Shard("data", 0, 0, 2)
    rec = first.commit(shard, pa.table({"x": [0, 1], "who": ["first", "first"]}))
    kept = second.commit(shard, pa.table({"x": [0, 1], "who": ["second", "second"]}))
    assert kept == rec and second.report.shards_computed == 0
    art = first.finish()
    assert second.finish().key == art.key  # the manifest written first is kept
    assert art.read().column("who").to_pylist() == ["first", "first"]


EMBED = textwrap.dedent("""
    import json, os, sys, time
    from cirflow.schemas.encoder import EncoderConfig
    from cirflow.storage import ArtifactStore
    from cirflow.tasks.runs import embed_images, embed_texts, ingest
    root, go, bench_root, model = sys.argv[1:5]
    cfg = EncoderConfig(model=f"local-dir:{model}", device="cpu", num_workers=0, batch_size=4)
    import cirflow.models.encoder  # import before the start line, so the writers overlap in the stages, not in imports
    while not os.path.exists(go):
        time.sleep(0.002)
    store = ArtifactStore(root)
    bench = ingest.run(store, "cirr", bench_root)
    images = embed_images.embed_images(store, bench, cfg, shard_size=2, progress=False, reuse=False)
    texts = embed_texts.embed_texts(store, cfg, bench=bench, shard_size=2, progress=False)
    print(json.dumps({"keys": [bench.key, images.key, texts.key],
                      "computed": [a.report.shards_computed for a in (bench, images, texts)]}))
    sys.stdout.flush()
    os._exit(0)  # see TOY
""")


@pytest.mark.slow
@pytest.mark.parametrize("writers", [2, 4])
def test_identical_ingest_and_embed_runs_on_one_store(tmp_path, writers, mini_bench, tiny_models):
    args = [str(mini_bench["cirr"]), str(tiny_models["encoder"])]
    outs = _spawn(EMBED, [str(tmp_path / "store"), *args], writers, tmp_path, timeout=600)
    assert len({tuple(o["keys"]) for o in outs}) == 1
    single = _spawn(EMBED, [str(tmp_path / "single"), *args], 1, tmp_path, timeout=600)[0]
    assert single["keys"] == outs[0]["keys"]
    # every shard computed once across the writers (a shard is never computed twice)
    assert [sum(o["computed"][i] for o in outs) for i in range(3)] == single["computed"]
    store, one = ArtifactStore(str(tmp_path / "store")), ArtifactStore(str(tmp_path / "single"))
    assert store.verify() == []
    for stage, key in zip(("ingest", "embed_images", "embed_texts"), single["keys"]):
        got, want = store.open(stage, key), one.open(stage, key)
        for table in want.manifest.tables():
            assert got.read(table).equals(want.read(table)), (stage, table)
