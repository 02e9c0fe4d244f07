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


def run(args) -> int:
    from cirflow.flows import FLOWS
    from cirflow.schemas.compare import load_compare_config
    from cirflow.schemas.errors import ConfigError

    cc = load_compare_config(args.config)
    if args.flow == "sweep" and cc.sweep is None:
        raise ConfigError(f"{args.config}: a sweep needs a `sweep` section (param, values, seeds)")
    doc = FLOWS[args.flow](cc.model_dump(mode="json"), progress=not args.json)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(doc["markdown"])
    c = doc["stage_counts"]
    print(f"\nstages: {c['computed']} computed, {c.get('resumed', 0)} resumed, {c['cached']} cached "
          f"({doc['wall_seconds']} s)")
    print(f"table: {doc['output_dir']}/comparison.md (.csv, .parquet)")
    if "plot" in doc:
        print(f"plot: {doc['plot']}")
    return 0
