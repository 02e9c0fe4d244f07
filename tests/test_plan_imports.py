"""`cirflow run CONFIG --plan` and the store shortcut import neither torch, Prefect, open_clip, transformers,
diffusers nor Ray (issue 14 goal 3: a warm plan answers in under 2 s, and torch alone costs ~2.4 s to import,
Prefect ~0.9 s). Flows and stage tasks are tasks/lazy_prefect.py wrappers and model/library code imports torch
inside the functions that compute, so a process that only keys stages and reads the store never loads them.

The check runs in a fresh process, as a user's `cirflow` does (the test process itself has imported everything):
the demo's pefuse_t2i CIRCO config (cirflow.demo.run.demo_configs, bench/plan_warm.py's set-up) with its store
filled, planned and answered from the store; and a cold `--plan` of the method demos (cirflow.demo.methods) on an
empty store. After each command the subprocess lists every loaded module of those packages: the list must be
empty."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HEAVY = ("torch", "prefect", "open_clip", "transformers", "diffusers", "ray")
# the method demos whose cold plan is checked (demo/methods.py, and demo/mvft.py's MVFT-JI on the untrained and
# the trained weights)
COLD = ("pefuse", "cirevl", "ldre", "ip_cir", "refine", "build_mtcir", "build_instructcir", "build_mvft", "mvft_ji",
        "mvft_ji_trained")

PROBE = r"""
import contextlib, io, json, sys
heavy = set(sys.argv[1].split(","))
from cirflow.cli.main import main
results = []
for cmd in json.loads(sys.argv[2]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(cmd)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
    results.append({"cmd": cmd, "code": code, "stdout": out.getvalue(), "heavy": loaded})
print("PROBE " + json.dumps(results))
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """Config files: the warm demo (store filled, as bench/plan_warm.py does) and each method demo (store empty)."""
    from cirflow.demo.methods import demo_config
    from cirflow.demo.mvft import demo_configs as mvft_configs
    from cirflow.demo.run import demo_configs
    from cirflow.flows import registry
    from cirflow.flows.plan import answer_from_store

    work = tmp_path_factory.mktemp("plan-imports")
    circo = next(c for c in demo_configs(work / "warm") if c.benchmark.name == "circo")
    paths = {"warm": work / "circo.yaml"}
    paths["warm"].write_text(yaml.safe_dump(circo.model_dump(mode="json")))
    answer_from_store(registry.load_config(paths["warm"]))  # fills the store: the flow body without Prefect
    mvft = mvft_configs(work / "cold")
    for method in COLD:
        paths[method] = work / f"{method}.yaml"
        doc = (mvft["circo", "trained" if method.endswith("trained") else "base"].model_dump(mode="json")
               if method.startswith("mvft_ji") else demo_config(method, work / "cold"))
        paths[method].write_text(yaml.safe_dump(doc))
    return paths


def _probe(*commands: list[str]) -> list[dict]:
    proc = subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY), json.dumps(commands)],
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("PROBE "):])


def test_warm_plan_and_store_shortcut_import_no_model_or_prefect_package(demo):
    plan, shortcut = _probe(["run", str(demo["warm"]), "--plan", "--json"], ["run", str(demo["warm"]), "--json"])
    assert plan["code"] == 0 and shortcut["code"] == 0, (plan, shortcut)
    doc = json.loads(plan["stdout"])
    assert doc["nothing_to_compute"] and len(doc["stages"]) == 6, doc
    summary = json.loads(shortcut["stdout"])  # answered from the store: the run's summary, every stage cached
    assert {s["status"] for s in summary["stages"]} == {"cached"} and summary["metrics"]
    assert plan["heavy"] == [], sorted({m.split(".")[0] for m in plan["heavy"]})
    assert shortcut["heavy"] == [], sorted({m.split(".")[0] for m in shortcut["heavy"]})


