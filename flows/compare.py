"""Comparisons from the store: a grid of PEFUSE modes × encoders × fusion settings (PEFUSE tables 1–3, 7) and
hyper-parameter sweeps with several seeds (figures 2–3). Each variant is the same stage DAG as `pefuse`, so
whatever two variants share (ingest, composed texts, gallery captions, gallery features, generated images) is
computed once and read from the store afterwards; only what a variant really changes is computed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from cirflow.evaluation.api import check_metrics
from cirflow.flows.method import Method
from cirflow.flows.models import ModelPool
from cirflow.flows.collm import CoLLMConfig
from cirflow.flows.instructcir import InstructCIRConfig
from cirflow.flows.mvft_ji import MVFTJIConfig
from cirflow.flows.pefuse import PefuseConfig, gallery_features, query_features
from cirflow.flows.pefuse import _preflight as run_preflight
from cirflow.flows.report import ComparisonReport, encoder_label, print_comparison
from cirflow.flows.runs import add_models, ingest, retrieve_evaluate
from cirflow.schemas.base import Strict
from cirflow.schemas.compare import FusionSpec, SweepSpec, VariantSpec, with_override
from cirflow.schemas.config import Mode
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.names import Name
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.distributed import partitions
from cirflow.tasks.runs.retrieve import ScoreTerm
from cirflow.schemas.progress import group as progress_group
from cirflow.tasks.stage import failure_policy
from cirflow.tasks.wrappers import evaluate_task, fuse_scores_task
from cirflow.tasks.lazy_prefect import flow  # Prefect on first real run: `--plan` never imports it


class CompareConfig(Strict):
    """A base run config plus what varies: modes × encoders, and fused rows of several modes (a PEFUSE base);
    `variants`, rows of dotted overrides on the base (any base, e.g. MVFT-JI's table 4 ablations, CoLLM's fig. 7 /
    tables 6c, 7 and InstructCIR's tables IV, V: trainings whose keys differ, the rest read from the store)."""

    method: Literal["compare"] = "compare"
    name: Name = "compare"
    # the base run's method picks its config class (a base without `method:` is a PEFUSE run)
    base: Annotated[PefuseConfig | MVFTJIConfig | CoLLMConfig | InstructCIRConfig, Field(discriminator="method")]
    modes: list[Mode] = Field(default_factory=lambda: ["t2i"])
    encoders: list[EncoderConfig] = Field(default_factory=list)  # default: the base config's encoder
    fusions: list[FusionSpec] = Field(default_factory=list)
    variants: list[VariantSpec] = Field(default_factory=list)
    sweep: SweepSpec | None = None  # used by `method: sweep`

    @model_validator(mode="before")
    @classmethod
    def _base_method(cls, data):
        if isinstance(data, dict) and isinstance(data.get("base"), dict) and "method" not in data["base"]:
            data = {**data, "base": {**data["base"], "method": "pefuse"}}
        return data

    @model_validator(mode="after")
    def _check(self) -> "CompareConfig":
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")
        for v in self.variants:
            v.apply(self.base)  # a bad path or value fails here, before anything runs
        if not isinstance(self.base, PefuseConfig):
            # checked by value, not by presence: the flow receives the config dumped with every default
            if self.encoders or self.fusions or self.modes != ["t2i"]:
                raise ValueError(f"modes / encoders / fusions vary a PEFUSE run; a {self.base.method} base varies "
                                 "by `variants` (dotted overrides)")
            if self.sweep is not None:
                raise ValueError(f"sweeps run on a PEFUSE base, not {self.base.method}")
            if getattr(self.base, "variants", None):
                raise ValueError(f"the {self.base.method} base has `variants` of its own: list them in the "
                                 "comparison's `variants`")
            return self
        for f in self.fusions:
            missing = set(f.terms) - set(self.modes)
            if missing:
                raise ValueError(f"fusion {f.name!r} uses modes {sorted(missing)} that are not in modes")
        if {"i2i", "i2t"} & set(self.modes) and self.base.diffusion is None:
            raise ValueError("modes i2i/i2t generate query images: add a diffusion section to base")
        return self


class SweepConfig(CompareConfig):
    """One parameter of the base config over values × seeds (PEFUSE figures 2–3)."""

    method: Literal["sweep"] = "sweep"
    name: Name = "sweep"
    sweep: SweepSpec  # param, values, seeds


def _variant(store, cfg: PefuseConfig, group: dict, pool: ModelPool, progress: bool
             ) -> tuple[list[Artifact], ScoreTerm]:
    bench = ingest(store, cfg, group)
    queries = query_features(store, cfg, bench, pool, progress)
    gallery = gallery_features(store, cfg, bench, pool, progress)
    arts = [bench, *queries, *gallery, *retrieve_evaluate(store, cfg, bench, queries[-1], gallery[-1])]
    return arts, ScoreTerm(queries[-1], gallery[-1])


@flow(name="compare")
def compare(config: dict, progress: bool = True) -> dict:
    cc = CompareConfig.model_validate(config | {"method": "compare"})
    with partitions(cc.base.executor.world()), failure_policy(cc.base.max_failure_rate):
        return _compare(cc, progress)


def _compare(cc: CompareConfig, progress: bool) -> dict:
    base = cc.base
    store = ArtifactStore(base.store, base.storage_options)
    report = ComparisonReport(cc.name, base, started=time.perf_counter())
    if isinstance(base, MVFTJIConfig):
        _mvft_variants(store, cc, report, progress)
        return report.publish(store)
    if (groups := _compare_groups(base)) is not None:
        _trained_variants(store, cc, report, progress, groups)
        return report.publish(store)
    with ModelPool(base.gpu_limit) as pool:
        add_models(pool, base)  # MLLM and diffusion shared by every variant
        for enc in cc.encoders or [base.encoder]:
            cfg_e = base.model_copy(update={"encoder": enc})
            pool.add_encoder("encoder", enc)  # another encoder closes the previous one first
            for group in base.benchmark.groups():
                label = base.benchmark.label(group)
                terms: dict[str, ScoreTerm] = {}
                for mode in cc.modes:
                    cfg = cfg_e.model_copy(update={"mode": mode})
                    with progress_group(f"{mode} · {label}"):  # the row and group on its stages' progress lines
                        arts, terms[mode] = _variant(store, cfg, group, pool, progress)
                    report.add(encoder_label(cfg), mode.upper().replace("2", "→"), label, arts)
                for f in cc.fusions:
                    bench = ingest(store, cfg_e, group)
                    fused = fuse_scores_task(
                        store, bench, [ScoreTerm(terms[m].queries, terms[m].gallery, w) for m, w in f.terms.items()],
                        rule=f.rule, rule_params={"normalize": f.normalize} if f.rule == "weighted_sum" else {},
                        k=base.retrieve.k, circo_exclude_reference=base.retrieve.circo_exclude_reference)
                    report.add(encoder_label(cfg_e), f.name, label, [bench, fused, evaluate_task(store, bench, fused)])
        for v in cc.variants:
            cfg = v.apply(base)
            add_models(pool, cfg)  # a variant's own models; unchanged slots stay loaded
            for group in base.benchmark.groups():
                with progress_group(f"{v.name} · {base.benchmark.label(group)}"):
                    arts, _ = _variant(store, cfg, group, pool, progress)
                report.add(encoder_label(cfg), v.name, base.benchmark.label(group), arts)
    return report.publish(store)


def _mvft_variants(store: ArtifactStore, cc: CompareConfig, report: ComparisonReport, progress: bool) -> None:
    """MVFT-JI rows (table 4): each variant's stage DAG (train per seed → token features → retrieval / joint
    fusion → evaluate). Variants that train the same model (same data, hyper-parameters, seed) share its key,
    so the fusion-only ablations (w/o s̃, w/o ŝ) read the full model from the store."""
    from cirflow.flows.mvft_ji import add_slots, encoder_folder, run_group

    variants = cc.variants or [VariantSpec(name=cc.base.joint.mode)]
    with ModelPool(cc.base.gpu_limit) as pool:
        for v in variants:
            cfg = v.apply(cc.base)
            add_slots(pool, cfg)
            seeds = cfg.seeds if cfg.trains else cfg.seeds[:1]
            for seed in seeds:
                folder, made = encoder_folder(store, cfg, pool, seed, progress)
                label = f"{Path(cfg.encoder.base).name}:{cfg.encoder.weights}"
                row = v.name if len(seeds) == 1 else f"{v.name} (seed {seed})"
                for group in cfg.benchmark.groups():
                    with progress_group(f"{row} · {cfg.benchmark.label(group)}"):
                        arts = run_group(store, cfg, group, pool, progress, folder, made)
                    report.add(label, row, cfg.benchmark.label(group), arts, seed=seed)


def _compare_groups(base):
    """The base method's comparison hook (Method.compare_groups: collm, instructcir), or None."""
    from cirflow.flows import registry

    return registry.get(base.method).compare_groups


def _trained_variants(store: ArtifactStore, cc: CompareConfig, report: ComparisonReport, progress: bool,
                      groups) -> None:
    """Rows of a trained-model method (CoLLM fig. 7 / tables 6c, 7; InstructCIR tables IV, V): each variant's
    training(s) and evaluation; a variant that changes only a training key retrains, and ingest (and whatever
    else its key leaves unchanged) is read from the store."""
    with ModelPool(cc.base.gpu_limit) as pool:
        for v in cc.variants or [VariantSpec(name=cc.base.name)]:
            cfg = v.apply(cc.base)
            with progress_group(v.name):  # "<variant> · <group>" on its stages' progress lines
                rows = groups(store, cfg, pool, progress)
            for label, arts in rows:
                report.add(cfg.method, v.name, label, arts)


@flow(name="sweep")
def sweep(config: dict, progress: bool = True) -> dict:
    """One parameter over values × seeds; every other stage comes from the store."""
    cc = SweepConfig.model_validate(config | {"method": "sweep"})
    with partitions(cc.base.executor.world()), failure_policy(cc.base.max_failure_rate):
        return _sweep(cc, progress)


def _sweep(cc: SweepConfig, progress: bool) -> dict:
    sw, base = cc.sweep, cc.base
    check_metrics(base.benchmark.name, sw.metrics)  # before any compute: a wrong name fails at the plot otherwise
    store = ArtifactStore(base.store, base.storage_options)
    report = ComparisonReport(cc.name, base, started=time.perf_counter(), sweep=sw)
    variants = [(v, s, with_override(with_override(base, sw.param, v), sw.seed_path(), s))
                for v in sw.values for s in sw.seeds]
    # sampler settings are per request, so a sweep over them loads each model once; a swept model id swaps it
    with ModelPool(base.gpu_limit) as pool:
        for value, seed, cfg in variants:
            add_models(pool, cfg)
            for group in base.benchmark.groups():
                arts, _ = _variant(store, cfg, group, pool, progress)
                report.add(f"{sw.param}={value}", f"seed={seed}", base.benchmark.label(group), arts, value=value,
                           seed=seed)
    return report.publish(store)


def _compare_preflight(cc: CompareConfig, source: str) -> None:
    if cc.sweep is not None:  # first: a config-only check, before any data, server or model is touched
        check_metrics(cc.base.benchmark.name, cc.sweep.metrics)
    if isinstance(cc.base, MVFTJIConfig):
        from cirflow.flows.mvft_ji import mvft_preflight

        for v in cc.variants or [VariantSpec(name="base")]:
            mvft_preflight(v.apply(cc.base), f"{source} ({v.name})")
        return
    if _compare_groups(cc.base) is not None:
        from cirflow.flows import registry

        check = registry.get(cc.base.method).preflight
        for v in cc.variants or [VariantSpec(name="base")]:
            check(v.apply(cc.base), f"{source} ({v.name})")
        return
    run_preflight(cc.base, source)


COMPARE = Method("compare", CompareConfig, compare, _compare_preflight, print_comparison)
SWEEP = Method("sweep", SweepConfig, sweep, _compare_preflight, print_comparison)
