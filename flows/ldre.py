"""LDRE (metrics-and-methods B.2): n divergent reference captions → one LLM rewrite each → a weighted ensemble
of the edited-caption features (ldre_query) → text→image retrieval.

    ingest ─► caption_images(references, n) ─► rewrite_caption ─► embed_texts ─► ldre_query ─► retrieve ─► evaluate
       └─► embed_images ───────────────────────────────────────────────────────────┘
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cirflow.flows.baselines import BaselineConfig, BaselineQuery, baseline_group, reference_side, rewrite
from cirflow.flows.method import Method
from cirflow.flows.models import ModelPool
from cirflow.flows.runs import preflight, run_groups
from cirflow.flows.summary import print_summary
from cirflow.schemas.ldre import LDREConfig
from cirflow.schemas.names import Name
from cirflow.storage import Artifact
from cirflow.tasks.wrappers import ldre_query_task
from cirflow.tasks.lazy_prefect import flow  # Prefect on first real run: `--plan` never imports it

STYLE = "ldre"  # rewrite_caption's edit style: every caption sample rewritten


class LdreConfig(BaselineConfig):
    name: Name = "ldre"
    method: Literal["ldre"] = "ldre"
    ldre: LDREConfig = Field(default_factory=LDREConfig)


def text_query(store, cfg: LdreConfig, bench: Artifact, pool: ModelPool, progress: bool) -> BaselineQuery:
    # unset ensemble settings take the paper's values for the benchmark (a config embedding LDRE sets its own)
    settings = cfg.ldre.resolved(STYLE, cfg.benchmark.name)
    return reference_side(store, cfg, bench, pool, progress, n=cfg.ldre.n_captions,
                          sampling=cfg.ldre.caption_sampling,
                          edits=lambda captions: rewrite(store, cfg, bench, captions, pool, progress, STYLE),
                          query=lambda edited, originals, gallery: ldre_query_task(store, bench, edited, originals,
                                                                                   gallery, settings))


run_group = baseline_group(text_query)


@flow(name="ldre")
def ldre(config: dict, progress: bool = True) -> dict:
    return run_groups(LdreConfig.model_validate(config | {"method": "ldre"}), run_group, progress)


LDRE = Method("ldre", LdreConfig, ldre, preflight, print_summary, text_query)
