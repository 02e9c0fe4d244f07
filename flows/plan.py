"""`--plan` and the store shortcut of `cirflow run|compare|sweep|build CONFIG`.

`plan_config` runs the method's flow *function* (not the Prefect flow) inside plan mode (tasks/plan_mode.py):
every stage computes its key through its own Params, exactly as a run would, and looks the store up instead of
computing. Nothing is loaded (stage code never runs, so models stay unloaded), no Prefect flow or task run is
created, nothing is written.

`answer_from_store`: when the plan says every stage is cached, the flow function runs once more without
Prefect; every stage returns its stored artifact and the run folder + summary are written as a cached run
would write them, without starting a Prefect server (the fixed ~15 s of a small run). `--record` asks for the
Prefect run anyway.
"""

from __future__ import annotations

import json
import time

from cirflow.tasks import plan_mode


def plan_config(cfg):
    """The Plan (tasks/plan_mode.Plan) of a validated config: its stages in the order the flow reaches them."""
    from cirflow.flows import registry

    fn = registry.get(cfg.method).flow.fn  # the undecorated flow body
    t0 = time.perf_counter()
    with plan_mode.planning() as plan:
        try:
            fn(cfg.model_dump(mode="json"), progress=False)
        except plan_mode.PlanBlocked as e:
            plan.blocked = str(e)
    plan.seconds = time.perf_counter() - t0
    return plan


def plan_doc(plan, cfg) -> dict:
    counts = {s: sum(st.status == s for st in plan.steps) for s in ("computed", "resumed", "cached")}
    return {"run": getattr(cfg, "name", None), "method": cfg.method,
            "store": getattr(cfg, "store", None) or cfg.base.store,  # a comparison's store is its base run's
            "stages": [{"stage": s.stage, "key": s.key, "status": s.status, "inputs": s.inputs} for s in plan.steps],
            "counts": counts, "complete": plan.blocked is None, "blocked": plan.blocked,
            "nothing_to_compute": plan.nothing_to_compute}


def print_plan(plan, cfg, as_json: bool) -> None:
    doc = plan_doc(plan, cfg)
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    c = doc["counts"]
    print(f"plan of {cfg.method} {doc['run'] or ''} (store {doc['store']}): {len(plan.steps)} stages — "
          f"{c['computed']} to compute, {c['resumed']} to resume, {c['cached']} cached")
    print(f"  {'stage':<24} {'key':<14} status")
    for s in plan.steps:
        print(f"  {s.stage:<24} {s.key[:12]:<14} {s.status}")
    if plan.blocked:
        print(f"  … and the stages after it: {plan.blocked}")
    elif plan.nothing_to_compute:
        print("nothing to compute: `cirflow run` answers from the store (add --record for a Prefect run)")


def answer_from_store(cfg, progress: bool = False) -> dict:
    """The summary of a run whose every stage is cached, without Prefect (see the module doc)."""
    from cirflow.flows import registry

    with plan_mode.direct():
        return registry.get(cfg.method).flow.fn(cfg.model_dump(mode="json"), progress=progress)
