"""Tables and plots of comparisons and sweeps, read from the evaluate artifacts in the store."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from cirflow.evaluation.api import average_over
from cirflow.flows.record import write_resolved_config
from cirflow.flows.report_html import REPORT, write_report
from cirflow.flows.summary import computed_by_stage, distinct_stages, group_metrics
from cirflow.schemas.config import RunBase
from cirflow.storage import Artifact, ArtifactStore


@dataclass
class Row:
    encoder: str
    variant: str
    group: str
    artifacts: list[Artifact]
    value: object = None
    seed: int | None = None


@dataclass
class ComparisonReport:
    name: str
    base: RunBase
    started: float
    sweep: object = None
    rows: list[Row] = field(default_factory=list)

    def add(self, encoder: str, variant: str, group: str, artifacts: list[Artifact], value=None, seed=None) -> None:
        self.rows.append(Row(encoder, variant, group, artifacts, value, seed))

    # ----------------------------------------------------------------------------------------------------
    def table(self) -> pl.DataFrame:
        """One row per (encoder, variant[, value, seed]), metrics averaged over groups like the benchmark does."""
        by_key: dict[tuple, dict[str, dict[str, float]]] = {}
        for r in self.rows:
            by_key.setdefault((r.encoder, r.variant, r.value, r.seed), {})[r.group] = group_metrics(r.artifacts[-1])
        records = []
        for (enc, var, value, seed), groups in by_key.items():
            rec = {"encoder": enc, "variant": var}
            if self.sweep is not None:
                rec |= {"value": str(value), "seed": seed}
            rec |= {m: round(v, 4) for m, v in average_over(groups).items()}
            records.append(rec)
        return pl.DataFrame(records)

    def stages(self) -> list[dict]:
        out = []
        for r in self.rows:
            for a in r.artifacts:
                rep = a.report
                out.append({"encoder": r.encoder, "variant": r.variant, "group": r.group, "stage": a.stage,
                            "key": a.key, "status": rep.status if rep else "cached",
                            "shards_computed": rep.shards_computed if rep else 0,
                            "shards_skipped": rep.shards_skipped if rep else 0,
                            "seconds": round(rep.seconds, 3) if rep else 0.0})
        return out

    def publish(self, store: ArtifactStore) -> dict:
        from cirflow.tasks import plan_mode

        if plan_mode.active() is not None:  # `--plan` writes nothing; the planner reports (flows/plan.py)
            return {}
        table = self.table()
        stages = self.stages()
        # an artifact reused by several variants is counted once per run
        counts = {"computed": 0, "resumed": 0, "cached": 0}
        for s in distinct_stages(stages):
            counts[s["status"]] = counts.get(s["status"], 0) + 1
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = Path(self.base.output_dir) / self.name / stamp
        out.mkdir(parents=True, exist_ok=True)
        md = to_markdown(table)
        (out / "comparison.md").write_text(md + "\n")
        table.write_csv(out / "comparison.csv")
        table.write_parquet(out / "comparison.parquet")
        pl.DataFrame(stages).write_csv(out / "stages.csv")
        doc = {"name": self.name, "benchmark": self.base.benchmark.name, "store": store.url, "output_dir": str(out),
               "table": table.to_dicts(), "markdown": md, "stage_counts": counts, "stages": stages,
               "computed_by_stage": computed_by_stage(stages),
               "wall_seconds": round(time.perf_counter() - self.started, 3)}
        if self.sweep is not None:
            doc["plot"] = str(self.plot(table, out / "sweep.png"))
            doc["sweep_summary"] = sweep_summary(table, self.sweep.param).to_dicts()
        doc["report"] = str(out / REPORT)
        (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str))
        write_resolved_config(out, self.base)
        write_report(out, store)  # reads summary.json back, as `cirflow report RUN_DIR` does
        _prefect_table(self.name, table, doc["report"])
        return doc

    def plot(self, table: pl.DataFrame, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        summary = sweep_summary(table, self.sweep.param)
        metrics = self.sweep.metrics or [c for c in table.columns if c not in ("encoder", "variant", "value", "seed")]
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = summary["value"].to_list()
        numeric = all(_is_number(x) for x in xs)
        x = [float(v) for v in xs] if numeric else list(range(len(xs)))
        for m in metrics:
            mean, std = summary[f"{m}_mean"].to_numpy(), summary[f"{m}_std"].to_numpy()
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=m)
        if not numeric:
            ax.set_xticks(x, xs)
        ax.set_xlabel(self.sweep.param)
        ax.set_ylabel("percent (mean ± std over seeds)")
        ax.set_title(f"{self.base.benchmark.name}: {self.sweep.param}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def sweep_summary(table: pl.DataFrame, param: str) -> pl.DataFrame:
    metrics = [c for c in table.columns if c not in ("encoder", "variant", "value", "seed")]
    agg = [e for m in metrics for e in (pl.col(m).mean().alias(f"{m}_mean"), pl.col(m).std(ddof=0).alias(f"{m}_std"))]
    return table.group_by("value", maintain_order=True).agg(agg)


def _is_number(x) -> bool:
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False


def to_markdown(table: pl.DataFrame) -> str:
    cols = table.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" if table[c].dtype == pl.String else "--:"
                                                          for c in cols) + "|"]
    for row in table.iter_rows():
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def _prefect_table(name: str, table: pl.DataFrame, report: str) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return
    key = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "comparison"
    create_table_artifact(table=table.to_dicts(), key=key, description=f"comparison {name}")
    create_markdown_artifact(markdown=f"[HTML report]({Path(report).resolve().as_uri()})", key=f"{key}-report",
                             description=f"comparison {name}: per-query report")



def encoder_label(cfg) -> str:
    """An encoder's row label in comparison tables: "ViT-B-32/openai", or a local folder's name."""
    e = cfg.encoder
    name = e.model.rsplit("/", 1)[-1] if e.model.startswith("local-dir:") else e.model
    return f"{name}/{e.pretrained}" if e.pretrained else name


def print_comparison(doc: dict, as_json: bool) -> None:
    """The report of a comparison, sweep or ablation: the table, stage counts and where the files are."""
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
        return
    print(doc["markdown"])
    counts = ", ".join(f"{n} {status}" for status, n in doc["stage_counts"].items())
    print(f"\nstages: {counts} ({doc['wall_seconds']} s)")
    print(f"table: {doc['output_dir']}/comparison.md (.csv, .parquet)")
    if doc.get("report"):
        print(f"report: {doc['report']}")
    for plot in [doc["plot"]] if "plot" in doc else list(doc.get("plots", {}).values()):
        print(f"plot: {plot}")
