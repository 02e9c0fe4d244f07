"""`cirflow run CONFIG.yaml [--json]`: run the method a config file names (cirflow.flows.registry) under
Prefect: validate it by the method's config class, run its preflight, run its flow, print its report."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("run", help="run a method (config-driven) under Prefect")
    p.add_argument("config", help="YAML run config (its `method` picks the flow)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    add_retry_flag(p)
    add_plan_flags(p)
    p.set_defaults(func=run)


def add_retry_flag(p) -> None:
    """`--retry-failed`, the same on every command that runs stages (run, compare, sweep, build)."""
    p.add_argument("--retry-failed", action="store_true",
                   help="recompute the failed rows of stored complete artifacts (the ok rows are kept)")


def add_plan_flags(p) -> None:
    p.add_argument("--plan", action="store_true", help="print every stage with its key and whether it would be "
                   "computed, resumed or cached; loads no model, starts nothing, writes nothing")
    p.add_argument("--record", action="store_true", help="run under Prefect even when every stage is cached "
                   "(by default such a run answers from the store without starting Prefect)")


def run(args) -> int:
    return run_file(args.config, as_json=args.json, retry_failed=getattr(args, "retry_failed", False),
                    plan=args.plan, record=args.record)


def run_file(path: str, method: str | None = None, as_json: bool = False, retry_failed: bool = False,
             plan: bool = False, record: bool = False) -> int:
    """Every method's command: `method` when the command names it (`cirflow sweep`), else the file's."""
    from cirflow.flows import registry

    cfg = registry.load_config(path, method)
    m = registry.get(cfg.method)
    from cirflow.flows.method import check_servers_if_needed, deferred_servers

    with deferred_servers() as servers:  # model servers are checked below, only if the run will ask them
        m.preflight(cfg, path)  # one-line errors before Prefect starts or any model loads
    from cirflow.cli.console import progress
    from cirflow.flows.plan import plan_config

    planned = None
    if plan or not (record or retry_failed):
        from cirflow.flows.plan import answer_from_store, print_plan

        planned = plan_config(cfg)
        if plan:
            print_plan(planned, cfg, as_json)
            return 0
        if planned.nothing_to_compute:  # the stored summary, without starting Prefect (flows/plan.py)
            m.report(answer_from_store(cfg, progress=progress(as_json)), as_json)
            return 0
    if servers and planned is None:
        planned = plan_config(cfg)
    check_servers_if_needed(servers, planned, retry_failed)
    doc = run_config(cfg, progress=progress(as_json), retry_failed=retry_failed)
    m.report(doc, as_json)
    return 0


def run_config(cfg, progress: bool = True, retry_failed: bool = False) -> dict:
    """Run a validated config's flow (on the task runner it asks for) and return its summary. `retry_failed`:
    every stage the flow runs recomputes the failed rows of its stored complete artifact (a run-wide policy,
    cirflow.tasks.stage.failure_policy, that the flow's own `max_failure_rate` block inherits)."""
    from cirflow.flows import FLOWS
    from cirflow.tasks.stage import failure_policy

    with failure_policy(getattr(cfg, "max_failure_rate", None), retry_failed=retry_failed):
        return FLOWS[cfg.method](cfg.model_dump(mode="json"), progress=progress)


def preflight(cfg, source: str = "config", retry_failed: bool = False) -> None:
    """The config's method's preflight (cirflow.flows.method.Method.preflight) for callers that run the flow
    themselves (deployments, `cirflow reproduce`): its model servers are checked only when the plan says a stage
    that asks them would compute (`run_file`'s deferral), so a fully cached run never needs its server."""
    from cirflow.flows import registry
    from cirflow.flows.method import check_servers_if_needed, deferred_servers

    with deferred_servers() as servers:
        registry.get(cfg.method).preflight(cfg, source)
    if servers:
        from cirflow.flows.plan import plan_config

        check_servers_if_needed(servers, plan_config(cfg), retry_failed)


def print_summary(doc: dict, as_json: bool) -> None:
    from cirflow.flows.summary import print_summary as show

    show(doc, as_json)
