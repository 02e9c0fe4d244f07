"""`cirflow reproduce`: every registry entry resolves to a config its method validates, and a reproduce run over
the mini benchmark with tiny models prints paper | ours | Δ | status (chance numbers: the mechanism is tested)."""

from __future__ import annotations

import csv
import json

import pytest

from cirflow.cli.main import main
from cirflow.flows import registry as methods
from cirflow.flows.reproduce import Environment, entries
from cirflow.flows.reproduce.runner import validate, why_not

REQUIRED_TABLES = {("pefuse", t) for t in ("1", "2", "3", "4", "7")} | {("ip_cir", "1"), ("ip_cir", "3")} | \
    {("collm", t) for t in ("2", "3", "5")} | {("instructcir", t) for t in ("II", "III", "IV", "V")} | \
    {("mvft_ji", t) for t in ("1", "2", "3", "4")}


def test_registry_covers_the_tables_and_every_entry_validates():
    es = entries()
    assert REQUIRED_TABLES <= {(e.paper, e.table) for e in es}
    env = Environment()
    checked = 0
    for e in es:
        if e.pending or e.method not in methods.METHODS:
            assert why_not(e, env).startswith(("needs training stage", "not runnable")), e
            continue
        cfg = validate(e, env, placeholder=True)   # the method's own strict config class
        run = cfg.base if e.wrap else cfg   # an ablation holds the run config as its `base`
        assert run.benchmark.name == e.benchmark and cfg.method == (e.wrap or e.method)
        checked += 1
    assert checked > 300
    # recorded, not hidden: the papers' own inconsistencies the issue names
    notes = {(e.paper, e.table, e.row): e.inconsistencies for e in es}
    assert any("table 19" in n for n in notes[("collm", "5", "BLIP-L/16 384 · CoLLM · MTCIR")])
    assert any("38.18" in n for n in notes[("instructcir", "IV", "Fashion/NLVR · LLaVA · 33B · 300k")])


def test_values_are_the_papers():
    by = {(e.paper, e.table, e.row, e.column): e.reported for e in entries()}
    assert by[("pefuse", "2", "PEFUSE (T→I) · OpenCLIP", "recall@1")] == 34.00
    assert by[("pefuse", "4", "ViT-bigG/14", "genecis:recall@1")] == 17.99
    assert by[("ip_cir", "1", "ViT-G/14 · LDRE + IP-CIR", "cirr:recall@1")] == 39.25
    assert by[("mvft_ji", "2", "MVFT-JI", "mean(recall@5,recall_subset@1)")] == 68.71
    assert by[("collm", "2", "OpenAI CLIP-B/32 · CoLLM*", "cirr:recall@50")] == 92.7


def test_list_json_and_reasons(tmp_path, capsys):
    assert main(["reproduce", "--list", "--json", "pefuse", "--table", "2", "--data-root", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"paper", "table", "row", "metric", "reported", "runnable", "why_not"} <= set(rows[0])
    collm = [r for r in rows if r["row"].startswith("CoLLM")]
    assert collm and all(not r["runnable"] and r["why_not"].startswith("needs training stage") for r in collm)
    assert all(r["why_not"].startswith("missing data") for r in rows if r["row"].startswith("PEFUSE"))
    assert main(["reproduce", "nosuchpaper"]) == 2
    assert "unknown paper" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_reproduce_run(tmp_path, mini_bench, tiny_models, prefect_server, capsys):
    models = tmp_path / "models"
    models.mkdir()
    (models / "openclip-vit-b-32").symlink_to(tiny_models["encoder"])
    (models / "qwen2.5-vl-7b-instruct").symlink_to(tiny_models["mllm"])
    prompt = tmp_path / "short.txt"
    prompt.write_text("Describe the target image after this change: {modification}")
    argv = ["reproduce", "pefuse", "--table", "2", "--row", "(T→I) · OpenCLIP", "--data-root",
            str(mini_bench["cirr"].parent), "--models-from", str(models), "--split", "val",
            "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out"),
            "--set", "compose.sampling.max_tokens=8", "--set", f"compose.prompt={prompt}",
            "--set", "encoder.num_workers=0", "--set", "compose.shard_size=8"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    print(out)
    assert "| paper | table | row | metric | paper | ours | Δ | status |" in out
    assert "model stand-in: OpenCLIP (ViT-B/32) -> local folder" in out and "split: evaluated on cirr val" in out
    rows = list(csv.DictReader((tmp_path / "out" / "pefuse-table2.csv").open()))
    assert [r["metric"] for r in rows] == ["recall@1", "recall@2", "recall@5", "recall@10", "recall@50",
                                          "recall_subset@1", "recall_subset@2", "recall_subset@3"]
    for r in rows:
        ours, paper, delta = float(r["ours"]), float(r["paper_value"]), float(r["delta"])
        assert abs(delta - (ours - paper)) < 0.011
        assert r["status"] == ("within tolerance" if abs(ours - paper) <= 1.0 else "differs")
    # the second run reuses the store: same numbers
    assert main(argv) == 0
    again = list(csv.DictReader((tmp_path / "out" / "pefuse-table2.csv").open()))
    assert [r["ours"] for r in again] == [r["ours"] for r in rows]
