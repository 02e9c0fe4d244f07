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
    collm = [r for r in rows if r["row"].startswith("CoLLM")]  # a trained CoLLM row: only the data is missing here
    assert collm and all(not r["runnable"] and r["why_not"].startswith("missing data") for r in collm)
    assert all(r["why_not"].startswith("missing data") for r in rows if r["row"].startswith("PEFUSE"))
    assert main(["reproduce", "nosuchpaper"]) == 2
    assert "unknown paper" in capsys.readouterr().err


TRAINED = ("collm", "instructcir")


def test_trained_method_rows_run_or_say_what_is_missing():
    """CoLLM / InstructCIR rows (and PEFUSE's CoLLM† rows) are trainings cirflow runs: none waits for a training
    stage; a row that cannot run names what is unavailable; every row's config validates, and every benchmark
    column of a row is the same run but for the benchmark (one training key serves the row)."""
    env = Environment()
    es = [e for e in entries() if e.method in TRAINED or e.paper in TRAINED]
    assert {e.paper for e in es} == {"collm", "instructcir", "pefuse"}
    by_row: dict[tuple, list] = {}
    for e in es:
        reason = why_not(e, env) or ""
        assert not reason.startswith("needs training stage"), e
        if e.pending:
            assert e.pending.startswith("not runnable: ") and len(e.pending) > 40, e
        cfg = validate(e, env, placeholder=True)
        assert cfg.method == e.method and cfg.benchmark.name == e.benchmark
        if e.method in TRAINED:
            assert cfg.encoder.weights == "trained" and cfg.model is not None, e
            rest = cfg.model_dump(mode="json", exclude={"benchmark", "name"})
            by_row.setdefault((e.paper, e.table, e.row), []).append(rest)
    assert all(all(r == rows[0] for r in rows) for rows in by_row.values())
    runnable = {(e.paper, e.table, e.row) for e in es if not e.pending and e.method in TRAINED}
    assert len(runnable) == 7 + 15 + 3  # collm tables 2, 3, 5; instructcir II-V; PEFUSE's CoLLM† rows

    cfgs = {(e.paper, e.table, e.row): validate(e, env, placeholder=True) for e in es if not e.pending}
    blip = cfgs[("collm", "5", "BLIP-L/16 384 · CoLLM · MTCIR")]
    assert blip.model.vision_tower == "blip" and blip.model.lora_vision is False  # supp. 9.1: BLIP-L ViT frozen
    assert blip.finetune.texts == "stage:mtcir_texts" and blip.pretrain is not None
    assert cfgs[("collm", "2", "OpenAI CLIP-B/32 · CoLLM*")].model.lora_rank == 32
    assert cfgs[("collm", "2", "OpenAI CLIP-L/14 · CoLLM*")].finetune is None  # table 2: pre-training only
    v = {row: cfgs[("instructcir", "V", row)] for row in ("InstructCIR", "+w/o EMA", "+w/o CrossAtt.")}
    assert [(c.model.ema, c.model.cross_attention, c.data.limit) for c in v.values()] == \
        [(True, True, 32000), (False, True, 32000), (False, False, 32000)]
    sizes = [cfgs[("instructcir", "IV", f"Fashion/NLVR · LLaVA · 33B · {n}")].data.limit
             for n in ("32k", "65k", "95k", "200k", "300k")]
    assert sizes == [32000, 65000, 95000, 200000, 300000]  # nested prefixes of one stored build


def test_collm_row_is_runnable_with_its_data_and_models(tmp_path, capsys):
    (tmp_path / "data" / "cirr").mkdir(parents=True)
    (tmp_path / "data" / "collm-pretrain").mkdir()
    argv = ["reproduce", "--list", "--json", "collm", "--table", "2", "--row", "CLIP-L/14 · CoLLM",
            "--data-root", str(tmp_path / "data"), "--models-from", str(tmp_path / "models")]
    assert main(argv) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["metric"].startswith("cirr:")]
    assert rows and all(r["why_not"].endswith("collm-pretrain/pairs.parquet") for r in rows)
    (tmp_path / "data" / "collm-pretrain" / "pairs.parquet").write_bytes(b"")
    assert main(argv) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["metric"].startswith("cirr:")]
    assert all(r["why_not"].startswith("missing weights: SFR-Embedding-2") for r in rows)
    (tmp_path / "models" / "sfr-embedding-2-r").mkdir(parents=True)
    assert main(argv) == 0
    rows = [r for r in json.loads(capsys.readouterr().out) if r["metric"].startswith("cirr:")]
    assert len(rows) == 3 and all(r["runnable"] for r in rows), rows


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


# ---------------------------------------------------------------------------------- --plan and model servers

ROW = "(T→I) · OpenCLIP"  # PEFUSE table 2: the encoder from --models-from, the MLLM behind --server


