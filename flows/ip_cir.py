"""IP-CIR (Imagine and Seek, Li et al. CVPR 2025; ip-cir.txt, metrics-and-methods B.1) on top of a baseline's
text similarity, and its ablations (paper Tab. 3, Fig. 5, 7, 8) from the same stored stages.

    ingest ─► baseline_query (CIReVL / LDRE / PEFUSE): captions, edits, slot features f_t / f_o, text query
       │         │ reference captions
       │         └─► plan_layout (text LLM) ─► synthesize_proxies (GLIGEN) ─► embed_generated(mean): f_p
       ├─► embed_images: f_q (reference rows) and the gallery
       └─► robust_proxy(f_p, f_q, f_t, f_o): f_RP ─► fuse_scores(balance) ─► evaluate
           balance: S = λ·S_t + (1 − λ)·S_t⊙S_p, S_t = baseline query · G, S_p = f_RP · G

Every box is a stored stage: a stored baseline run is reused as is (same stages, same keys), a λ change
recomputes fuse_scores and evaluate only, a robust-proxy weight change adds robust_proxy, and every ablation
row is a recombination of stored proxies and features.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cirflow.flows import registry
from cirflow.flows.baselines import BaselineQuery
from cirflow.flows.ldre import LdreConfig
from cirflow.flows.method import Method
from cirflow.flows.models import ModelPool
from cirflow.flows.report import ComparisonReport, encoder_label, print_comparison
from cirflow.flows.runs import add_models, ingest, preflight, retrieve_evaluate, run_groups, text_llm
from cirflow.flows.summary import print_summary
from cirflow.retrieval.balance import default_lambda
from cirflow.schemas.base import Strict
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.layout import ProxyConfig
from cirflow.schemas.mllm import SamplingParams
from cirflow.schemas.paths import TemplatePath
from cirflow.schemas.names import Name
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.runs.retrieve import ScoreTerm
from cirflow.tasks.stage import failure_policy
from cirflow.tasks.wrappers import (
    embed_generated_task,
    evaluate_task,
    fuse_scores_task,
    plan_layout_task,
    robust_proxy_task,
    synthesize_proxies_task,
)
from cirflow.tasks.lazy_prefect import flow  # Prefect on first real run: `--plan` never imports it
from pydantic import Field, field_validator, model_validator


# ------------------------------------------------------------------------------------------------ config
class IPCIRConfig(Strict):
    """IP-CIR (ip-cir.txt, metrics-and-methods B.1) on top of a baseline's text similarity."""

    baseline: Literal["ldre", "cirevl", "pefuse"] = "ldre"
    layout_prompt: TemplatePath | None = None  # default: prompts/plan_layout.<benchmark>.txt
    layout_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_tokens=512))
    max_attempts: int = Field(3, ge=1)
    # a tighter cap, in characters, on every text of a layout answer than plan_layout.TEXT_CAPS (small budgets)
    layout_text_chars: int | None = Field(None, ge=1)
    # The Layout Rule (§3.2, metrics-and-methods B.1): "modification" = the relative caption (the authors' CIRCO
    # script), "edited_caption" = "generating an image of <the baseline's first edited caption>" (their CIRR
    # setting). None: the paper's choice for the benchmark (edited_caption on CIRR, else modification).
    layout_rule: Literal["modification", "edited_caption"] | None = None
    # The authors' code perturbs boxes towards COCO size statistics (enrich_layout) with random draws and
    # overlap resolution; the paper does not describe this step and ours is a deterministic simplification
    # (tasks/ip_cir/plan_layout.enrich_layout), so it is off by default: the LLM's boxes are drawn as planned.
    enrich: bool = False
    proxies: ProxyConfig = Field(default_factory=ProxyConfig)
    a_w: float = 1.0  # robust proxy weights (Eq. 1, authors' code defaults)
    s_w: float = 1.0
    t_w: float = 1.0
    max_mode: Literal["global", "per_query"] = "global"
    lam: float | None = Field(None, ge=0.0, le=1.0)  # balance metric λ; None = per dataset (CIRCO 0.3, CIRR 0.0, FIQ 0.8)


