"""PEFUSE's four conversion modes × two encoders (+ a fused row) from a cold store, then from a warm store
(nothing computed), then an encoder-only change (only features and scoring computed); and a sweep with
mean ± std over seeds. Mini CIRR, tiny random-weight MLLM, CLIP and InstructPix2Pix, under Prefect."""

from __future__ import annotations

from pathlib import Path

import pytest
from cirflow.flows import FLOWS
from cirflow.flows.compare import CompareConfig

pytestmark = pytest.mark.slow

MODES = ["t2i", "i2i", "t2t", "i2t"]


def base_config(tmp_path, mini_bench, tiny_models, tiny_ip2p) -> dict:
    prompt = tmp_path / "short_prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    caption = tmp_path / "short_caption.txt"
    caption.write_text("Describe this image.")
    return {
        "name": "cmp", "method": "pefuse", "store": str(tmp_path / "store"), "output_dir": str(tmp_path / "runs"),
        "max_failure_rate": 0.2,  # random-weight models write a few empty captions (counted as failed rows)
        "benchmark": {"name": "cirr", "data_root": str(mini_bench["cirr"]), "split": "val"},
        "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
        "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
        "compose": {"prompt": str(prompt), "shard_size": 16, "sampling": {"temperature": 0.0, "max_tokens": 6}},
        "caption": {"prompt": str(caption), "sampling": {"temperature": 0.0, "max_tokens": 6}},
        "diffusion": {"pipeline": "instruct_pix2pix", "model": str(tiny_ip2p), "device": "cpu", "resolution": 32,
                      "num_inference_steps": 2, "batch_size": 8, "conditioning": "composed"},
        "embed": {"shard_size": 64},
    }


def _encoder(tiny_models, name):
    return {"model": f"local-dir:{tiny_models[name]}", "device": "cpu", "num_workers": 0}


def test_modes_encoders_cold_warm_and_encoder_variant(tmp_path, mini_bench, tiny_models, tiny_ip2p, prefect_server):
    base = base_config(tmp_path, mini_bench, tiny_models, tiny_ip2p)
    grid = {"name": "modes", "base": base, "modes": MODES, "encoders": [_encoder(tiny_models, "encoder")],
            "fusions": [{"name": "t2i+t2t", "terms": {"t2i": 0.5, "t2t": 0.5}}]}
    cold = FLOWS["compare"](CompareConfig.model_validate(grid).model_dump(mode="json"), progress=False)
    rows = {(r["encoder"], r["variant"]) for r in cold["table"]}
    assert {v for _, v in rows} == {"T→I", "I→I", "T→T", "I→T", "t2i+t2t"}
    assert all(0 <= r["recall@10"] <= 100 for r in cold["table"])
    computed = cold["computed_by_stage"]
    # composed texts, generated images and gallery captions are each computed once and shared by the modes
    assert computed["compose_target_text"] == 1 and computed["synthesize_images"] == 1
    assert computed["caption_images"] == 1 and computed["embed_images"] == 1
    assert computed["retrieve"] == 4 and computed["fuse_scores"] == 1 and computed["evaluate"] == 5
    assert (Path(cold["output_dir"]) / "comparison.md").read_text().count("\n") == 2 + 5

    warm = FLOWS["compare"](CompareConfig.model_validate(grid).model_dump(mode="json"), progress=False)
    assert warm["computed_by_stage"] == {} and warm["stage_counts"]["computed"] == 0
    assert warm["table"] == cold["table"]

    grid["encoders"].append(_encoder(tiny_models, "encoder_b"))
    both = FLOWS["compare"](CompareConfig.model_validate(grid).model_dump(mode="json"), progress=False)
    # the second encoder recomputes features and scoring only: no MLLM, no diffusion, no ingest
    assert both["computed_by_stage"] == {"embed_texts": 2, "embed_generated": 1, "embed_images": 1, "retrieve": 4,
                               "fuse_scores": 1, "evaluate": 5}
    assert len(both["table"]) == 10
    old = [r for r in both["table"] if r["encoder"] == cold["table"][0]["encoder"]]
    assert old == cold["table"]


def test_sweep_reuses_upstream_and_plots(tmp_path, mini_bench, tiny_models, tiny_ip2p, prefect_server):
    base = base_config(tmp_path, mini_bench, tiny_models, tiny_ip2p)
    base["diffusion"] = None
    cfg = {"name": "temp-sweep", "base": base,
           "sweep": {"param": "compose.sampling.temperature", "values": [0.0, 0.8], "seeds": [0, 1],
                     "metrics": ["recall@5", "recall@10"]}}
    doc = FLOWS["sweep"](CompareConfig.model_validate(cfg).model_dump(mode="json"), progress=False)
    computed = doc["computed_by_stage"]
    assert computed["compose_target_text"] == 4  # 2 values x 2 seeds
    assert computed.get("embed_images") == 1 and "ingest" in computed  # the gallery is embedded once
    summary = {r["value"]: r for r in doc["sweep_summary"]}
    assert set(summary) == {"0.0", "0.8"}
    # greedy decoding ignores the seed: both seeds give the same texts, so the spread is exactly zero
    assert summary["0.0"]["recall@10_std"] == 0.0
    assert Path(doc["plot"]).stat().st_size > 5000
