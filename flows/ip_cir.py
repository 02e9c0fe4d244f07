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

from cirflow.flows.baselines import BaselineQuery, baseline_query
from cirflow.flows.pefuse import Models, ingest, run_groups
from cirflow.flows.report import ComparisonReport
from cirflow.retrieval.balance import default_lambda
from cirflow.schemas.config import RunConfig, Strict
from cirflow.schemas.errors import CirflowError
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.retrieve import ScoreTerm
from cirflow.tasks.wrappers import (
    embed_generated_task,
    evaluate_task,
    fuse_scores_task,
    plan_layout_task,
    retrieve_task,
    robust_proxy_task,
    synthesize_proxies_task,
)
from prefect import flow
from pydantic import Field, field_validator, model_validator


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


def lam_of(cfg: RunConfig) -> float:
    """cfg.ip_cir.lam, or the paper's per-dataset λ (retrieval.balance.DEFAULT_LAMBDA)."""
    return cfg.ip_cir.lam if cfg.ip_cir.lam is not None else default_lambda(cfg.benchmark.name)


def baseline(store, cfg: RunConfig, bench: Artifact, models: Models, progress: bool) -> BaselineQuery:
    return baseline_query(store, cfg, bench, models, progress, method=cfg.ip_cir.baseline)


def imagine(store, cfg: RunConfig, bench: Artifact, b: BaselineQuery, models: Models, gligen: Lazy,
            progress: bool) -> Imagined:
    ip = cfg.ip_cir
    captions = b.artifacts[0]  # the baseline's reference captions (caption_images), reused, never recomputed
    if captions.stage != "caption_images":
        raise CirflowError(f"ip_cir: expected the baseline's reference captions first, got {captions!r}")
    layouts = plan_layout_task(store, bench, cfg.text_llm(), ip.layout_sampling, captions=captions,
                               prompt=ip.layout_prompt, max_attempts=ip.max_attempts, enrich=ip.enrich,
                               mllm=models.text(), progress=progress)
    images = synthesize_proxies_task(store, bench, layouts, ip.proxies, pipeline=gligen, progress=progress)
    return Imagined(layouts, images, proxy_features(store, cfg, images, models, progress))


def proxy_features(store, cfg: RunConfig, images: Artifact, models: Models, progress: bool,
                   max_samples: int | None = None) -> Artifact:
    """f_p: the mean of the normalised proxy features (not re-normalised); `max_samples` uses proxies 0..n-1."""
    return embed_generated_task(store, images, cfg.encoder, reduce="mean", max_samples=max_samples,
                                encoder=models.encoder, progress=progress)


def robust(store, cfg: RunConfig, bench: Artifact, b: BaselineQuery, features: Artifact, *,
           a_w: float | None = None, s_w: float | None = None, t_w: float | None = None) -> Artifact:
    ip = cfg.ip_cir
    return robust_proxy_task(store, bench, features, b.gallery, b.edited, b.originals, n=b.n,
                             a_w=ip.a_w if a_w is None else a_w, s_w=ip.s_w if s_w is None else s_w,
                             t_w=ip.t_w if t_w is None else t_w, max_mode=ip.max_mode)


def fused(store, cfg: RunConfig, bench: Artifact, terms: list[ScoreTerm], rule: str, rule_params: dict
          ) -> tuple[Artifact, Artifact]:
    rankings = fuse_scores_task(store, bench, terms, rule=rule, rule_params=rule_params, k=cfg.retrieve.k,
                                circo_exclude_reference=cfg.retrieve.circo_exclude_reference)
    return rankings, evaluate_task(store, bench, rankings)


def balanced(store, cfg: RunConfig, bench: Artifact, b: BaselineQuery, rp: Artifact, lam: float
             ) -> tuple[Artifact, Artifact]:
    """Eq. 2: S = λ·S_t + (1 − λ)·S_t⊙S_p with S_t = baseline query · gallery, S_p = f_RP · gallery."""
    return fused(store, cfg, bench, [ScoreTerm(b.query, b.gallery), ScoreTerm(rp, b.gallery)], "balance",
                 {"lam": float(lam)})


def retrieved(store, cfg: RunConfig, bench: Artifact, queries: Artifact, gallery: Artifact
              ) -> tuple[Artifact, Artifact]:
    rankings = retrieve_task(store, bench, queries, gallery, k=cfg.retrieve.k, index=cfg.retrieve.index,
                             circo_exclude_reference=cfg.retrieve.circo_exclude_reference)
    return rankings, evaluate_task(store, bench, rankings)


def run_group(store, cfg: RunConfig, group: dict, models: Models, gligen: Lazy, progress: bool) -> IPCIRGroup:
    bench = ingest(store, cfg, group)
    b = baseline(store, cfg, bench, models, progress)
    im = imagine(store, cfg, bench, b, models, gligen, progress)
    rp = robust(store, cfg, bench, b, im.features)
    rankings, ev = balanced(store, cfg, bench, b, rp, lam_of(cfg))
    return IPCIRGroup(bench, b, im, rp, rankings, ev)


# ------------------------------------------------------------------------------------------------ the method
@flow(name="ip_cir")
def ip_cir(config: dict, progress: bool = True) -> dict:
    cfg = RunConfig.model_validate(config | {"method": "ip_cir"})
    lam_of(cfg)  # an unknown per-dataset λ fails here, before any model loads
    return run_groups(cfg, lambda store, cfg, group, models, progress:
                      run_group(store, cfg, group, models, models.gligen, progress).artifacts(), progress)


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
    name: str = "ip_cir_ablation"
    base: RunConfig
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


def _encoder_label(cfg: RunConfig) -> str:
    from cirflow.flows.compare import _encoder_label as label

    return label(cfg)


@flow(name="ip_cir_ablation")
def ip_cir_ablation(config: dict, progress: bool = True) -> dict:
    ac = IPCIRAblationConfig.model_validate(config)
    cfg = ac.base.model_copy(update={"method": "ip_cir"})
    lam = lam_of(cfg)
    store = ArtifactStore(cfg.store, cfg.storage_options)
    report = ComparisonReport(ac.name, cfg, started=time.perf_counter())
    enc = _encoder_label(cfg)
    sections: dict[str, list[tuple[str, object]]] = {"table": [], "components": [], "lambda": [], "proxies": []}
    models = Models.for_config(cfg)
    w = ac.sum_weight
    try:
        for group in cfg.benchmark.groups():
            label = "/".join(group.values()) or cfg.benchmark.name
            g = run_group(store, cfg, group, models, models.gligen, progress)
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
                feats = im.features if n == n_all else proxy_features(store, cfg, im.images, models, progress, n)
                rp = robust(store, cfg, bench, b, feats)
                add("proxies", f"N={n}", [im.images, feats, rp, *balanced(store, cfg, bench, b, rp, lam)], n)
    finally:
        models.close()

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