def served_row(tmp_path, mini_bench, tiny_models, url: str, *extra: str) -> list[str]:
    models = tmp_path / "models"
    if not models.exists():
        models.mkdir()
        (models / "openclip-vit-b-32").symlink_to(tiny_models["encoder"])
        (tmp_path / "short.txt").write_text("Describe the target image after this change: {modification}")
    return ["reproduce", "pefuse", "--table", "2", "--row", ROW, "--data-root", str(mini_bench["cirr"].parent),
            "--models-from", str(models), "--server", f"qwen2.5-vl-7b-instruct={url}", "--split", "val",
            "--store", str(tmp_path / "store"), "--out", str(tmp_path / "out"),
            "--set", "compose.sampling.max_tokens=8", "--set", "encoder.num_workers=0",
            "--set", "compose.shard_size=8", "--set", f"compose.prompt={tmp_path / 'short.txt'}", *extra]


def fill_store(tmp_path, mini_bench, tiny_models) -> None:
    """Every stage of the row computed (the flow body without Prefect), against a canned OpenAI-format server;
    MLLM keys never include the server address, so a later --server URL finds them cached."""
    from canned_server import CannedServer
    from test_failures_end_to_end import good

    from cirflow.cli.main import build_parser
    from cirflow.flows.plan import answer_from_store
    from cirflow.flows.reproduce.runner import parse_sets, row_config

    server = CannedServer(good)
    try:
        args = build_parser().parse_args(served_row(tmp_path, mini_bench, tiny_models, server.url))
        env = Environment(data_root=args.data_root, models_from=args.models_from,
                          servers={"qwen2.5-vl-7b-instruct": server.url}, store=args.store, out=args.out,
                          split=args.split, sets=parse_sets(args.set))
        entry = next(e for e in entries("pefuse", "2") if ROW in e.row)
        answer_from_store(row_config(entry, env, check_servers=False))
        assert server.chats
    finally:
        server.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plan_prints_each_row_with_its_stages(tmp_path, mini_bench, tiny_models, capsys):
    """`cirflow reproduce ... --plan`: every stage of each row with its key and status, in a fresh process that
    imports no model library and no Prefect, contacting no server; after the row ran, every stage is cached."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_cached_no_server import CountingListener
    from test_plan_imports import _probe

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    listener = CountingListener(port)  # the "server": counts every connection, answers nothing
    try:
        argv = served_row(tmp_path, mini_bench, tiny_models, url)
        as_json, text = _probe(argv + ["--plan", "--json"], argv + ["--plan"])
        assert as_json["code"] == 0 and text["code"] == 0, (as_json, text)
        assert as_json["heavy"] == [] and text["heavy"] == [], (as_json["heavy"], text["heavy"])
        rows = json.loads(as_json["stdout"])
        assert len(rows) == 1 and rows[0]["row"].endswith(ROW) and len(rows[0]["metrics"]) == 8, rows
        stages = {s["stage"]: s for s in rows[0]["plan"]["stages"]}
        assert {"ingest", "compose_target_text", "embed_texts", "retrieve", "evaluate"} <= set(stages), stages
        assert {s["status"] for s in stages.values()} == {"computed"} and all(len(s["key"]) > 12 for s in
                                                                              stages.values())
        out = text["stdout"]
        assert f"== pefuse table 2 / PEFUSE {ROW} (recall@1" in out, out
        for name, s in stages.items():  # one line per stage: name, key (12 characters), status
            assert any(line.split() == [name, s["key"][:12], "computed"] for line in out.splitlines()), out
        assert listener.connections == 0

        fill_store(tmp_path, mini_bench, tiny_models)
        assert main(argv + ["--plan"]) == 0
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if line.strip().split(" ")[0] in stages]
        assert len(lines) == len(stages) and all(line.endswith("cached") for line in lines), out
        assert "nothing to compute" in out
        assert listener.connections == 0
    finally:
        listener.close()


@pytest.mark.slow
def test_a_cached_row_never_contacts_its_server_and_a_computing_one_fails_first(tmp_path, mini_bench, tiny_models,
                                                                              prefect_server, capsys):
    """`cirflow reproduce` goes through `cirflow run`'s deferral: with every stage of the row stored, the run
    completes with its server down and no connection made; a row that must compute (a new compose prompt) with its
    server down fails with one BackendUnavailable line (exit 4) before Prefect starts or anything is stored."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_cached_no_server import CountingListener

    fill_store(tmp_path, mini_bench, tiny_models)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    listener = CountingListener(port)
    try:
        assert main(served_row(tmp_path, mini_bench, tiny_models, url)) == 0
        rows = list(csv.DictReader((tmp_path / "out" / "pefuse-table2.csv").open()))
        assert len(rows) == 8 and all(r["ours"] for r in rows), rows
        assert listener.connections == 0
        capsys.readouterr()

        (tmp_path / "other.txt").write_text("Write a caption of the target image: {modification}")
        composed = set((tmp_path / "store").glob("compose_target_text/*"))
        argv = served_row(tmp_path, mini_bench, tiny_models, url, "--set", f"compose.prompt={tmp_path / 'other.txt'}")
        assert main(argv) == 4
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("cirflow: error:") and url in err[0] and "GET /models" in err[0], err
        assert listener.connections >= 1
        assert set((tmp_path / "store").glob("compose_target_text/*")) == composed
    finally:
        listener.close()
