"""Experiment config: one YAML file per run, validated strictly (an unknown key is an error, not a silent default)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cirflow.schemas.diffusion import DiffusionConfig
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.index import IndexConfig
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


class EmbedConfig(Strict):
    shard_size: int = 4096


class RetrieveConfig(Strict):
    k: int = 50
    index: IndexConfig = Field(default_factory=IndexConfig)
    circo_exclude_reference: bool = False  # protocol deviation: recorded in the key and the run summary


Mode = Literal["t2i", "i2i", "t2t", "i2t"]


class RunConfig(Strict):
    name: str = "pefuse"
    # pefuse_t2i is kept as the name of the text→image-only method; it is pefuse with mode t2i
    method: Literal["pefuse", "pefuse_t2i"] = "pefuse"
    mode: Mode = "t2i"  # PEFUSE §3: text→image, image→image, text→text, image→text
    store: str = ".cirflow/store"  # any fsspec URL
    storage_options: dict = Field(default_factory=dict)
    output_dir: str = ".cirflow/runs"  # submission files, metrics tables, run summaries
    benchmark: BenchmarkConfig
    mllm: MLLMConfig
    encoder: EncoderConfig
    compose: ComposeConfig = Field(default_factory=ComposeConfig)
    caption: CaptionConfig = Field(default_factory=CaptionConfig)
    diffusion: DiffusionConfig | None = None  # required by the image-query modes i2i and i2t
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)

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
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for k, v in (overrides or {}).items():
        raw[k] = v
    return parse_config(raw, str(path))


def parse_config(raw: dict, source: str = "<config>") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{source}: field '{where}': {err['msg']}{more}") from None
