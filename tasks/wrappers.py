"""Prefect tasks of the stages, derived from their declarations (tasks/stage.py): the task's name, its retries
and whether it fans out over partitions come from the Stage class; nothing here is written per stage.

The store is the cache: each stage decides computed / resumed / cached from its key and commit records, so
Prefect's own caching is off (NO_CACHE) and results stay in memory (they are small Artifact handles, never
payloads). Retries are for transient failures (a server restart, a network blip); a rerun resumes at shard
granularity either way.
"""

from __future__ import annotations

from cirflow.tasks.builds import (caption_collection, ingest_collection, instructcir_texts, mtcir_texts, mvft_texts,
                                  pair_groups, random_pairs, release)
from cirflow.tasks.distributed import Sharded
from cirflow.tasks.ip_cir import plan_layout, robust_proxy, synthesize_proxies
from cirflow.tasks.plan_mode import Plannable
from cirflow.tasks.runs import (caption_images, compose_target_text, embed_generated, embed_images, embed_texts,
                                evaluate, fuse_scores, ingest, ldre_query, reference_mean, retrieve, rewrite_caption,
                                synthesize_images)
from cirflow.tasks.stage import Stage, StageFailed
# Prefect is imported when a task first runs, not here: `--plan` and the store shortcut never import it
from cirflow.tasks.lazy_prefect import task

_opts = dict(cache_policy="NO_CACHE", persist_result=False)


def _transient(task, task_run, state) -> bool:
    """Prefect retries a stage for a transient failure only: a stage over its failure threshold (StageFailed)
    would otherwise re-ask its own failed items in the same run, and fail again."""
    exc = state.data
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - an unreadable result: keep Prefect's default (retry)
            return True
    return not isinstance(exc, StageFailed)


def stage_task(decl: type[Stage], fn):
    """The Prefect task of a declared stage: NO_CACHE (the store is the cache), the declared retries, and a
    fan-out over partitions for shardable stages (model slots stay with the driver)."""
    t = task(fn, name=decl.name, retries=decl.retries, retry_delay_seconds=10 if decl.retries else 0,
             retry_condition_fn=_transient, **_opts)
    return Plannable(fn, Sharded(fn, t, decl.models) if decl.shardable else t)  # `--plan`: tasks/plan_mode.py


ingest_task = stage_task(ingest.Ingest, ingest.run)
compose_target_text_task = stage_task(compose_target_text.ComposeTargetText, compose_target_text.run)
caption_images_task = stage_task(caption_images.CaptionImages, caption_images.run)
rewrite_caption_task = stage_task(rewrite_caption.RewriteCaption, rewrite_caption.run)
synthesize_images_task = stage_task(synthesize_images.SynthesizeImages, synthesize_images.run)
embed_images_task = stage_task(embed_images.EmbedImages, embed_images.embed_images)
embed_texts_task = stage_task(embed_texts.EmbedTexts, embed_texts.embed_texts)
embed_generated_task = stage_task(embed_generated.EmbedGenerated, embed_generated.embed_generated)
retrieve_task = stage_task(retrieve.Retrieve, retrieve.run)
fuse_scores_task = stage_task(fuse_scores.FuseScores, fuse_scores.fuse_scores)
ldre_query_task = stage_task(ldre_query.LDREQuery, ldre_query.run)
reference_mean_task = stage_task(reference_mean.ReferenceMean, reference_mean.run)  # CIReVL, GeneCIS focus_attribute

# IP-CIR (issue 4)
plan_layout_task = stage_task(plan_layout.PlanLayout, plan_layout.run)
synthesize_proxies_task = stage_task(synthesize_proxies.SynthesizeProxies, synthesize_proxies.run)
robust_proxy_task = stage_task(robust_proxy.RobustProxy, robust_proxy.run)
evaluate_task = stage_task(evaluate.Evaluate, evaluate.run)

# dataset builds (issue 5)
ingest_collection_task = stage_task(ingest_collection.IngestCollection, ingest_collection.run)
pair_groups_task = stage_task(pair_groups.PairGroups, pair_groups.pair_groups)
random_pairs_task = stage_task(random_pairs.RandomPairs, random_pairs.random_pairs)
caption_collection_task = stage_task(caption_collection.CaptionCollection, caption_collection.run)
mtcir_texts_task = stage_task(mtcir_texts.MTCIRTexts, mtcir_texts.run)
instructcir_texts_task = stage_task(instructcir_texts.InstructCIRTexts, instructcir_texts.run)
mvft_texts_task = stage_task(mvft_texts.MVFTTexts, mvft_texts.run)
# an export out of the store, not a stored stage
release_task = task(release.run, name="release", **_opts)