def test_cold_plan_of_every_method_demo_imports_no_model_or_prefect_package(demo):
    results = _probe(*[["run", str(demo[m]), "--plan", "--json"] for m in COLD])
    for method, r in zip(COLD, results):
        assert r["code"] == 0, (method, r)
        doc = json.loads(r["stdout"])
        assert doc["method"] == method.removesuffix("_trained") and doc["stages"], doc
        assert doc["counts"]["cached"] == 0 and doc["counts"]["computed"] >= 2, doc  # an empty store
        assert r["heavy"] == [], (method, sorted({m.split(".")[0] for m in r["heavy"]}))


def test_trained_model_weights_name_matches_the_engine():
    """model_ref spells the engine's weights file name so that resolving a trained model needs no torch."""
    from cirflow.tasks.training import model_ref
    from cirflow.training.export import WEIGHTS

    assert model_ref.WEIGHTS == WEIGHTS


def _test_module(name: str):
    """A sibling test file's helpers (tests/ is not a package): the same data the flow tests store."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mini_bench, tiny_models) -> dict[str, Path]:
    """CoLLM, InstructCIR and a CoLLM comparison (fig. 7's α as a variant) on tiny local models (tests/
    test_flow_collm.py's), the store holding the image–caption collection and InstructCIR-shaped texts."""
    from cirflow.models.collm.tiny import build_tiny_llm
    from cirflow.schemas.builds import CollectionSource
    from cirflow.storage import ArtifactStore
    from cirflow.tasks.builds import ingest_collection

    flow_collm, flow_icir = _test_module("test_flow_collm"), _test_module("test_flow_instructcir")
    work = tmp_path_factory.mktemp("plan-imports-trained")
    llm = str(build_tiny_llm(work / "llm"))
    collm, attrs = flow_collm.config(work, mini_bench, tiny_models, llm)
    store = ArtifactStore(collm["store"])
    coll = ingest_collection.run(store, CollectionSource(**collm["pretrain"]["collection"]), progress=False)
    flow_icir.instructcir_texts(store, coll, attrs)
    icir = {"method": "instructcir", "name": "icir-plan", "store": collm["store"], "output_dir": collm["output_dir"],
            "benchmark": collm["benchmark"], "model": {"clip_model": f"local-dir:{tiny_models['encoder']}"},
            "data": {"texts": "stage:instructcir_texts"}, "reformulation": {"train": flow_icir.TRAIN},
            "combiner": {"train": flow_icir.TRAIN}}
    base = {**collm, "pretrain": {**collm["pretrain"], "loss": {"alpha": 0.5}}}  # a variant sets a field it has
    compare = {"method": "compare", "name": "collm-fig7-plan", "base": base,
               "variants": [{"name": "paper"}, {"name": "alpha-0.25", "set": {"pretrain.loss.alpha": 0.25}}]}
    paths = {}
    for name, doc in (("collm", collm), ("instructcir", icir), ("compare", compare)):
        paths[name] = work / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(doc))
    return paths


def test_plan_of_trained_methods_and_their_comparison_imports_no_model_or_prefect_package(trained):
    """CoLLM / InstructCIR configs key their trainings on settings classes and preprocessing read from the model
    folders (schemas/collm.py, schemas/instructcir.py, models/tower_preprocess.py), not on the torch modules; the
    plan stops at the training (the features are keyed on trained weights)."""
    results = _probe(["run", str(trained["collm"]), "--plan", "--json"],
                     ["run", str(trained["instructcir"]), "--plan", "--json"],
                     ["compare", str(trained["compare"]), "--plan", "--json"])
    for (name, training), r in zip((("collm", "train_collm"), ("instructcir", "train_instructcir"),
                                    ("compare", "train_collm")), results):
        assert r["code"] == 0, (name, r)
        doc = json.loads(r["stdout"])
        assert doc["method"] == name, doc
        assert [s["status"] for s in doc["stages"] if s["stage"] == training] == ["computed"], doc
        assert not doc["complete"] and training in doc["blocked"], doc
        assert r["heavy"] == [], (name, sorted({m.split(".")[0] for m in r["heavy"]}))
