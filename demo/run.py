"""`cirflow demo`: the whole PEFUSE T→I flow, offline on CPU, on a generated mini benchmark in the official
CIRR and CIRCO formats with tiny random-weight models (so the numbers are near chance: it shows the
pipeline, not a result). A second run computes nothing: every stage is served from the store."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from cirflow.demo.mini_benchmark import build_mini_benchmark
from cirflow.models.tiny import build_tiny_open_clip, build_tiny_qwen25vl
from cirflow.flows.registry import parse_config
from cirflow.schemas.config import RunBase

BENCHMARKS = ("cirr", "circo")


def demo_configs(workdir: str | Path) -> list[RunBase]:
    workdir = Path(workdir).resolve()
    roots = build_mini_benchmark(workdir / "data")
    fill = {"workdir": str(workdir), "mllm_dir": str(build_tiny_qwen25vl(workdir / "models" / "tiny-qwen25vl")),
            "encoder_dir": str(build_tiny_open_clip(workdir / "models" / "tiny-open-clip"))}
    template = resources.files("cirflow.demo").joinpath("demo.yaml").read_text()
    configs = []
    for name in BENCHMARKS:
        text = template
        for k, v in {**fill, "benchmark": name, "data_root": str(roots[name])}.items():
            text = text.replace("{" + k + "}", v)
        configs.append(parse_config(yaml.safe_load(text), "cirflow/demo/demo.yaml"))
    return configs


def run_demo(workdir: str | Path, progress: bool = True) -> dict:
    from cirflow.cli.run import run_config
    from cirflow.flows.plan import answer_from_store, plan_config
    from cirflow.flows.summary import merge

    # a warm demo answers from the store, as `cirflow run` does: nothing to compute starts no Prefect server
    return merge([answer_from_store(cfg, progress=progress) if plan_config(cfg).nothing_to_compute
                  else run_config(cfg, progress=progress) for cfg in demo_configs(workdir)])
