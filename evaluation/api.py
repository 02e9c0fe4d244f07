"""Evaluate predictions or rankings for any benchmark by name: validate first, then score.

Entry points: ``evaluate_predictions`` (submission dicts), ``evaluate_rankings`` (a RANKINGS table),
``evaluate_groups`` (several Fashion-IQ categories / GeneCIS tasks, averaged into group "all").
Each returns ``Scores``; ``Scores.flat()`` is the flat dict the CLI prints as JSON and
``Scores.to_table()`` the METRICS table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from cirflow.evaluation import circo, cirr, fashioniq, genecis
from cirflow.evaluation.circo import circo_metrics
from cirflow.evaluation.cirr import cirr_metrics
from cirflow.evaluation.fashioniq import fashioniq_metrics
from cirflow.evaluation.genecis import genecis_metrics
from cirflow.evaluation.submission import canonical_benchmark, ensure_valid, rankings_to_submission
from cirflow.schemas.errors import CirflowError, ConfigError
from cirflow.schemas.tables import METRICS


@dataclass(frozen=True)
class Scores:
    """Percent metrics. ``overall`` is reported under group ``overall_group`` ("all", or the one category/task
    evaluated); ``groups`` holds per-group metrics: CIRCO semantic aspects, Fashion-IQ categories or GeneCIS
    tasks when several were evaluated."""

    benchmark: str
    overall: dict[str, float]
    groups: dict[str, dict[str, float]] = field(default_factory=dict)
    overall_group: str = "all"

    def flat(self) -> dict[str, float]:
        """{"recall@10": ..., "dress/recall@10": ...}: overall keys bare, group keys as "<group>/<metric>"."""
        out = dict(self.overall)
        for group, metrics in self.groups.items():
            out |= {f"{group}/{m}": v for m, v in metrics.items()}
        return out

    def to_table(self) -> pa.Table:
        return metrics_table(self)


def metrics_table(scores: Scores) -> pa.Table:
    """METRICS-schema table (group, metric, value): the overall rows first, then each group's."""
    rows = [(scores.overall_group, m, v) for m, v in scores.overall.items()]
    rows += [(g, m, v) for g, metrics in scores.groups.items() for m, v in metrics.items()]
    return pa.table(
        {"group": [r[0] for r in rows], "metric": [r[1] for r in rows], "value": [float(r[2]) for r in rows]},
        schema=METRICS,
    )