class IPCIRRunConfig(LdreConfig):
    """A whole `method: ip_cir` file: the sections of its baseline (CIReVL / LDRE / PEFUSE: reference captions,
    rewrite, LDRE's ensemble, PEFUSE's composition) plus `ip_cir`."""

    name: Name = "ip_cir"
    method: Literal["ip_cir"] = "ip_cir"
    ip_cir: IPCIRConfig = Field(default_factory=IPCIRConfig)

    @model_validator(mode="after")
    def _ldre_as_baseline(self) -> "IPCIRRunConfig":
        # the IP-CIR authors' code runs LDRE's ensemble with top-k 50 and T 0.01 (metrics-and-methods B.1)
        if self.ldre.k is None:
            self.ldre.k = 50
        if self.ldre.temperature is None:
            self.ldre.temperature = 0.01
        return self




# ------------------------------------------------------------------------------------------------ building blocks
@dataclass
class Imagined:
    """The stored "imagine" side of one group: layouts, proxy images and their mean features (f_p)."""

    layouts: Artifact
    images: Artifact
    features: Artifact  # embed_generated(reduce="mean"), id = query_id; queries without proxies are absent


@dataclass
class IPCIRGroup:
    bench: Artifact
    baseline: BaselineQuery
    imagined: Imagined
    robust: Artifact  # f_RP
    fused: Artifact  # balanced rankings
    evaluation: Artifact

    def artifacts(self) -> list[Artifact]:
        """bench first and evaluate last, as RunSummary expects."""
        i = self.imagined
        return [self.bench, *self.baseline.artifacts, i.layouts, i.images, i.features, self.robust, self.fused,
                self.evaluation]


def lam_of(cfg: IPCIRRunConfig) -> float:
    """cfg.ip_cir.lam, or the paper's per-dataset λ (retrieval.balance.DEFAULT_LAMBDA)."""
    return cfg.ip_cir.lam if cfg.ip_cir.lam is not None else default_lambda(cfg.benchmark.name)


def layout_rule_of(cfg: IPCIRRunConfig) -> str:
    """cfg.ip_cir.layout_rule, or the paper's per benchmark: CIRR's rule is built from the first edited caption."""
    rule = cfg.ip_cir.layout_rule
    return rule if rule is not None else ("edited_caption" if cfg.benchmark.name == "cirr" else "modification")


def baseline(store, cfg: IPCIRRunConfig, bench: Artifact, pool: ModelPool, progress: bool) -> BaselineQuery:
    """The baseline method's text query (its Method.text_query), on this config's sections."""
    return registry.get(cfg.ip_cir.baseline).text_query(store, cfg, bench, pool, progress)


def imagine(store, cfg: IPCIRRunConfig, bench: Artifact, b: BaselineQuery, pool: ModelPool, gligen: Lazy,
            progress: bool) -> Imagined:
    ip = cfg.ip_cir
    # the baseline's own reference captions (caption_images, with the baseline's captioner: BLIP-2 in the
    # paper, `mllm.backend: blip2`), reused from the store, never recomputed
    captions = b.artifacts[0]
    if captions.stage != "caption_images":
        raise CirflowError(f"ip_cir: expected the baseline's reference captions first, got {captions!r}")
    rules = b.artifacts[2] if layout_rule_of(cfg) == "edited_caption" else None  # the baseline's edits (sample 0)
    layouts = plan_layout_task(store, bench, cfg.text_llm(), ip.layout_sampling, captions=captions, rules=rules,
                               prompt=ip.layout_prompt, max_attempts=ip.max_attempts, enrich=ip.enrich,
                               text_chars=ip.layout_text_chars,
                               mllm=text_llm(pool), progress=progress)
    images = synthesize_proxies_task(store, bench, layouts, ip.proxies, pipeline=gligen, progress=progress)
    return Imagined(layouts, images, proxy_features(store, cfg, images, pool, progress))


