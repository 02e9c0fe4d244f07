"""`cirflow build {mtcir,instructcir,mvft} CONFIG.yaml [--json]`: a training-data build from an unlabeled
image collection (CoLLM's MTCIR, InstructCIR, MVFT-JI), resumable and incremental."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import ValidationError

from cirflow.schemas.errors import ConfigError

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
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "<root>"
        raise ConfigError(f"{path}: field '{where}': {err['msg']}") from None


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