def average_over(per_group: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Plain mean per metric over groups (``np.mean``, as SEARLE averages Fashion-IQ categories)."""
    groups = list(per_group.values())
    if not groups:
        raise ConfigError("nothing to average: no groups were evaluated")
    names = [m for m in groups[0] if all(m in g for g in groups)]
    return {m: float(np.mean([g[m] for g in groups])) for m in names}


def metric_names(benchmark: str) -> tuple[str, ...]:
    """The overall metrics ``evaluate_*`` reports for a benchmark (the keys of ``Scores.overall``)."""
    b = canonical_benchmark(benchmark)
    if b == "cirr":
        return (*(f"recall@{k}" for k in cirr.RECALL_KS), *(f"recall_subset@{k}" for k in cirr.SUBSET_KS))
    if b == "circo":
        return (*(f"map@{k}" for k in circo.MAP_KS), circo.AVG_MAP, *(f"recall@{k}" for k in circo.RECALL_KS))
    ks = fashioniq.KS if b == "fashioniq" else genecis.KS
    return tuple(f"recall@{k}" for k in ks)


def check_metrics(benchmark: str, names: Iterable[str]) -> None:
    """Raise CirflowError naming the first requested metric the benchmark does not report, with the valid ones.

    Called before any work (sweeps, comparisons): a metric name is otherwise only looked up when the table
    is plotted, after all the compute."""
    valid = metric_names(benchmark)
    for name in names:
        if name not in valid:
            raise ConfigError(f"metric '{name}' is not reported for {canonical_benchmark(benchmark)}; "
                              f"valid metrics: {', '.join(valid)}")


def has_ground_truth(benchmark: str, queries: pa.Table) -> bool:
    """True when every query can be scored; False on a test split (no query has targets)."""
    # GeneCIS's target is candidate 0 by construction; the others need target_ids
    column = "candidate_ids" if canonical_benchmark(benchmark) == "genecis" else "target_ids"
    present = [bool(v) for v in queries.column(column).to_pylist()]
    if all(present):
        return True
    if not any(present):
        return False
    raise CirflowError(f"{sum(not p for p in present)} of {len(present)} queries have no ground truth; cannot score a partial split")


def evaluate_predictions(
    benchmark: str,
    queries: pa.Table,
    predictions: Mapping,
    subset_predictions: Mapping | None = None,
    *,
    gallery_ids: Iterable[str] | None = None,
    group: str | None = None,
    source: str = "predictions",
) -> Scores:
    """Validate then score submission dicts against a QUERIES table with ground truth.

    ``subset_predictions``: CIRR's recall_subset file (optional). ``group``: the Fashion-IQ category or
    GeneCIS task evaluated, used as the METRICS group. ``source`` names the input in error messages.
    Raises ``InvalidSubmissionError`` (exit code 2) listing the first problems, or ``CirflowError`` on a
    split without ground truth (validate it with ``validate_submission`` instead).
    """
    benchmark = canonical_benchmark(benchmark)
    ensure_valid(benchmark, queries, predictions, subset_predictions, gallery_ids=gallery_ids, source=source)
    if not has_ground_truth(benchmark, queries):
        raise CirflowError(f"{benchmark}: these queries have no ground truth (test split); only validation is possible")
    preds = {str(k): v for k, v in predictions.items()}
    if benchmark == "cirr":
        return Scores(benchmark, cirr_metrics(queries, preds, subset_predictions))
    if benchmark == "circo":
        overall, per_aspect = circo_metrics(queries, preds)
        return Scores(benchmark, overall, per_aspect)
    metrics = fashioniq_metrics(queries, preds) if benchmark == "fashioniq" else genecis_metrics(queries, preds)
    return Scores(benchmark, metrics, overall_group=group or "all")


def evaluate_rankings(
    benchmark: str,
    rankings: pa.Table,
    queries: pa.Table,
    *,
    gallery_ids: Iterable[str] | None = None,
    group: str | None = None,
) -> Scores:
    """Score a RANKINGS table through its submission files, so pipeline and server numbers share one path."""
    files = rankings_to_submission(benchmark, rankings, queries, group=group)
    if canonical_benchmark(benchmark) == "cirr":
        return evaluate_predictions(
            benchmark, queries, files["recall"], files.get("recall_subset"), gallery_ids=gallery_ids, source="rankings"
        )
    (predictions,) = files.values()
    return evaluate_predictions(benchmark, queries, predictions, gallery_ids=gallery_ids, group=group, source="rankings")


def evaluate_groups(
    benchmark: str,
    parts: Mapping[str, tuple[pa.Table, Mapping]],
    *,
    gallery_ids: Mapping[str, Iterable[str]] | None = None,
) -> Scores:
    """Several Fashion-IQ categories or GeneCIS tasks: ``parts`` maps name -> (queries, predictions).

    Each part is validated and scored alone (its own gallery from ``gallery_ids[name]``); ``overall`` is
    the plain mean over parts (group "all"), per-part metrics are in ``groups``.
    """
    benchmark = canonical_benchmark(benchmark)
    if benchmark not in ("fashioniq", "genecis"):
        raise ConfigError(f"{benchmark} has a single query set; use evaluate_predictions")
    per_group = {
        name: evaluate_predictions(
            benchmark, queries, predictions,
            gallery_ids=(gallery_ids or {}).get(name), group=name, source=name,
        ).overall
        for name, (queries, predictions) in parts.items()
    }
    return Scores(benchmark, average_over(per_group), per_group)
