"""`cirflow build KIND CONFIG.yaml [--json]`: a training-data build from an unlabeled image collection (the
registry's `build_KIND` methods: CoLLM's MTCIR, InstructCIR, MVFT-JI), resumable and incremental."""

from __future__ import annotations


def register(sub) -> None:
    from cirflow.flows.registry import build_kinds

    p = sub.add_parser("build", help="build a CIR training set from an unlabeled image collection")
    p.add_argument("kind", choices=build_kinds())
    p.add_argument("config", help="YAML build config")
    p.add_argument("--json", action="store_true", help="print the build summary as JSON")
    from cirflow.cli.run import add_plan_flags, add_retry_flag

    add_retry_flag(p)
    add_plan_flags(p)
    p.set_defaults(func=run)


def load_build_config(kind: str, path: str):
    from cirflow.flows.registry import BUILD_PREFIX, load_config

    return load_config(path, BUILD_PREFIX + kind)


def run(args) -> int:
    from cirflow.cli.run import run_file
    from cirflow.flows.registry import BUILD_PREFIX

    return run_file(args.config, BUILD_PREFIX + args.kind, as_json=args.json, retry_failed=args.retry_failed,
                    plan=args.plan, record=args.record)
