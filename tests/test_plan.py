"""`--plan` (flows/plan.py, tasks/plan_mode.py): every stage with the key a run would use and whether it would be
computed, resumed or cached — loading no model and starting no Prefect server — and the store shortcut of a
run with nothing to compute.

"Loads no model" is checked by making loading impossible: after the first run the tiny models' weight files
are overwritten with garbage of the same size and mtime. Their hashes come from the (path, size, mtime) cache,
so the keys stay the same, but any model load would fail on the garbage. "Starts no server" is checked in a
fresh `cirflow` process without PREFECT_API_URL: an audit hook records every process it spawns, and Prefect's
server module must never be imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from cirflow.schemas.config import parse_config

PROBE = r"""
import json, sys
spawned = []
sys.addaudithook(lambda event, args: spawned.append(event + " " + str(args[0])[:80])
                 if event in ("subprocess.Popen", "os.posix_spawn", "os.fork", "os.system") else None)
from cirflow.cli.main import main
code = main(sys.argv[1:])
sys.stdout.flush()
print("PROBE " + json.dumps({"code": code, "spawned": spawned,
                             "server": "prefect.server.api.server" in sys.modules}), file=sys.stderr)
"""


def _config(tmp_path: Path, mini_bench, tiny_models) -> tuple[Path, dict]:
    models = tmp_path / "models"  # copies: their weights are spoiled below, the session's models must stay good
    mllm = shutil.copytree(tiny_models["mllm"], models / "mllm")
    enc = shutil.copytree(tiny_models["encoder"], models / "encoder")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    doc = {"name": "plan", "method": "pefuse_t2i", "store": str(tmp_path / "store"),
           "output_dir": str(tmp_path / "runs"),
           "benchmark": {"name": "circo", "data_root": str(mini_bench["circo"]), "split": "val"},
           "mllm": {"backend": "transformers", "model": str(mllm), "device": "cpu"},
           "encoder": {"model": f"local-dir:{enc}", "device": "cpu", "num_workers": 0},
           "compose": {"prompt": str(prompt), "sampling": {"temperature": 0.0, "max_tokens": 6}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, doc


def _spoil_weights(folder: Path) -> int:
    n = 0
    for p in folder.iterdir():
        if p.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            st = p.stat()
            p.write_bytes(b"\0" * st.st_size)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
            n += 1
    return n


def _no_process(probe: dict) -> bool:
    """Nothing spawned but ctypes.util.find_library's `ldconfig -p` (a library import looking up a .so)."""
    return not [s for s in probe["spawned"] if not s.endswith("ldconfig")]


def _cirflow(*args: str) -> tuple[str, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=600)
    probe = [line for line in proc.stderr.splitlines() if line.startswith("PROBE ")]
    assert probe, proc.stderr[-3000:]
    return proc.stdout, json.loads(probe[-1][len("PROBE "):])


def test_plan_matches_the_run_loads_no_model_and_starts_no_server(tmp_path, mini_bench, tiny_models, prefect_server):
    from cirflow.cli.run import run_config
    from cirflow.flows.plan import plan_config, plan_doc

    path, doc = _config(tmp_path, mini_bench, tiny_models)
    cfg = parse_config(doc)
    before = plan_doc(plan_config(cfg), cfg)
    assert before["complete"] and [s["status"] for s in before["stages"]] == ["computed"] * 6
    assert [s["stage"] for s in before["stages"]] == ["ingest", "compose_target_text", "embed_texts", "embed_images",
                                                      "retrieve", "evaluate"]
    assert not (tmp_path / "runs").exists()  # planning writes nothing

    first = run_config(cfg, progress=False)
    # the plan named exactly the artifacts the run then computed, keys included
    assert [(s["stage"], s["key"]) for s in before["stages"]] == [(s["stage"], s["key"]) for s in first["stages"]]

    assert _spoil_weights(Path(doc["mllm"]["model"])) and _spoil_weights(Path(doc["encoder"]["model"][10:]))
    out, probe = _cirflow("run", str(path), "--plan", "--json")
    assert probe["code"] == 0 and _no_process(probe) and not probe["server"], probe
    plan = json.loads(out)
    assert plan["nothing_to_compute"] and [s["status"] for s in plan["stages"]] == ["cached"] * 6
    assert [s["key"] for s in plan["stages"]] == [s["key"] for s in first["stages"]]

    # nothing to compute: `cirflow run` answers from the store, no Prefect server, no model
    out, probe = _cirflow("run", str(path), "--json")
    assert probe["code"] == 0 and _no_process(probe) and not probe["server"], probe
    doc2 = json.loads(out)
    assert {s["status"] for s in doc2["stages"]} == {"cached"} and doc2["metrics"] == first["metrics"]
    assert Path(doc2["output_dir"]).is_dir() and Path(doc2["output_dir"]) != Path(first["output_dir"])


def test_plan_shows_resumed_and_downstream_keys(tmp_path, mini_bench, tiny_models):
    """A stage with committed shards of an interrupted run plans as resumed; a changed prompt changes the key
    of compose_target_text and of every stage downstream of it, and of nothing else."""
    from cirflow.flows.plan import plan_config
    from cirflow.storage import ArtifactStore

    path, doc = _config(tmp_path, mini_bench, tiny_models)
    cfg = parse_config(doc)
    base = plan_config(cfg).steps
    compose = next(s for s in base if s.stage == "compose_target_text")
    # an interrupted run of compose_target_text: one committed shard under its real key
    store = ArtifactStore(doc["store"])
    commits = Path(store.artifact_dir(compose.stage, compose.key)) / "_commits"
    commits.mkdir(parents=True)
    (commits / "data-00000.parquet.json").write_text("{}")
    resumed = {s.stage: s.status for s in plan_config(cfg).steps}
    assert resumed["compose_target_text"] == "resumed" and resumed["ingest"] == "computed"

    Path(doc["compose"]["prompt"]).write_text("Now say what the target shows: {modification}")
    changed = {s.stage: s.key for s in plan_config(parse_config(doc)).steps}
    same = {s.stage: s.key for s in base}
    assert {k for k in same if same[k] != changed[k]} == {"compose_target_text", "embed_texts", "retrieve",
                                                          "evaluate"}
