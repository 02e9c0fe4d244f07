"""Wall time of `cirflow run CONFIG --plan` and of the store shortcut on a warm demo store (issue 14 goal 3).

Builds the `cirflow demo` configs (mini CIRR + CIRCO, tiny models) in --workdir, fills the store once (each
flow's function run directly, without Prefect, so the bench does not depend on a server), then times fresh
`cirflow` processes, each --repeats times (median):
  import floor   python -c "import cirflow.flows.pefuse"  (what any in-process plan must import)
  --plan         cirflow run CONFIG --plan                (keys + store lookups, nothing loaded or started)
  shortcut       cirflow run CONFIG                       (nothing to compute: the summary from the store)
  --record       cirflow run CONFIG --record              (the Prefect run: ephemeral server; --no-record skips)
Goal: a warm demo plan / shortcut under 2 s wall. JSON to bench/results/plan_warm-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


SPLIT = """
import json, sys, time
t0 = time.perf_counter()
from cirflow.flows import registry
from cirflow.flows.plan import answer_from_store, plan_config
cfg = registry.load_config(sys.argv[1], None)
registry.get(cfg.method).flow  # the method's flow module (its stages import torch / Prefect only to compute)
t1 = time.perf_counter()
plan = plan_config(cfg)
t2 = time.perf_counter()
answer_from_store(cfg)
t3 = time.perf_counter()
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "prefect", "open_clip", "transformers", "diffusers",
                                                         "ray"})
print(json.dumps({"imports_s": round(t1 - t0, 3), "plan_s": round(t2 - t1, 3), "shortcut_s": round(t3 - t2, 3),
                  "nothing_to_compute": plan.nothing_to_compute, "heavy_imported": heavy}))
"""


def wall(cmd: list[str], repeats: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        runs.append(time.perf_counter() - t)
        if proc.returncode != 0:  # reported, not fatal: an ephemeral Prefect server may time out on a busy box
            print(f"{' '.join(cmd[-3:])} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            runs[-1] = float("nan")
    return statistics.median(runs), runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/cirflow-plan-bench")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-record", action="store_true", help="skip the Prefect run row")
    ap.add_argument("--split-only", action="store_true", help="only the imports / plan / shortcut split")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import yaml

    from cirflow.demo.run import demo_configs
    from cirflow.flows import registry
    from cirflow.flows.plan import answer_from_store

    work = Path(args.workdir)
    paths = []
    for cfg in demo_configs(work):
        path = work / f"{cfg.benchmark.name}.yaml"
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        paths.append(path)
        # fills the store (the flow body without Prefect; a no-op when warm), from the very file the rows run
        answer_from_store(registry.load_config(path))
    # where the time of one fresh process goes: imports vs the planner's own work vs the shortcut's
    split = subprocess.run([sys.executable, "-c", SPLIT, str(paths[-1])], capture_output=True, text=True)
    breakdown = (json.loads(split.stdout.strip().splitlines()[-1]) if split.returncode == 0
                 else {"error": split.stderr[-500:]})
    print(f"one fresh process, {paths[-1].stem}: {breakdown} (load average {os.getloadavg()[0]:.1f})")
    if args.split_only:
        return 0
    cli = [sys.executable, "-m", "cirflow.cli.main"]
    rows = [("import floor", [sys.executable, "-c", "import cirflow.flows.pefuse"])]
    for p in paths:
        rows += [(f"--plan {p.stem}", [*cli, "run", str(p), "--plan"]),
                 (f"shortcut {p.stem}", [*cli, "run", str(p), "--json"])]
        if not args.no_record:
            rows.append((f"--record {p.stem}", [*cli, "run", str(p), "--record", "--json"]))
    results = []
    for name, cmd in rows:
        med, runs = wall(cmd, 1 if name.startswith("--record") else args.repeats)
        results.append({"what": name, "median_s": round(med, 2), "runs": [round(r, 2) for r in runs]})
    print(f"nproc {os.cpu_count()}, load average (1, 5, 15 min) {os.getloadavg()}: the box is shared; "
          "heavy load inflates every row")
    print("| command (warm demo store) | median wall s | runs |")
    print("|---|---:|---|")
    for r in results:
        print(f"| {r['what']} | {r['median_s']} | {r['runs']} |")
    out = Path(args.out or Path(__file__).with_name("results") / f"plan_warm-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "nproc": os.cpu_count(),
                               "loadavg": os.getloadavg()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
