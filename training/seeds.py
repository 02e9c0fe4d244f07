"""Mean ± std over seeds (the papers report the average of three runs)."""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence


def over_seeds(run: Callable[[int], Mapping[str, float]], seeds: Sequence[int]) -> dict[str, dict]:
    """Call `run(seed)` for each seed (e.g. train + evaluate) and summarise its metrics."""
    return seeds_summary({seed: run(seed) for seed in seeds})


def seeds_summary(per_seed: Mapping[int, Mapping[str, float]]) -> dict[str, dict]:
    """{metric: {"mean", "std", "n", "values": {seed: value}}}. std is the sample std (n − 1), 0 for one seed;
    a metric missing from some seed is summarised over the seeds that have it."""
    names = sorted({m for metrics in per_seed.values() for m in metrics})
    out = {}
    for name in names:
        values = {s: float(m[name]) for s, m in per_seed.items() if name in m}
        xs = list(values.values())
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        out[name] = {"mean": mean, "std": std, "n": len(xs), "values": values}
    return out


def format_mean_std(summary: Mapping[str, Mapping], digits: int = 2) -> dict[str, str]:
    return {k: f"{v['mean']:.{digits}f} ± {v['std']:.{digits}f}" for k, v in summary.items()}
