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
    cfg = load_config(args.config)
    preflight(cfg)
    doc = run_config(cfg, progress=not args.json)
    print_summary(doc, as_json=args.json)
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
