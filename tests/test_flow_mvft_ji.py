"""MVFT-JI end to end on the mini benchmark (tiny random-weight BLIP-2 Q-Former and Qwen, Prefect server).

* The demo learns: fine-tuned on rows written from the mini benchmark's labels, the model beats its untrained
  self by a clear margin on the benchmark queries, none of which it trained on; a rerun computes nothing.
* Joint inference on the stored trained model: a λ change recomputes joint_fusion and evaluate only.
* An appendix C baseline (Image + Text, untrained BLIP-2) runs as a mode.
"""

from __future__ import annotations

import pytest

from cirflow.cli.run import run_config
from cirflow.demo.mvft import demo_configs, query_compositions, run_demo, training_rows

pytestmark = pytest.mark.slow


def _status(doc: dict) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s in doc["stages"]:
        out.setdefault(s["stage"], set()).add(s["status"])
    return out


def test_demo_learns_then_joint_fusion_and_baselines(tmp_path, prefect_server):
    work = tmp_path / "demo"
    doc = run_demo(work, progress=False)
    u, t = doc["untrained"], doc["trained"]
    # queries the model never trained on: no training row is a (reference, target) composition of a query
    roots = {b: work / "data" / b for b in ("cirr", "circo")}
    asked = query_compositions(roots)
    rows = training_rows(roots).to_pylist()
    assert asked and not any((r["image_id"], *r["target_text"].split()[1:3][::-1]) in asked for r in rows)
    assert t["recall@1"] >= u["recall@1"] + 15, (u, t)
    assert t["recall_subset@1"] >= u["recall_subset@1"] + 25, (u, t)
    assert t["circo/map@5"] >= u["circo/map@5"] + 5, (u, t)
    trains = [s for s in doc["stages"] if s["stage"] == "train_mvft"]
    assert len({s["key"] for s in trains}) == 1 and [s["status"] for s in trains] == ["computed", "cached"]
    again = run_demo(work, progress=False)
    assert {s["status"] for s in again["stages"]} == {"cached"}
    assert again["trained"] == t

    cfg = demo_configs(work)["cirr", "trained"]
    joint = cfg.model_copy(update={"name": "joint", "joint": cfg.joint.model_copy(update={"mode": "joint"})})
    first = run_config(joint, progress=False)
    st = _status(first)
    assert st["train_mvft"] == {"cached"} and st["compose_target_text"] == {"computed"}
    assert st["joint_fusion"] == {"computed"} and "recall@1" in first["metrics"]
    lam = joint.model_copy(update={"joint": joint.joint.model_copy(update={"lam": 0.25})})
    second = run_config(lam, progress=False)
    computed = {s["stage"] for s in second["stages"] if s["status"] != "cached"}
    assert computed == {"joint_fusion", "evaluate"}, second["stages"]

    base = demo_configs(work)["cirr", "base"]
    it = base.model_copy(update={"name": "image_text", "joint": base.joint.model_copy(update={"mode": "image_text"})})
    doc_it = run_config(it, progress=False)
    st = _status(doc_it)
    assert "train_mvft" not in st and st["retrieve_tokens"] == {"computed"}
    assert len({s["key"] for s in doc_it["stages"] if s["stage"] == "embed_tokens_queries"}) == 2
