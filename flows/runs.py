"""The shape every benchmark method shares: one group per Fashion-IQ category / GeneCIS task (one for the other
benchmarks), models from one pool for all groups, retrieve → evaluate at the end of each group, one published
summary. Each benchmark method module writes only its own `run_group` (and its config, preflight, report)."""

from __future__ import annotations

from typing import Callable

from cirflow.flows.method import check_servers
from cirflow.flows.models import ModelPool
from cirflow.flows.summary import RunSummary, publish
from cirflow.schemas.config import RunBase
from cirflow.schemas.progress import group as progress_group
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.distributed import partitions
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.stage import StageFailed, failure_policy, record_artifacts
from cirflow.tasks.wrappers import evaluate_task, ingest_task, retrieve_task


def ingest(store: ArtifactStore, cfg: RunBase, group: dict) -> Artifact:
    b = cfg.benchmark
    return ingest_task(store, b.name, b.data_root, split=b.split, image_root=b.image_root, fiq_join=b.fiq_join,
                       check_images=b.check_images, **group)


def retrieve_evaluate(store: ArtifactStore, cfg: RunBase, bench: Artifact, queries: Artifact, gallery: Artifact
                      ) -> tuple[Artifact, Artifact]:
    """Top-k of query features against gallery features, then the benchmark's metrics: (rankings, evaluation)."""
    rankings = retrieve_task(store, bench, queries, gallery, k=cfg.retrieve.k, index=cfg.retrieve.index,
                             circo_exclude_reference=cfg.retrieve.circo_exclude_reference)
    return rankings, evaluate_task(store, bench, rankings)


def add_models(pool: ModelPool, cfg: RunBase) -> ModelPool:
    """The run's model slots: "mllm", "encoder", and "llm" / "diffusion" when the config has them."""
    pool.add_mllm("mllm", cfg.mllm)
    pool.add_encoder("encoder", cfg.encoder)
    if cfg.llm is not None:
        pool.add_mllm("llm", cfg.llm)
    if getattr(cfg, "diffusion", None) is not None:
        pool.add_diffusion("diffusion", cfg.diffusion)
    return pool


def text_llm(pool: ModelPool) -> Lazy:
    """The text LLM (rewrite_caption, plan_layout): the "llm" slot when configured, else the MLLM."""
    return pool.get("llm") or pool["mllm"]


RunGroup = Callable[[ArtifactStore, RunBase, dict, ModelPool, bool], list[Artifact]]


def run_groups(cfg: RunBase, run_group: RunGroup, progress: bool,
               add_slots: Callable[[ModelPool, RunBase], object] = add_models) -> dict:
    """`run_group(store, cfg, group, pool, progress)` returns the group's artifacts, ingest first and evaluate
    last; models are loaded once for every group and released when the last group is done."""
    store = ArtifactStore(cfg.store, cfg.storage_options)
    summary = RunSummary.start(cfg)
    stopped: StageFailed | None = None
    with ModelPool(cfg.gpu_limit) as pool:
        add_slots(pool, cfg)
        with partitions(cfg.executor.world()), failure_policy(cfg.max_failure_rate):
            for group in cfg.benchmark.groups():
                label = cfg.benchmark.label(group)
                # the group shown on its stages' progress lines; what it finished, for a failed run's folder
                with progress_group(label), record_artifacts() as done:
                    try:
                        summary.add_group(label, run_group(store, cfg, group, pool, progress))
                    except StageFailed as e:
                        summary.add_group(label, list(done))
                        summary.fail(label, e)
                        stopped = e
                        break
    doc = publish(summary, store)
    if stopped is not None:  # the run folder shows the failed rows; the run still fails (exit 3)
        stopped.run_folder = doc.get("output_dir", "")
        raise stopped
    return doc


def preflight(cfg: RunBase, source: str, templates: list[tuple[str, str | None]] = ()) -> None:
    """Input errors a user can fix (paths, annotations, missing images, prompt files) surface here as one line,
    before Prefect starts and before any model loads; inside a flow they would arrive wrapped in engine
    tracebacks. `templates`: (prompt kind, the config's override) of every template the method reads."""
    from cirflow.prompts import load_template
    from cirflow.schemas.checks import check_paths
    from cirflow.tasks.benchmarks import load_benchmark, require_queries

    check_paths(cfg, source)  # store/output_dir folders, encoder and MLLM folders: before the annotations are read
    b = cfg.benchmark
    for group in b.groups():
        require_queries(load_benchmark(b.name, b.data_root, split=b.split, image_root=b.image_root,
                                       fiq_join=b.fiq_join, check_images=b.check_images, **group))
    for kind, override in templates:
        load_template(kind, b.name, override)
    check_servers(cfg)


__all__ = ["add_models", "ingest", "preflight", "retrieve_evaluate", "run_groups", "text_llm"]
