"""Grouped benchmarks through the PEFUSE flow on slices of the real annotation files (placeholder images):
Fashion-IQ categories averaged as the benchmark reports, and GeneCIS per-sample candidates ranked by
text→text (gallery captions of cropped attribute items)."""

from __future__ import annotations

import pytest

from cirflow.cli.run import run_config
from cirflow.flows.registry import parse_config
from cirflow.tasks.benchmarks.placeholders import make_slice

pytestmark = pytest.mark.slow


def _config(tmp_path, tiny_models, benchmark: dict, mode: str) -> dict:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    caption = tmp_path / "caption.txt"
    caption.write_text("Describe this image.")
    return parse_config({
        "name": f"groups-{benchmark['name']}", "mode": mode, "store": str(tmp_path / "store"),
        "output_dir": str(tmp_path / "runs"), "benchmark": benchmark,
        "mllm": {"backend": "transformers", "model": str(tiny_models["mllm"]), "device": "cpu"},
        "encoder": {"model": f"local-dir:{tiny_models['encoder']}", "device": "cpu", "num_workers": 0},
        "compose": {"prompt": str(prompt), "sampling": {"temperature": 0.0, "max_tokens": 6}},
        "caption": {"prompt": str(caption), "sampling": {"temperature": 0.0, "max_tokens": 6}},
    })


def test_fashioniq_categories_are_averaged(tmp_path, shared_benchmarks, tiny_models, prefect_server):
    root = tmp_path / "fiq"
    for cat in ("dress", "shirt"):
        make_slice("fashioniq", shared_benchmarks / "fashioniq", root, n_queries=6, category=cat, extra_gallery=50)
    doc = run_config(_config(tmp_path, tiny_models, {"name": "fashioniq", "data_root": str(root), "split": "val",
                                                     "categories": ["dress", "shirt"]}, "t2i"), progress=False)
    assert set(doc["groups"]) == {"dress", "shirt"}
    for m in ("recall@10", "recall@50"):
        assert doc["metrics"][m] == pytest.approx((doc["groups"]["dress"][m] + doc["groups"]["shirt"][m]) / 2)
    assert {s["label"] for s in doc["stages"]} == {"dress", "shirt"}
    assert len(doc["submission_files"]) == 2


def test_genecis_text_to_text_over_cropped_candidates(tmp_path, shared_benchmarks, tiny_models, prefect_server):
    root = tmp_path / "genecis"
    make_slice("genecis", shared_benchmarks / "genecis", root, n_queries=5, task="focus_attribute")
    doc = run_config(_config(tmp_path, tiny_models, {"name": "genecis", "data_root": str(root),
                                                     "tasks": ["focus_attribute"]}, "t2t"), progress=False)
    assert set(doc["metrics"]) >= {"recall@1", "recall@2", "recall@3"}
    captions = next(s for s in doc["stages"] if s["stage"] == "caption_images")
    # every candidate of every sample is captioned (10 per sample; duplicates across samples share one caption)
    assert captions["stats"]["images"] >= 10 and captions["status"] == "computed"
    assert doc["metrics"]["recall@3"] >= doc["metrics"]["recall@1"]


def test_group_averaging_is_one_rule_and_refuses_empty_input():
    """Run summaries and comparison tables average groups with the evaluation's one rule (a plain mean of the
    metrics every group has); no groups at all is an error, never an empty metrics table."""
    import pytest

    from cirflow.evaluation.api import average_over
    from cirflow.flows import report, summary
    from cirflow.schemas.errors import CirflowError

    assert summary.average_over is average_over and report.average_over is average_over
    assert average_over({"dress": {"recall@10": 10.0, "x": 1.0}, "shirt": {"recall@10": 20.0}}) == {"recall@10": 15.0}
    with pytest.raises(CirflowError, match="no groups"):
        average_over({})
