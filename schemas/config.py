"""Experiment config: one YAML file per run, validated strictly (an unknown key is an error, not a silent default)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cirflow.schemas.diffusion import DiffusionConfig
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.index import IndexConfig
from cirflow.schemas.layout import ProxyConfig
from cirflow.schemas.loading import read_yaml, validate
from cirflow.schemas.mllm import MLLMConfig, SamplingParams

BenchmarkName = Literal["cirr", "circo", "fashioniq", "genecis"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BenchmarkConfig(Strict):
    name: BenchmarkName
    data_root: str
    image_root: str | None = None
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


class ComposeConfig(Strict):
    """compose_target_text: the MLLM writes the target description from reference image + modification."""

    prompt: str | None = None  # a template file; default: the benchmark's file in cirflow/prompts
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(
        temperature=0.1, top_p=0.9, top_k=50, max_tokens=128, seed=0))  # PEFUSE's setting (section 4.1)
    shard_size: int = 256
    fallback: Literal["modification", "fail"] = "modification"  # what T→I embeds when the MLLM failed on a query


class CaptionConfig(Strict):
    """caption_images: the MLLM describes gallery images once per (model, prompt, params) for T→T and I→T."""

    prompt: str | None = None  # a template file; default: the benchmark's file in cirflow/prompts
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(
        temperature=0.1, top_p=0.9, top_k=50, max_tokens=128, seed=0))
    shard_size: int = 256


class ReferenceCaptionConfig(CaptionConfig):
    """caption_images over the queries' reference images (CIReVL, LDRE, IP-CIR): a generic detailed caption
    by default (CIReVL's "describe the image in complete detail" structure)."""

    prompt: str | None = "detailed"  # a built-in name (prompts/caption_images.<name>.txt) or a file path


class RewriteConfig(Strict):
    """rewrite_caption: a text LLM edits the reference caption by the instruction (CIReVL; LDRE per caption)."""

    prompt: str | None = None  # default: prompts/rewrite_caption.<benchmark>.txt
    sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_tokens=128))
    shard_size: int = 256


class LDREConfig(Strict):
    """LDRE (metrics-and-methods B.2): n sampled reference captions, one edit each, a weighted ensemble."""

    n_captions: int = Field(15, ge=1)
    # divergent captions come from nucleus sampling (BLIP-2 in the paper)
    caption_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(
        temperature=1.0, top_p=0.9, max_tokens=64, seed=0))
    weighting: Literal["ensemble", "mean"] = "ensemble"  # "mean": LDRE's CIRR path (plain average)
    k: int = Field(5, ge=1)
    temperature: float = Field(0.04, gt=0)
    per_query: bool = False  # public code: weights per caption slot shared by all queries


class IPCIRConfig(Strict):
    """IP-CIR (ip-cir.txt, metrics-and-methods B.1) on top of a baseline's text similarity."""

    baseline: Literal["ldre", "cirevl", "pefuse"] = "ldre"
    layout_prompt: str | None = None  # default: prompts/plan_layout.<benchmark>.txt
    layout_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_tokens=512))
    max_attempts: int = Field(3, ge=1)
    enrich: bool = False
    proxies: ProxyConfig = Field(default_factory=ProxyConfig)
    a_w: float = 1.0  # robust proxy weights (Eq. 1, authors' code defaults)
    s_w: float = 1.0
    t_w: float = 1.0
    max_mode: Literal["global", "per_query"] = "global"
    lam: float | None = Field(None, ge=0.0, le=1.0)  # balance metric λ; None = per dataset (CIRCO 0.3, CIRR 0.0, FIQ 0.8)


class EmbedConfig(Strict):
    shard_size: int = 4096


class RetrieveConfig(Strict):
    k: int = 50
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


class RunConfig(Strict):
    name: str = "pefuse"
    # pefuse_t2i is kept as the name of the text→image-only method; it is pefuse with mode t2i
    method: Literal["pefuse", "pefuse_t2i", "cirevl", "ldre", "ip_cir"] = "pefuse"
    mode: Mode = "t2i"  # PEFUSE §3: text→image, image→image, text→text, image→text
    store: str = ".cirflow/store"  # any fsspec URL
    storage_options: dict = Field(default_factory=dict)
    output_dir: str = ".cirflow/runs"  # submission files, metrics tables, run summaries
    gpu_limit: str | None = None  # Prefect global concurrency limit gating local GPU model loads ($CIRFLOW_GPU_LIMIT)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    benchmark: BenchmarkConfig
    mllm: MLLMConfig
    llm: MLLMConfig | None = None  # text LLM for rewrite_caption / plan_layout (CIReVL, LDRE, IP-CIR); default: mllm
    encoder: EncoderConfig
    compose: ComposeConfig = Field(default_factory=ComposeConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    diffusion: DiffusionConfig | None = None  # required by the image-query modes i2i and i2t
    reference_caption: ReferenceCaptionConfig = Field(default_factory=ReferenceCaptionConfig)
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)
    ldre: LDREConfig = Field(default_factory=LDREConfig)
    ip_cir: IPCIRConfig = Field(default_factory=IPCIRConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)

    def text_llm(self) -> MLLMConfig:
        return self.llm or self.mllm

    @model_validator(mode="after")
    def _mode_needs(self) -> "RunConfig":
        if self.method == "pefuse_t2i" and self.mode != "t2i":
            raise ValueError("method pefuse_t2i runs mode t2i only; use method: pefuse for other modes")
        if self.mode in ("i2i", "i2t") and self.diffusion is None:
            raise ValueError(f"mode {self.mode} generates query images: add a diffusion section")
        return self

    @field_validator("storage_options")
    @classmethod
    def _no_inline_secrets(cls, v: dict) -> dict:
        for k in v:
            if any(s in k.lower() for s in ("secret", "password", "token", "key")):
                raise ValueError(f"storage_options.{k}: put credentials in the environment (e.g. AWS_SECRET_ACCESS_KEY), "
                                 "not in the config, so they never reach manifests or logs")
        return v


def load_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    raw = read_yaml(path) | dict(overrides or {})
    return parse_config(raw, str(path))


def parse_config(raw: dict, source: str = "<config>") -> RunConfig:
    return validate(RunConfig, raw, source)
