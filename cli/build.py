"""`cirflow build {mtcir,instructcir,mvft} CONFIG.yaml [--json]`: a training-data build from an unlabeled
image collection (CoLLM's MTCIR, InstructCIR, MVFT-JI), resumable and incremental."""

from __future__ import annotations

import json
from cirflow.schemas.loading import load

KINDS = ("mtcir", "instructcir", "mvft")


def register(sub) -> None:
    p = sub.add_parser("build", help="build a CIR training set from an unlabeled image collection")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("config", help="YAML build config")
    p.add_argument("--json", action="store_true", help="print the build summary as JSON")
    p.set_defaults(func=run)


def load_build_config(kind: str, path: str):
    from cirflow.schemas.builds import InstructCIRBuildConfig, MTCIRBuildConfig, MVFTBuildConfig

    model = {"mtcir": MTCIRBuildConfig, "instructcir": InstructCIRBuildConfig, "mvft": MVFTBuildConfig}[kind]
    return load(model, path)


def run(args) -> int:
    from cirflow.flows import FLOWS

    cfg = load_build_config(args.kind, args.config)
    doc = FLOWS[f"build_{args.kind}"](cfg.model_dump(mode="json"), progress=not args.json)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        for s in doc.get("stages", []):
            print(f"{s.get('stage', ''):<22} {s.get('status', ''):<9} {str(s.get('key', ''))[:12]}")
        for k in ("release", "llm_cache"):
            if k in doc:
                print(f"{k}: {doc[k]}")
    return 0