def proxy_features(store, cfg: IPCIRRunConfig, images: Artifact, pool: ModelPool, progress: bool,
                   max_samples: int | None = None) -> Artifact:
    """f_p: the mean of the normalised proxy features (not re-normalised); `max_samples` uses proxies 0..n-1."""
    return embed_generated_task(store, images, cfg.encoder, reduce="mean", max_samples=max_samples,
                                encoder=pool["encoder"], progress=progress)


def robust(store, cfg: IPCIRRunConfig, bench: Artifact, b: BaselineQuery, features: Artifact, *,
           a_w: float | None = None, s_w: float | None = None, t_w: float | None = None) -> Artifact:
    ip = cfg.ip_cir
    return robust_proxy_task(store, bench, features, b.gallery, b.edited, b.originals, n=b.n,
                             a_w=ip.a_w if a_w is None else a_w, s_w=ip.s_w if s_w is None else s_w,
                             t_w=ip.t_w if t_w is None else t_w, max_mode=ip.max_mode)


def fused(store, cfg: IPCIRRunConfig, bench: Artifact, terms: list[ScoreTerm], rule: str, rule_params: dict
          ) -> tuple[Artifact, Artifact]:
    rankings = fuse_scores_task(store, bench, terms, rule=rule, rule_params=rule_params, k=cfg.retrieve.k,
                                circo_exclude_reference=cfg.retrieve.circo_exclude_reference)
    return rankings, evaluate_task(store, bench, rankings)


def balanced(store, cfg: IPCIRRunConfig, bench: Artifact, b: BaselineQuery, rp: Artifact, lam: float
             ) -> tuple[Artifact, Artifact]:
    """Eq. 2: S = λ·S_t + (1 − λ)·S_t⊙S_p with S_t = baseline query · gallery, S_p = f_RP · gallery."""
    return fused(store, cfg, bench, [ScoreTerm(b.query, b.gallery), ScoreTerm(rp, b.gallery)], "balance",
                 {"lam": float(lam)})


retrieved = retrieve_evaluate


def run_group(store, cfg: IPCIRRunConfig, group: dict, pool: ModelPool, progress: bool) -> IPCIRGroup:
    bench = ingest(store, cfg, group)
    b = baseline(store, cfg, bench, pool, progress)
    im = imagine(store, cfg, bench, b, pool, pool["gligen"], progress)
    rp = robust(store, cfg, bench, b, im.features)
    rankings, ev = balanced(store, cfg, bench, b, rp, lam_of(cfg))
    return IPCIRGroup(bench, b, im, rp, rankings, ev)


# ------------------------------------------------------------------------------------------------ the method
def add_slots(pool: ModelPool, cfg: IPCIRRunConfig) -> ModelPool:
    """The baseline's models plus GLIGEN, IP-CIR's layout-to-image pipeline."""
    from cirflow.flows.gpu import uses_gpu

    def load_gligen():
        from cirflow.models.gligen import load_gligen

        return load_gligen(cfg.ip_cir.proxies)

    add_models(pool, cfg)
    pool.add("gligen", load_gligen, gpu=lambda: uses_gpu(cfg.ip_cir.proxies), key=cfg.ip_cir.proxies)
    return pool


@flow(name="ip_cir")
def ip_cir(config: dict, progress: bool = True) -> dict:
    cfg = IPCIRRunConfig.model_validate(config | {"method": "ip_cir"})
    lam_of(cfg)  # an unknown per-dataset λ fails here, before any model loads
    return run_groups(cfg, lambda store, cfg, group, pool, progress:
                      run_group(store, cfg, group, pool, progress).artifacts(), progress, add_slots)


def _preflight(cfg: IPCIRRunConfig, source: str) -> None:
    lam_of(cfg)
    preflight(cfg, source, [("plan_layout", cfg.ip_cir.layout_prompt)])


