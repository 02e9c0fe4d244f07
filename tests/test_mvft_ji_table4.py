"""MVFT-JI table 4 as one `cirflow compare` (variants of dotted overrides on an mvft_ji base) and `seeds:` with
mean ± std, on the mini CIRR with the tiny random-weight Q-Former and Qwen (a few training steps).

* The grid runs: full (ŝ + λ·s̃), w/o s̃, w/o ŝ reuse the full model (one train_mvft key), w/o L_c and w/o L_t
  are two more trainings; a second run from the warm store computes nothing.
* `seeds: [0, 1]` trains twice (two train_mvft keys) and the summary carries mean ± std per metric.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from cirflow.demo.mvft import training_rows
from cirflow.flows import FLOWS
from cirflow.flows.compare import CompareConfig
from cirflow.flows.mvft_ji import MVFTJIConfig, print_report
from cirflow.models.mvft import build_tiny_mvft
from cirflow.schemas.errors import ConfigError

pytestmark = pytest.mark.slow

TABLE4 = [
    {"name": "MVFT-JI"},
    {"name": "w/o s̃", "set": {"joint.mode": "composed"}},
    {"name": "w/o ŝ", "set": {"joint.mode": "target_text"}},
    {"name": "w/o L_c", "set": {"train.loss.use_Lc": False}},
    {"name": "w/o L_t", "set": {"train.loss.use_Lt": False}},
]


def base_config(tmp_path, mini_bench, tiny_models) -> dict:
    rows = tmp_path / "rows.parquet"
    pq.write_table(training_rows(mini_bench, per_image=1).slice(0, 32), rows)
    prompt = tmp_path / "short_prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    return {
        "name": "t4", "method": "mvft_ji", "store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
        "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
        "encoder": {"base": str(build_tiny_mvft(tmp_path / "tiny-mvft")), "device": "cpu", "batch_size": 64},
        "data": {"rows": str(rows)},
        "train": {"num_query_tokens": 4, "train": {"epochs": 1, "lr": 1e-3, "effective_batch_size": 16,
                                                   "per_device_batch_size": 16, "progress": False}},
        "joint": {"mode": "joint"},
        "compose": {"prompt": str(prompt), "shard_size": 64, "sampling": {"temperature": 0.0, "max_tokens": 6}},
        "embed": {"shard_size": 256},
    }


def _train_keys(doc: dict, variant: str | None = None) -> set[str]:
    return {s["key"] for s in doc["stages"] if s["stage"] == "train_mvft" and variant in (None, s.get("variant"))}


def test_table4_compare_grid_then_warm_store(tmp_path, mini_bench, tiny_models, prefect_server):
    grid = {"name": "table4", "base": base_config(tmp_path, mini_bench, tiny_models), "variants": TABLE4}
    cold = FLOWS["compare"](CompareConfig.model_validate(grid).model_dump(mode="json"), progress=False)
    print(cold["markdown"])
    assert [r["variant"] for r in cold["table"]] == [v["name"] for v in TABLE4]
    assert all(0 <= r["recall@1"] <= 100 for r in cold["table"])
    full = _train_keys(cold, "MVFT-JI")
    assert len(full) == 1
    # w/o s̃ / w/o ŝ change fusion only: the full model, read from the store
    assert _train_keys(cold, "w/o s̃") == full and _train_keys(cold, "w/o ŝ") == full
    lc, lt = _train_keys(cold, "w/o L_c"), _train_keys(cold, "w/o L_t")
    assert len(lc) == len(lt) == 1 and len(full | lc | lt) == 3
    computed = cold["computed_by_stage"]
    assert computed["train_mvft"] == 3 and computed["mvft_training_data"] == 1
    assert computed["compose_target_text"] == 1  # the target texts of the joint and w/o ŝ rows, written once
    # fusion-only rows re-score the stored features: no new training, embedding or target text
    assert computed["joint_fusion"] == 3 and computed["retrieve_tokens"] == 2 and computed["evaluate"] == 5

    warm = FLOWS["compare"](CompareConfig.model_validate(grid).model_dump(mode="json"), progress=False)
    assert warm["computed_by_stage"] == {} and warm["stage_counts"]["computed"] == 0
    assert warm["table"] == cold["table"]


def test_variants_are_validated_before_anything_runs(tmp_path, mini_bench, tiny_models):
    base = base_config(tmp_path, mini_bench, tiny_models)
    with pytest.raises(ConfigError, match="no field 'use_Lx'"):
        CompareConfig.model_validate({"base": base, "variants": [{"name": "x", "set": {"train.loss.use_Lx": 0}}]})
    with pytest.raises(ConfigError, match="joint.mode"):
        CompareConfig.model_validate({"base": base, "variants": [{"name": "x", "set": {"joint.mode": "nope"}}]})
    with pytest.raises(ValueError, match="vary a PEFUSE run"):
        CompareConfig.model_validate({"base": base, "modes": ["t2t"], "variants": TABLE4[:1]})


def test_seeds_mean_std(tmp_path, mini_bench, tiny_models, prefect_server, capsys):
    cfg = base_config(tmp_path, mini_bench, tiny_models) | {"seeds": [0, 1], "joint": {"mode": "composed"}}
    doc = FLOWS["mvft_ji"](MVFTJIConfig.model_validate(cfg).model_dump(mode="json"), progress=False)
    assert len(_train_keys(doc)) == 2
    s = doc["seeds"]
    assert s["seeds"] == [0, 1] and set(s["runs"]) == {0, 1}
    r1 = s["metrics"]["recall@1"]
    assert r1["n"] == 2 and set(r1["values"]) == {0, 1}
    a, b = r1["values"][0], r1["values"][1]
    assert r1["mean"] == pytest.approx((a + b) / 2) and r1["std"] == pytest.approx(abs(a - b) / 2 ** 0.5)
    print_report(doc, as_json=False)
    out = capsys.readouterr().out
    assert "mean ± std over seeds [0, 1]" in out and f"{r1['mean']:8.2f} ± {r1['std']:.2f}" in out
