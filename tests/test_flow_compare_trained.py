"""`cirflow compare` with a trained-model base (CoLLM fig. 7 / tables 6c, 7; InstructCIR tables IV, V): each variant
is a training whose key differs, and everything its key leaves unchanged (ingest, the pre-training collection, a
shared stage one) is read from the store; a second run computes nothing. Mini CIRR, tiny random open_clip ViT and a
Qwen2-shaped tiny decoder, under Prefect."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from cirflow.flows import FLOWS
from cirflow.flows.compare import CompareConfig
from cirflow.schemas.errors import ConfigError


def _load(name: str, file: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flow_collm = _load("flow_collm_fixtures", "test_flow_collm.py")
flow_icir = _load("flow_icir_fixtures", "test_flow_instructcir.py")
llm = flow_collm.llm  # the tiny decoder folder, built once for the module
raw = flow_icir.raw  # an InstructCIR run config over stored InstructCIR-shaped texts

# the tiny trainings of the flow tests, shortened: one pass over the data, one micro-step per 16 pairs
COLLM_LOSS = {"alpha": 0.5, "text_ratio": 0.75, "neighbour": "nearest"}  # the keys the variants set, spelled out


def _by_variant(doc: dict) -> dict[str, dict[str, set[str]]]:
    out: dict[str, dict[str, set[str]]] = {}
    for s in doc["stages"]:
        out.setdefault(s["variant"], {}).setdefault(s["stage"], set()).add(s["status"])
    return out


def _keys(doc: dict, stage: str) -> dict[str, str]:
    return {s["variant"]: s["key"] for s in doc["stages"] if s["stage"] == stage}


def _run(grid: dict) -> dict:
    return FLOWS["compare"](CompareConfig.model_validate(grid).model_dump(mode="json"), progress=False)


def test_trained_bases_validate_their_variants(tmp_path, mini_bench):
    # validation only: the model folders are never opened
    base, _ = flow_collm.config(tmp_path, mini_bench, {"encoder": tmp_path / "clip"}, str(tmp_path / "llm"))
    base["pretrain"]["loss"] = dict(COLLM_LOSS)
    ok = CompareConfig.model_validate({"method": "compare", "base": base,
                                       "variants": [{"name": "a", "set": {"pretrain.loss.alpha": 0.3}}]})
    assert ok.variants[0].apply(ok.base).pretrain.loss["alpha"] == 0.3
    with pytest.raises(ConfigError, match="no field 'text_query'"):
        CompareConfig.model_validate({"method": "compare", "base": base,
                                      "variants": [{"name": "b", "set": {"pretrain.loss.text_query": False}}]})
    with pytest.raises(ValueError, match="variants` of its own"):
        CompareConfig.model_validate({"method": "compare", "base": {**base, "variants": [
            {"name": "x", "set": {"pretrain.loss.alpha": 0.1}}]}})
    with pytest.raises(ValueError, match="a collm base varies by `variants`"):
        CompareConfig.model_validate({"method": "compare", "base": base, "modes": ["t2i", "t2t"]})


@pytest.mark.slow
def test_collm_alpha_grid_retrains_only_the_training(tmp_path, mini_bench, tiny_models, llm, prefect_server):
    base, _ = flow_collm.config(tmp_path, mini_bench, tiny_models, llm)
    base["pretrain"]["loss"] = dict(COLLM_LOSS)
    grid = {"method": "compare", "name": "collm-fig7", "base": base,
            "variants": [{"name": "α=0.5"}, {"name": "α=0.1", "set": {"pretrain.loss.alpha": 0.1}}]}
    cold = _run(grid)
    assert [r["variant"] for r in cold["table"]] == ["α=0.5", "α=0.1"]
    assert all(0 <= r["recall@1"] <= 100 for r in cold["table"])
    assert cold["computed_by_stage"] == {"ingest_collection": 1, "ingest": 1, "train_collm": 2,
                                         "embed_collm_gallery": 2, "embed_collm_queries": 2, "retrieve": 2,
                                         "evaluate": 2}
    st = _by_variant(cold)
    # the second variant differs in the training key only: its data and the benchmark come from the store
    assert st["α=0.1"]["ingest_collection"] == {"cached"} and st["α=0.1"]["ingest"] == {"cached"}
    assert st["α=0.1"]["train_collm"] == {"computed"}
    trains = _keys(cold, "train_collm")
    assert trains["α=0.5"] != trains["α=0.1"]

    grid["variants"].append({"name": "α=0.1 · flat index",
                             "set": {"pretrain.loss.alpha": 0.1, "retrieve.index": {"kind": "flat"}}})
    warm = _run(grid)
    # a rerun computes nothing; the evaluation-only variant reuses the α=0.1 model and its features
    assert warm["computed_by_stage"] == {"retrieve": 1, "evaluate": 1}
    assert _keys(warm, "train_collm")["α=0.1 · flat index"] == trains["α=0.1"]
    assert warm["table"][:2] == cold["table"]
    assert Path(warm["output_dir"], "comparison.md").read_text().count("\n") == 2 + 3


@pytest.mark.slow
def test_instructcir_table5_grid_shares_stage_one(raw, prefect_server):
    grid = {"method": "compare", "name": "icir-table5", "base": raw,
            "variants": [{"name": "InstructCIR"}, {"name": "+w/o EMA", "set": {"model.ema": False}},
                         {"name": "λ₀=0.3", "set": {"combiner.lambda_init": 0.3}}]}
    cold = _run(grid)
    assert [r["variant"] for r in cold["table"]] == ["InstructCIR", "+w/o EMA", "λ₀=0.3"]
    # w/o EMA retrains both stages; a combiner-only change retrains stage two on the stored stage one
    assert cold["computed_by_stage"]["train_instructcir"] == 2
    assert cold["computed_by_stage"]["train_instructcir_combiner"] == 3
    st = _by_variant(cold)
    assert st["+w/o EMA"]["ingest"] == {"cached"} and st["+w/o EMA"]["train_instructcir"] == {"computed"}
    assert st["λ₀=0.3"]["train_instructcir"] == {"cached"} and st["λ₀=0.3"]["train_instructcir_combiner"] == {
        "computed"}
    one = _keys(cold, "train_instructcir")
    assert one["λ₀=0.3"] == one["InstructCIR"] != one["+w/o EMA"]

    warm = _run(grid)
    assert warm["computed_by_stage"] == {} and warm["table"] == cold["table"]
