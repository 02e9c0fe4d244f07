"""`cirflow compare CONFIG.yaml` and `cirflow sweep CONFIG.yaml`: grids and sweeps evaluated from the store,
computing only what is missing; one table (Markdown + CSV + Parquet), a sweep plot, a Prefect table artifact."""

from __future__ import annotations

import json


def register(sub) -> None:
    for name, helptext in (("compare", "a grid of modes x encoders x fusions, from stored stages"),
                           ("sweep", "one hyper-parameter over values x seeds, with a mean ± std plot")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("config", help="YAML comparison config (a base run config plus what varies)")
        p.add_argument("--json", action="store_true", help="print the summary as JSON")
        p.set_defaults(func=run, flow=name)
    p = sub.add_parser("ip-cir-ablation", help="IP-CIR ablations (table 3, figures 5, 7, 8) from stored stages")
    p.add_argument("config", help="YAML ablation config (a base ip_cir run config plus what varies)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run, flow="ip_cir_ablation")


def run(args) -> int:
    from cirflow.flows import FLOWS
    from cirflow.schemas.compare import load_compare_config
    from cirflow.schemas.errors import ConfigError

    if args.flow == "ip_cir_ablation":
        from cirflow.flows.ip_cir import load_ablation_config

        cc = load_ablation_config(args.config)
    else:
        cc = load_compare_config(args.config)
    if args.flow == "sweep" and cc.sweep is None:
        raise ConfigError(f"{args.config}: a sweep needs a `sweep` section (param, values, seeds)")
    doc = FLOWS[args.flow](cc.model_dump(mode="json"), progress=not args.json)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(doc["markdown"])
    counts = ", ".join(f"{n} {status}" for status, n in doc["stage_counts"].items())
    print(f"\nstages: {counts} ({doc['wall_seconds']} s)")
    print(f"table: {doc['output_dir']}/comparison.md (.csv, .parquet)")
    for plot in [doc["plot"]] if "plot" in doc else list(doc.get("plots", {}).values()):
        print(f"plot: {plot}")
    return 0