IP_CIR = Method("ip_cir", IPCIRRunConfig, ip_cir, _preflight, print_summary)


# ------------------------------------------------------------------------------------------------ ablations
COMPONENTS: dict[str, tuple[float, float, float]] = {  # Fig. 5: (a_w on f_p, s_w on f_q, t_w on f_s)
    "p": (1.0, 0.0, 0.0), "q": (0.0, 1.0, 0.0), "s": (0.0, 0.0, 1.0), "p+q": (1.0, 1.0, 0.0),
    "p+s": (1.0, 0.0, 1.0), "q+s": (0.0, 1.0, 1.0), "p+q+s": (1.0, 1.0, 1.0)}
Component = Literal["p", "q", "s", "p+q", "p+s", "q+s", "p+q+s"]
DEFAULT_PLOT_METRICS = {"circo": ["map@5", "map@10", "map@25", "map@50"],
                        "cirr": ["recall@1", "recall@5", "recall@10", "recall@50"]}


class IPCIRAblationConfig(Strict):
    """IP-CIR ablations from stored stages. Every row uses base's baseline, proxies and robust-proxy settings
    except for what the row varies; λ defaults to base.ip_cir.lam or the dataset's value."""

    method: Literal["ip_cir_ablation"] = "ip_cir_ablation"  # lets `cirflow deploy` pick the flow
    name: Name = "ip_cir_ablation"
    base: IPCIRRunConfig
    # Tab. 3: "+PI" / "+PI+RP" rows add the proxy similarity to S_t by a weighted sum (weight of the proxy side,
    # rows z-scored first, since raw f_p / f_RP cosines have other scales than S_t; the paper gives no weight)
    sum_weight: float = Field(0.5, ge=0.0, le=1.0)
    components: list[Component] = Field(default_factory=lambda: list(COMPONENTS))  # Fig. 5, each balanced
    lams: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(11)])  # Fig. 7
    proxy_counts: list[int] = Field(default_factory=list)  # Fig. 8; default 1..base.ip_cir.proxies.num_proxies
    plot_metrics: list[str] = Field(default_factory=list)  # default: the benchmark's headline metrics

    @field_validator("lams")
    @classmethod
    def _lams(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not 0.0 <= x <= 1.0]
        if bad:
            raise ValueError(f"λ must be in [0, 1], got {bad}")
        return v

    @model_validator(mode="after")
    def _counts(self) -> "IPCIRAblationConfig":
        n = self.base.ip_cir.proxies.num_proxies
        if not self.proxy_counts:
            self.proxy_counts = list(range(1, n + 1))
        bad = [c for c in self.proxy_counts if not 1 <= c <= n]
        if bad:
            raise ValueError(f"proxy_counts must be in 1..{n} (base.ip_cir.proxies.num_proxies), got {bad}")
        return self


def load_ablation_config(path) -> IPCIRAblationConfig:
    """The YAML file validated strictly; `base` may name a run config file relative to it."""
    from cirflow.schemas.loading import load

    return load(IPCIRAblationConfig, path)


