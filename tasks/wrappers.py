"""Thin Prefect task wrappers around the stage functions.

The store is the cache: each stage decides computed / resumed / cached from its key and commit records, so
Prefect's own caching is off (NO_CACHE) and results stay in memory (they are small Artifact handles, never
payloads). Retries are for transient failures (a server restart, a network blip); a rerun resumes at shard
granularity either way.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from cirflow.tasks import compose_target_text, embed, evaluate, ingest, retrieve

_opts = dict(cache_policy=NO_CACHE, persist_result=False)

ingest_task = task(ingest.run, name="ingest", **_opts)
compose_target_text_task = task(compose_target_text.run, name="compose_target_text", retries=1,
                                retry_delay_seconds=10, **_opts)
embed_images_task = task(embed.embed_images, name="embed_images", **_opts)
embed_texts_task = task(embed.embed_texts, name="embed_texts", **_opts)
retrieve_task = task(retrieve.run, name="retrieve", **_opts)
evaluate_task = task(evaluate.run, name="evaluate", **_opts)
