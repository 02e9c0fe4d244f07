"""Thin Prefect task wrappers around the stage functions.

The store is the cache: each stage decides computed / resumed / cached from its key and commit records, so
Prefect's own caching is off (NO_CACHE) and results stay in memory (they are small Artifact handles, never
payloads). Retries are for transient failures (a server restart, a network blip); a rerun resumes at shard
granularity either way.
"""

from __future__ import annotations

from cirflow.tasks import (
                           build_texts,
                           caption_images,
                           collection,
                           compose_target_text,
                           embed,
                           evaluate,
                           ingest,
                           instructcir_texts,
                           ldre_query,
                           mtcir_texts,
                           mvft_texts,
                           pair_images,
                           plan_layout,
                           release,
                           retrieve,
                           rewrite_caption,
                           robust_proxy,
                           synthesize_images,
                           synthesize_proxies,
)
from cirflow.tasks.distributed import Sharded
from prefect import task
from prefect.cache_policies import NO_CACHE

_opts = dict(cache_policy=NO_CACHE, persist_result=False)
# model stages may meet a restarting server; committed shards survive the retry
_llm = dict(retries=1, retry_delay_seconds=10, **_opts)

ingest_task = task(ingest.run, name="ingest", **_opts)
# per-item model stages fan out over workers when the flow runs on a distributed task runner (tasks/distributed.py)
compose_target_text_task = Sharded(compose_target_text.run,
                                   task(compose_target_text.run, name="compose_target_text", **_llm))
caption_images_task = Sharded(caption_images.run, task(caption_images.run, name="caption_images", **_llm))
rewrite_caption_task = task(rewrite_caption.run, name="rewrite_caption", **_llm)
synthesize_images_task = Sharded(synthesize_images.run,
                                 task(synthesize_images.run, name="synthesize_images", **_opts))
embed_images_task = Sharded(embed.embed_images, task(embed.embed_images, name="embed_images", **_opts))
embed_texts_task = task(embed.embed_texts, name="embed_texts", **_opts)
embed_generated_task = task(embed.embed_generated, name="embed_generated", **_opts)
retrieve_task = task(retrieve.run, name="retrieve", **_opts)
fuse_scores_task = task(retrieve.fuse_scores, name="fuse_scores", **_opts)
ldre_query_task = task(ldre_query.run, name="ldre_query", **_opts)

# IP-CIR (issue 4)
plan_layout_task = task(plan_layout.run, name="plan_layout", **_llm)
synthesize_proxies_task = task(synthesize_proxies.run, name="synthesize_proxies", **_opts)
robust_proxy_task = task(robust_proxy.run, name="robust_proxy", **_opts)
evaluate_task = task(evaluate.run, name="evaluate", **_opts)

# dataset builds (issue 5)
ingest_collection_task = task(collection.run, name="ingest_collection", **_opts)
pair_groups_task = task(pair_images.pair_groups, name="pair_groups", **_opts)
random_pairs_task = task(pair_images.random_pairs, name="random_pairs", **_opts)
caption_collection_task = task(build_texts.run, name="caption_collection", **_llm)
mtcir_texts_task = task(mtcir_texts.run, name="mtcir_texts", **_llm)
instructcir_texts_task = task(instructcir_texts.run, name="instructcir_texts", **_llm)
mvft_texts_task = task(mvft_texts.run, name="mvft_texts", **_llm)
release_task = task(release.run, name="release", **_opts)
