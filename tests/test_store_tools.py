"""`cirflow store head | export | rm | gc` on a store shared by two real PEFUSE runs (tiny random-weight models,
the generated mini benchmark): the runs share ingest and compose_target_text and differ in the encoder, so each
owns its embeddings, rankings and evaluation; a build shares the store. Also: every run folder keeps its resolved
config."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import yaml

from cirflow.cli.main import main
from cirflow.cli.run import run_config
from cirflow.flows.registry import load_config, parse_config
from cirflow.storage import ArtifactStore, index

_spec = importlib.util.spec_from_file_location("builds_common", Path(__file__).with_name("test_builds_common.py"))
bc = importlib.util.module_from_spec(_spec)  # make_collection(), CannedLLM: the build tests' collection and LLM
_spec.loader.exec_module(bc)

pytestmark = pytest.mark.slow


def _config(tmp: Path, mini_bench, tiny_models, encoder: str):
    prompt = tmp / "prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    return parse_config({
        "name": f"run-{encoder}", "store": str(tmp / "store"), "output_dir": str(tmp / "runs"),
        "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
        "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
        "encoder": {"model": f"local-dir:{tiny_models[encoder]}", "device": "cpu", "num_workers": 0},
        "compose": {"prompt": str(prompt), "shard_size": 16, "sampling": {"temperature": 0.0, "max_tokens": 6}},
        "embed": {"shard_size": 32},
    })


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, mini_bench, tiny_models, prefect_server):
    tmp = tmp_path_factory.mktemp("two-runs")
    docs = {e: run_config(_config(tmp, mini_bench, tiny_models, e), progress=False) for e in ("encoder", "encoder_b")}
    return tmp, docs


@pytest.fixture
def shared(two_runs, tmp_path):
    """A private copy of the two runs' store and run folders (each test removes things)."""
    src, docs = two_runs
    for name in ("store", "runs"):
        shutil.copytree(src / name, tmp_path / name)
    keys = {e: {s["key"] for s in d["stages"]} for e, d in docs.items()}
    folders = {e: tmp_path / "runs" / Path(d["output_dir"]).relative_to(src / "runs") for e, d in docs.items()}
    return tmp_path, keys, folders


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["store", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def stored(root: Path) -> set[str]:
    return {m.key for m in ArtifactStore(str(root)).manifests()}


def computed_from(manifests: dict, key: str) -> set[str]:
    """`key` and every artifact whose manifest inputs reach it."""
    out = {key}
    while grown := {m.key for m in manifests.values() if set(m.inputs.values()) & out} - out:
        out |= grown
    return out


def test_run_folder_keeps_the_resolved_config(two_runs, tiny_models):
    _, docs = two_runs
    for enc, doc in docs.items():
        cfg = yaml.safe_load((Path(doc["output_dir"]) / "config.resolved.yaml").read_text())
        assert cfg["encoder"]["model"] == f"local-dir:{tiny_models[enc]}" and cfg["embed"]["shard_size"] == 32
        rev = cfg["model_revisions"]
        assert rev["encoder"]["revision"].startswith("sha256:") or len(rev["encoder"]["revision"]) >= 16
        assert rev["mllm"]["model"] == str(tiny_models["mllm"]) and "revision" in rev["mllm"]
    revs = [yaml.safe_load((Path(d["output_dir"]) / "config.resolved.yaml").read_text())["model_revisions"]
            for d in docs.values()]
    assert revs[0]["encoder"]["revision"] != revs[1]["encoder"]["revision"]  # different weights, different pin


def test_gc_keeps_what_a_run_references(shared, capsys):
    tmp, keys, folders = shared
    root = str(tmp / "store")
    both = keys["encoder"] & keys["encoder_b"]
    assert both and keys["encoder"] - both and keys["encoder_b"] - both  # the store really is shared
    before = stored(tmp / "store")
    assert before == keys["encoder"] | keys["encoder_b"]

    # both runs referenced: nothing to collect
    rc, out, _ = cli(capsys, "gc", "--root", root, "--runs", str(tmp / "runs"))
    assert rc == 0 and out.startswith("0 artifact(s) removed") and stored(tmp / "store") == before

    shutil.rmtree(folders["encoder_b"])  # run B's folder is gone: only A's artifacts (and their inputs) stay
    only_b = keys["encoder_b"] - keys["encoder"]
    rc, out, _ = cli(capsys, "gc", "--root", root, "--runs", str(tmp / "runs"), "--dry-run")
    assert rc == 0 and stored(tmp / "store") == before
    assert {line.split()[2].split("/")[1] for line in out.splitlines() if line.startswith("would remove")} \
        == {k[:12] for k in only_b}
    rc, out, _ = cli(capsys, "gc", "--root", root, "--runs", str(tmp / "runs"))
    assert rc == 0 and f"{len(only_b)} artifact(s) removed" in out
    assert stored(tmp / "store") == keys["encoder"]
    rc, out, _ = cli(capsys, "verify", "--root", root)
    assert rc == 0 and out.startswith(f"ok: {len(keys['encoder'])} artifact(s)")

    # no run folder at all under --runs: refused, not "remove everything"
    rc, _, err = cli(capsys, "gc", "--root", root, "--runs", str(tmp / "nowhere"))
    assert rc != 0 and err.startswith("cirflow: error: no summary.json under") and stored(tmp / "store") == keys["encoder"]


def test_rm_removes_dependents_transitively(shared, capsys):
    tmp, keys, _ = shared
    root = str(tmp / "store")
    store = ArtifactStore(root)
    manifests = {m.key: m for m in store.manifests()}
    # a root both runs share (an artifact with no inputs): everything computed from it, directly or not, goes too
    shared_root = next(k for k in keys["encoder"] & keys["encoder_b"] if not manifests[k].inputs)
    expect = computed_from(manifests, shared_root)
    assert len(expect) > len(keys["encoder"]) // 2
    rc, out, _ = cli(capsys, "rm", shared_root[:10], "--root", root, "--dry-run")
    assert rc == 0 and stored(tmp / "store") == set(manifests)
    listed = [ln.split()[2].split("/")[1] for ln in out.splitlines() if ln.startswith("would remove")]
    assert set(listed) == {k[:12] for k in expect} and len(listed) == len(expect)
    assert out.splitlines()[len(expect) - 1].endswith("(requested)")  # dependents are listed (and removed) first

    # one run's own embedding: its rankings and evaluation go with it, the other run is untouched
    b_only = keys["encoder_b"] - keys["encoder"]
    emb = next(k for k in b_only if manifests[k].stage.startswith("embed") and
               any(k in manifests[d].inputs.values() for d in b_only))
    expect = computed_from(manifests, emb)
    rc, out, _ = cli(capsys, "rm", emb, "--root", root)
    assert rc == 0 and f"{len(expect)} artifact(s) removed" in out and len(expect) >= 3
    assert stored(tmp / "store") == set(manifests) - expect
    assert keys["encoder"] <= stored(tmp / "store")
    rc, _, _ = cli(capsys, "verify", "--root", root)
    assert rc == 0


def test_gc_keeps_a_build_beside_a_run_and_rm_drops_index_markers(shared, capsys):
    """A build (MVFT-style, the build tests' stand-in LLM) writes its run folder beside the runs': `gc --runs`
    keeps its artifacts with no release folder named; what rm / gc remove leaves no key-index marker behind."""
    tmp, keys, folders = shared
    root = str(tmp / "store")
    runs = keys["encoder"] | keys["encoder_b"]
    srv = bc.CannedLLM()
    try:
        cfg = {"name": "mvft-gc", "store": root, "output_dir": str(tmp / "runs"),
               "collection": {"kind": "folder", "uri": str(bc.make_collection(tmp / "collection"))},
               "mllm": {"backend": "http", "model": "m", "base_url": srv.url, "api_flavor": "openai"},
               "texts": {"shard_size": 8}, "captions": {"shard_size": 8}}
        (tmp / "build.yaml").write_text(yaml.safe_dump(cfg))
        doc = run_config(load_config(str(tmp / "build.yaml"), "build_mvft"), progress=False)
    finally:
        srv.close()
    built = set(doc["artifacts"].values())
    assert len(built) == 3 and stored(tmp / "store") == runs | built
    assert Path(doc["output_dir"]).parent == tmp / "runs" / "mvft-gc"

    shutil.rmtree(folders["encoder_b"])  # run B is gone; run A and the build stay referenced
    rc, out, _ = cli(capsys, "gc", "--root", root, "--runs", str(tmp / "runs"))
    assert rc == 0 and stored(tmp / "store") == keys["encoder"] | built

    store = ArtifactStore(root)
    markers = {(s, k): Path(index.marker_path(store, s, k)) for s, k in index.entries(store)}
    assert {k for _, k in markers} == keys["encoder"] | built  # gc took B's markers with B's artifacts
    caps = next(k for k in built if store.find(k).stage == "caption_collection")
    assert markers[("caption_collection", caps)].is_file()
    rc, out, _ = cli(capsys, "rm", caps[:12], "--root", root)
    assert rc == 0 and out.startswith("removed caption_collection/")
    assert not markers[("caption_collection", caps)].exists()
    assert all(p.is_file() for (_, k), p in markers.items() if k != caps)
    rc, _, err = cli(capsys, "show", caps[:12], "--root", root)
    assert rc != 0 and err.strip() == f"cirflow: error: no artifact with key {caps[:12]!r} in {root}"
    rc, _, _ = cli(capsys, "verify", "--root", root)
    assert rc == 0


def test_head_and_export(shared, capsys):
    tmp, keys, _ = shared
    root = str(tmp / "store")
    store = ArtifactStore(root)
    ev = next(m for m in store.manifests() if m.stage == "evaluate" and m.key in keys["encoder"])
    rc, out, _ = cli(capsys, "head", ev.key[:12], "-n", "3", "--root", root)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split()[:3] == ["group", "metric", "value"] and len(lines) == 2 + 3
    rows = store.open("evaluate", ev.key).read().to_pylist()[:3]
    assert [ln.split()[1] for ln in lines[2:]] == [r["metric"] for r in rows]
    rc, out, _ = cli(capsys, "head", ev.key[:12], "--table", "nope", "--root", root)
    assert rc != 0

    rc, out, _ = cli(capsys, "export", ev.key[:12], "--to", str(tmp / "exported"), "--root", root)
    assert rc == 0 and "(verified)" in out
    copy = ArtifactStore(str(tmp / "exported"))
    assert copy.verify() == [] and copy.open("evaluate", ev.key).read().equals(store.open("evaluate", ev.key).read())

    # a corrupt shard is never exported
    shard = store.path("evaluate", ev.key, ev.shards[0].name)
    Path(shard).write_bytes(Path(shard).read_bytes()[:-8])
    rc, _, err = cli(capsys, "export", ev.key[:12], "--to", str(tmp / "exported2"), "--root", root)
    assert rc != 0 and "does not verify" in err and not (tmp / "exported2").exists()


@pytest.mark.parametrize("cmd", [["head", "abc"], ["export", "abc", "--to", "x"], ["rm", "abc"], ["gc"]])
def test_root_that_is_not_a_store(tmp_path, capsys, cmd):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a store")
    rc, out, err = cli(capsys, *cmd, "--root", str(tmp_path / "notes"))
    assert rc != 0 and out == ""
    assert err.strip() == f"cirflow: error: {tmp_path / 'notes'} is not an artifact store (no <stage>/<key>/ folders in it)"
    rc, _, err = cli(capsys, *cmd, "--root", str(tmp_path / "missing"))
    assert rc != 0 and err.strip() == f"cirflow: error: store root {tmp_path / 'missing'} does not exist"