@flow(name="ip_cir_ablation")
def ip_cir_ablation(config: dict, progress: bool = True) -> dict:
    ac = IPCIRAblationConfig.model_validate(config)
    cfg = ac.base
    lam = lam_of(cfg)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    report = ComparisonReport(ac.name, cfg, started=time.perf_counter())
    enc = encoder_label(cfg)
    sections: dict[str, list[tuple[str, object]]] = {"table": [], "components": [], "lambda": [], "proxies": []}
    w = ac.sum_weight
    with ModelPool(cfg.gpu_limit) as pool, failure_policy(cfg.max_failure_rate):
        add_slots(pool, cfg)
        for group in cfg.benchmark.groups():
            label = cfg.benchmark.label(group)
            g = run_group(store, cfg, group, pool, progress)
            bench, b, im = g.bench, g.baseline, g.imagined

            def add(section, variant, arts, value=None):
                report.add(enc, variant, label, arts)
                if (variant, value) not in sections[section]:
                    sections[section].append((variant, value))

            f_p = robust(store, cfg, bench, b, im.features, a_w=1.0, s_w=0.0, t_w=0.0)  # f_p, zero-filled
            imagined = [im.layouts, im.images, im.features]
            add("table", "baseline (S_t)", [bench, *b.artifacts, *retrieved(store, cfg, bench, b.query, b.gallery)])
            add("table", "f_p alone", [*imagined, f_p, *retrieved(store, cfg, bench, f_p, b.gallery)])
            add("table", "f_RP alone", [*imagined, g.robust, *retrieved(store, cfg, bench, g.robust, b.gallery)])
            for name, q in (("+PI", f_p), ("+PI+RP", g.robust)):
                terms = [ScoreTerm(b.query, b.gallery, 1.0 - w), ScoreTerm(q, b.gallery, w)]
                add("table", f"{name} (sum w={w:g})",
                    [*imagined, q, *fused(store, cfg, bench, terms, "weighted_sum", {"normalize": "zscore"})])
            add("table", f"+PI+RP+BM (λ={lam:g})", g.artifacts())

            for c in ac.components:
                a_w, s_w, t_w = COMPONENTS[c]
                rp = robust(store, cfg, bench, b, im.features, a_w=a_w, s_w=s_w, t_w=t_w)
                add("components", f"RP[{c}]+BM", [*imagined, rp, *balanced(store, cfg, bench, b, rp, lam)], c)
            for x in ac.lams:
                add("lambda", f"λ={x:g}", [*imagined, g.robust, *balanced(store, cfg, bench, b, g.robust, x)], x)
            n_all = cfg.ip_cir.proxies.num_proxies
            for n in ac.proxy_counts:
                # all N proxies: the method's own f_p (max_samples=None), not a copy under another key
                feats = im.features if n == n_all else proxy_features(store, cfg, im.images, pool, progress, n)
                rp = robust(store, cfg, bench, b, feats)
                add("proxies", f"N={n}", [im.images, feats, rp, *balanced(store, cfg, bench, b, rp, lam)], n)

    doc = report.publish(store)
    out = Path(doc["output_dir"])
    rows = {r["variant"]: r for r in doc["table"]}
    metrics = ac.plot_metrics or [m for m in DEFAULT_PLOT_METRICS.get(cfg.benchmark.name, [])
                                  if m in doc["table"][0]] or _metric_columns(doc["table"])[:4]
    doc["lambda"] = lam
    doc["sections"] = {k: [v for v, _ in items] for k, items in sections.items()}
    doc["plots"] = {
        "lambda": str(_plot(out / "lambda.png", [(x, rows[v]) for v, x in sections["lambda"]], metrics, "λ",
                            f"{cfg.benchmark.name}: balance λ (Fig. 7)")),
        "proxies": str(_plot(out / "proxies.png", [(x, rows[v]) for v, x in sections["proxies"]], metrics,
                             "number of proxy images N", f"{cfg.benchmark.name}: proxies per query (Fig. 8)")),
    }
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str))
    return doc


def _metric_columns(table: list[dict]) -> list[str]:
    return [c for c in table[0] if c not in ("encoder", "variant")] if table else []


def _plot(path: Path, points: list[tuple[float, dict]], metrics: list[str], xlabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(points, key=lambda p: p[0])
    xs = [float(x) for x, _ in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in metrics:
        ax.plot(xs, [r[m] for _, r in points], marker="o", label=m)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("percent")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _ablation_preflight(ac: IPCIRAblationConfig, source: str) -> None:
    from cirflow.evaluation.api import check_metrics

    check_metrics(ac.base.benchmark.name, ac.plot_metrics)
    _preflight(ac.base, source)


ABLATION = Method("ip_cir_ablation", IPCIRAblationConfig, ip_cir_ablation, _ablation_preflight, print_comparison)
