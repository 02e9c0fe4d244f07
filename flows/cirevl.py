"""CIReVL (metrics-and-methods B.3): one detailed reference caption → an LLM rewrite by the instruction →
text→image retrieval with the rewrite's features.

    ingest ─► caption_images(references) ─► rewrite_caption ─► embed_texts ─► retrieve ─► evaluate
       └─► embed_images ──────────────────────────────────────────────────────┘
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from cirflow.flows.baselines import BaselineConfig, BaselineQuery, baseline_group, reference_side, rewrite
from cirflow.flows.method import Method
from cirflow.flows.models import ModelPool
from cirflow.flows.runs import preflight, run_groups
from cirflow.flows.summary import print_summary
from cirflow.schemas.names import Name
from cirflow.storage import Artifact
from cirflow.tasks.wrappers import reference_mean_task
from cirflow.tasks.lazy_prefect import flow  # Prefect on first real run: `--plan` never imports it

STYLE = "cirevl"  # rewrite_caption's edit style: one caption per reference


class CirevlConfig(BaselineConfig):
    name: Name = "cirevl"
    method: Literal["cirevl"] = "cirevl"
    # GeneCIS focus_attribute only: the query is norm((norm(text query) + norm(reference image)) / 2), as CIReVL's
    # main.py does for that task (tasks/runs/reference_mean.py); false: the rewrite's text feature alone
    genecis_focus_attribute_mean: bool = True


def reference_mean_applies(cfg: BaselineConfig, bench: Artifact) -> bool:
    """On for GeneCIS focus_attribute unless the config turns it off (configs without the field: on, as CIReVL)."""
    p = bench.manifest.params
    return (p.get("benchmark") == "genecis" and p.get("task") == "focus_attribute"
            and getattr(cfg, "genecis_focus_attribute_mean", True))


def text_query(store, cfg: BaselineConfig, bench: Artifact, pool: ModelPool, progress: bool) -> BaselineQuery:
    b = reference_side(store, cfg, bench, pool, progress, n=1, sampling=cfg.reference_caption.sampling,
                       edits=lambda captions: rewrite(store, cfg, bench, captions, pool, progress, STYLE))
    if not reference_mean_applies(cfg, bench):
        return b
    q = reference_mean_task(store, bench, b.query, b.gallery)
    return replace(b, query=q, artifacts=[*b.artifacts[:-1], q, b.gallery])


run_group = baseline_group(text_query)


@flow(name="cirevl")
def cirevl(config: dict, progress: bool = True) -> dict:
    return run_groups(CirevlConfig.model_validate(config | {"method": "cirevl"}), run_group, progress)


CIREVL = Method("cirevl", CirevlConfig, cirevl, preflight, print_summary, text_query)
