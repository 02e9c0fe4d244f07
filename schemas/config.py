"""Experiment configs: one YAML file per run, validated strictly (an unknown key is an error, not a silent default).

This module holds the sections every benchmark run shares (benchmark, executor, compose, embed, retrieve) and
`RunBase`, their common root; each method's own config class lives in its module under cirflow.flows and is
found through cirflow.flows.registry (`load_config` / `parse_config` pick it by the file's `method`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from cirflow.schemas.base import Strict
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.index import IndexConfig
from cirflow.schemas.ldre import LDREConfig  # noqa: F401 - the old import path of tasks/runs/ldre_query.py
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.names import Name
from cirflow.schemas.paths import LocalPath, TemplatePath

BenchmarkName = Literal["cirr", "circo", "fashioniq", "genecis"]


class BenchmarkConfig(Strict):
    name: BenchmarkName
    data_root: LocalPath
    image_root: LocalPath | None = None
    split: str | None = None
    # Fashion-IQ categories / GeneCIS tasks: several run as groups of one experiment and are averaged
    categories: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)
    fiq_join: Literal["and", "and_reversed"] = "and"
    check_images: bool = True

    def groups(self) -> list[dict]:
        """One loader call per group: [{"category": ...}] for Fashion-IQ, [{"task": ...}] for GeneCIS, [{}] else."""
        if self.name == "fashioniq":
            return [{"category": c} for c in (self.categories or ["dress", "shirt", "toptee"])]
        if self.name == "genecis":
            return [{"task": t} for t in (self.tasks or ["focus_attribute", "change_attribute", "focus_object",
                                                        "change_object"])]
        return [{}]

    def label(self, group: dict) -> str:
        """A group's label in summaries and tables: "dress", "focus_object", or the benchmark's name."""
        return "/".join(group.values()) or self.name


class ComposeConfig(Strict):
    """compose_target_text: the MLLM writes the target description from reference image + modification."""

    prompt: TemplatePath | None = None  # a template file; default: the benchmark's file in cirflow/prompts
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(
        temperature=0.1, top_p=0.9, top_k=50, max_tokens=128, seed=0))  # PEFUSE's setting (section 4.1)
    shard_size: int = Field(256, ge=1)
    fallback: Literal["modification", "fail"] = "modification"  # what T→I embeds when the MLLM failed on a query


class CaptionConfig(Strict):
    """caption_images: the MLLM describes gallery images once per (model, prompt, params) for T→T and I→T."""

    prompt: TemplatePath | None = None  # a template file; default: the benchmark's file in cirflow/prompts
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(
        temperature=0.1, top_p=0.9, top_k=50, max_tokens=128, seed=0))
    shard_size: int = Field(256, ge=1)


class EmbedConfig(Strict):
    shard_size: int = Field(4096, ge=1)


class RetrieveConfig(Strict):
    k: int = Field(50, ge=1)
    index: IndexConfig = Field(default_factory=IndexConfig)
    circo_exclude_reference: bool = False  # protocol deviation: recorded in the key and the run summary


class ExecutorConfig(Strict):
    """Where tasks run. "local": in the flow's process. "ray": Prefect's RayTaskRunner; the per-item model stages
    (compose, caption, synthesize, embed images) then run as `workers` shard partitions on the cluster, all
    committing to the shared store (use an fsspec URL every worker can reach, e.g. s3://...)."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # ray://head:10001 or "auto"; None starts a local Ray cluster
    workers: int = Field(1, ge=1)  # partitions per sharded stage, e.g. the number of GPUs
    init_kwargs: dict = Field(default_factory=dict)  # extra ray.init arguments (num_cpus, num_gpus, runtime_env)

    def world(self) -> int:
        return self.workers if self.kind == "ray" else 1


Mode = Literal["t2i", "i2i", "t2t", "i2t"]


class RunBase(Strict):
    """What every benchmark run shares; each method's config (cirflow.flows.<method>) adds its own sections and
    narrows `method` to its name."""

    name: Name = "run"  # each method's config defaults it to the method's name
    method: str  # each method's config narrows it to its own name, with that default (cirflow.flows.registry)
    store: LocalPath = ".cirflow/store"  # any fsspec URL
    storage_options: dict = Field(default_factory=dict)
    output_dir: LocalPath = ".cirflow/runs"  # submission files, metrics tables, run summaries
    # the failed share of items (unusable model answers) above which a stage fails the run; what succeeded stays
    # committed and the rerun asks again only for the failed items
    max_failure_rate: float = Field(0.05, ge=0.0, le=1.0)
    gpu_limit: str | None = None  # Prefect global concurrency limit gating local GPU model loads ($CIRFLOW_GPU_LIMIT)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    benchmark: BenchmarkConfig
    mllm: MLLMConfig
    llm: MLLMConfig | None = None  # text LLM for rewrite_caption / plan_layout ; default: mllm
    encoder: EncoderConfig
    compose: ComposeConfig = Field(default_factory=ComposeConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)

    def text_llm(self) -> MLLMConfig:
        return self.llm or self.mllm

    @field_validator("storage_options")
    @classmethod
    def _no_inline_secrets(cls, v: dict) -> dict:
        for k in v:
            if any(s in k.lower() for s in ("secret", "password", "token", "key")):
                raise ValueError(f"storage_options.{k}: put credentials in the environment (e.g. AWS_SECRET_ACCESS_KEY), "
                                 "not in the config, so they never reach manifests or logs")
        return v


RunConfig = RunBase  # the old name, for type hints of code that takes any benchmark run's config


def load_config(path: str | Path, overrides: dict | None = None):
    """A config file validated by its method's config class (cirflow.flows.registry.load_config)."""
    from cirflow.flows.registry import load_config as load

    return load(path, overrides=overrides)


def parse_config(raw: dict, source: str = "<config>"):
    """A config mapping validated by its method's config class (cirflow.flows.registry.parse_config)."""
    from cirflow.flows.registry import parse_config as parse

    return parse(raw, source)
