"""`cirflow reproduce`: the papers' tables beside our numbers (cirflow.flows.reproduce).

    cirflow reproduce --list [--json] [PAPER] [--table N]
    cirflow reproduce PAPER --table N [--row R] --data-root DIR ... --plan [--json]
    cirflow reproduce PAPER --table N --data-root DIR [--models-from DIR] [--server ID=URL] [--store S]
                      [--out DIR] [--split val] [--set KEY=VALUE ...] [--json]

--data-root DIR holds one folder per benchmark: cirr/, circo/, fashioniq/, genecis/ (each laid out as
`cirflow ingest` expects), refined-cirr/ and refined-fashioniq/ (CoLLM's refined sets), imagenet1k-10k/
(MVFT-JI's training images). --models-from DIR holds one folder per model id of
cirflow/flows/reproduce/tables/models.yaml (e.g. DIR/openclip-vit-b-32 an open_clip local-dir,
DIR/qwen2.5-vl-7b-instruct a transformers folder, DIR/sdxl-instructpix2pix a diffusers folder); a folder (or a
symlink to one) replaces the paper's model and is printed as a stand-in beside every row it touches.
"""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("reproduce", help="run the papers' table rows and print paper | ours | Δ | status")
    p.add_argument("paper", nargs="?", help="pefuse, ip_cir, collm, instructcir, mvft_ji")
    p.add_argument("--table", help="the table's number as the paper writes it (2, IV)")
    p.add_argument("--row", help="only rows whose label contains this text")
    p.add_argument("--list", action="store_true", help="list the registry's entries and whether they run here")
    p.add_argument("--plan", action="store_true", help="print each row's stages with their key and whether they "
                   "would be computed, resumed or cached; loads no model, contacts no server, starts nothing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--data-root", help="folder with cirr/, circo/, fashioniq/, genecis/, ...")
    p.add_argument("--models-from", help="folder with one sub-folder per model id (tables/models.yaml)")
    p.add_argument("--server", action="append", default=[], metavar="ID=URL",
                   help="an OpenAI-compatible server for an MLLM id, e.g. qwen2.5-vl-7b-instruct=http://h:8000/v1")
    p.add_argument("--store", default=".cirflow/store", help="artifact store (what is stored is reused)")
    p.add_argument("--out", default=".cirflow/reproduce", help="where the Markdown / CSV comparison goes")
    p.add_argument("--split", help="evaluate on this split instead of the paper's (printed as a deviation)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a dotted config override for every run, e.g. encoder.num_workers=0 (printed as a deviation)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cirflow.flows.reproduce import Environment, entries
    from cirflow.flows.reproduce import report
    from cirflow.flows.reproduce.runner import parse_sets, why_not
    from cirflow.schemas.errors import ConfigError

    servers = {}
    for item in args.server:
        if "=" not in item:
            raise ConfigError(f"--server {item!r}: write MODEL_ID=URL")
        k, v = item.split("=", 1)
        servers[k] = v
    env = Environment(data_root=args.data_root, models_from=args.models_from, servers=servers, store=args.store,
                      out=args.out, split=args.split, sets=parse_sets(args.set))
    chosen = [e for e in entries(args.paper, args.table) if not args.row or args.row.lower() in e.row.lower()]
    if args.list:
        why = {i: why_not(e, env) for i, e in enumerate(chosen)}
        if args.json:
            print(json.dumps([{"paper": e.paper, "table": e.table, "row": e.row, "metric": e.column,
                               "reported": e.reported, "method": e.method, "benchmark": e.benchmark,
                               "split": e.split, "runnable": why[i] is None, "why_not": why[i],
                               "deviations": list(e.deviations), "inconsistencies": list(e.inconsistencies)}
                              for i, e in enumerate(chosen)], indent=1, ensure_ascii=False))
        else:
            print(report.listing(chosen, why))
        return 0
    if not args.paper:
        raise ConfigError("name a paper (cirflow reproduce pefuse --table 2 ...) or use --list")
    if not chosen:
        raise ConfigError("no registry entry matches; see `cirflow reproduce --list`")
    if args.plan:
        return print_plans(chosen, env, args.json)
    from cirflow.flows.reproduce.runner import check_row_servers

    check_row_servers(chosen, env)  # a row that must compute with its server down: one line, before Prefect
    from cirflow.flows.reproduce.flow import reproduce
    from cirflow.cli.console import progress

    stem = f"{args.paper}-table{args.table or 'all'}"
    results = reproduce(chosen, env, key=stem.lower().replace("_", "-"), progress=progress(args.json),
                        servers_checked=True)
    files = report.write(results, args.out, stem)
    if args.json:
        print(json.dumps({"results": [r.as_dict() for r in results], "files": files}, indent=1, ensure_ascii=False))
    else:
        print(report.markdown(results))
        print(f"\nwritten: {files['markdown']}, {files['csv']}")
    return 0


def print_plans(chosen: list, env, as_json: bool) -> int:
    """`--plan`: each distinct run of the chosen rows with its stages (flows/plan.py's plan and printout)."""
    from cirflow.flows.plan import plan_doc, print_plan
    from cirflow.flows.reproduce.runner import plan_rows

    rows = plan_rows(chosen, env)
    if as_json:
        print(json.dumps([{"paper": r.entries[0].paper, "table": r.entries[0].table, "row": r.entries[0].row,
                           "metrics": [e.column for e in r.entries], "why_not": r.why_not,
                           "plan": plan_doc(r.plan, r.cfg) if r.plan is not None else None} for r in rows],
                         indent=1, ensure_ascii=False))
        return 0
    for r in rows:
        e = r.entries[0]
        print(f"== {e.paper} table {e.table} / {e.row} ({', '.join(x.column for x in r.entries)})")
        if r.plan is None:
            print(f"  not runnable: {r.why_not}" if not r.why_not.startswith(("not runnable", "server-evaluated"))
                  else f"  {r.why_not}")
        else:
            print_plan(r.plan, r.cfg, False)
    return 0
