"""`cirflow run CONFIG.yaml [--json]`: run a method's flow under Prefect from a config file."""

from __future__ import annotations

import json

from cirflow.schemas.config import RunConfig, load_config


def register(sub) -> None:
    p = sub.add_parser("run", help="run a method (config-driven) under Prefect")
    p.add_argument("config", help="YAML run config")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    if _method(args.config) == "refine":
        return _run_refine(args)
    cfg = load_config(args.config)
    preflight(cfg)
    doc = run_config(cfg, progress=not args.json)
    print_summary(doc, as_json=args.json)
    return 0


def _method(path: str) -> str | None:
    """The config's method, read before validation so each method's own schema validates its file."""
    import yaml

    try:
        raw = yaml.safe_load(open(path))
    except (OSError, yaml.YAMLError):
        return None  # load_config reports it properly
    return raw.get("method") if isinstance(raw, dict) else None


def _run_refine(args) -> int:
    from cirflow.flows import FLOWS
    from cirflow.schemas.refine import load_refine_config

    cfg = load_refine_config(args.config)
    doc = FLOWS["refine"](cfg.model_dump(mode="json"), progress=not args.json)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(json.dumps({k: doc[k] for k in ("counts", "output_dir") if k in doc}, indent=2, default=str))
    return 0


def preflight(cfg: RunConfig) -> None:
    """Input errors a user can fix (annotations, missing images, prompt files) surface here as one line, before
    Prefect starts and before any model loads; inside a flow they would arrive wrapped in engine tracebacks."""
    from cirflow.prompts import load_template
    from cirflow.tasks.benchmarks import load_benchmark

    b = cfg.benchmark
    for group in b.groups():
        load_benchmark(b.name, b.data_root, split=b.split, image_root=b.image_root, fiq_join=b.fiq_join,
                       check_images=b.check_images, **group)
    load_template("compose_target_text", b.name, cfg.compose.prompt)
    if cfg.method == "ip_cir":
        load_template("plan_layout", b.name, cfg.ip_cir.layout_prompt)


def run_config(cfg: RunConfig, progress: bool = True) -> dict:
    from cirflow.flows import FLOWS

    return FLOWS[cfg.method](cfg.model_dump(mode="json"), progress=progress)


def print_summary(doc: dict, as_json: bool) -> None:
    from cirflow.flows.summary import metrics_markdown, stages_markdown

    if as_json:
        print(json.dumps(doc, indent=2))
        return
    print(f"\n{doc['method']} on {doc['benchmark']} — stages\n")
    print(stages_markdown(doc))
    print("\nmetrics (percent)\n")
    print(metrics_markdown(doc))
    c = doc["compute"]
    print(f"\ncompute: {c['wall_seconds']} s wall, {c['stage_seconds_computed']} s in computed stages"
          + (f", {c['end_to_end_seconds_per_query']} s per query" if c["end_to_end_seconds_per_query"] else ""))
    print(f"store: {doc['store']}\nrun folder: {doc['output_dir']}")
    for f in doc["submission_files"]:
        print(f"submission: {f}")
