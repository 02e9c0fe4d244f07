"""compose_target_text (PEFUSE §3): an MLLM reads the reference image and the modification and writes a
description of the target image, which T→I retrieval then embeds as a text query.

Work is sharded over queries; each shard is one batched call to the backend (vLLM's continuous batching or a
batched `generate`), and each request carries a seed derived from (seed, query_id), so a resumed run samples
exactly what an uninterrupted one would. Failed requests are kept as rows with status "failed" and the reason.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from contextlib import ExitStack

import pyarrow as pa
from tqdm.auto import tqdm

from cirflow.models.images import load_image
from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import MLLM, ChatRequest
from cirflow.prompts import load_template, render
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.tables import TEXTS
from cirflow.storage import Artifact, ArtifactStore, begin, item_seed
from cirflow.tasks.lazy import Lazy

STAGE = "compose_target_text"
VERSION = "1"


def run(store: ArtifactStore, bench: Artifact, mllm_cfg: MLLMConfig, sampling: SamplingParams, *,
        prompt: str | None = None, shard_size: int = 256, mllm: Lazy[MLLM] | None = None,
        progress: bool = True) -> Artifact:
    benchmark = bench.manifest.params["benchmark"]
    template, template_source = load_template(STAGE, benchmark, prompt)
    params = {"mllm": mllm_cfg.key_fields(), "sampling": sampling, "template": template}
    run_ = begin(store, STAGE, VERSION, params, inputs={"bench": bench},
                 runtime={"shard_size": shard_size, "template_source": template_source, "backend": mllm_cfg.backend},
                 schemas={"data": TEXTS})
    if run_.cached:
        return run_.artifact

    queries = bench.read("queries").to_pylist()
    images = {r["image_id"]: r for r in bench.read("images").to_pylist()}
    with ExitStack() as stack:
        crops_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cirflow-crops-"))
        backend = mllm or stack.enter_context(Lazy(lambda: load_mllm(mllm_cfg)))
        shards = list(run_.pending(len(queries), shard_size))
        for shard in tqdm(shards, desc=STAGE, unit="shard", disable=not progress or len(shards) < 2):
            t0 = time.perf_counter()
            rows = queries[shard.start:shard.stop]
            requests = [ChatRequest(
                id=q["query_id"],
                prompt=render(template, modification=q["modification"], shared_concept=q["shared_concept"]),
                images=(_image_for(images[q["reference_id"]], crops_dir),),
                sampling=sampling.model_copy(update={"seed": item_seed(sampling.seed, q["query_id"])}),
            ) for q in rows]
            results = backend.get().generate(requests, progress=progress)
            run_.commit(shard, _texts_table(results), seconds=time.perf_counter() - t0)

    return run_.finish(stats=_stats_after(run_))


def _image_for(image: dict, crops_dir: str) -> str:
    """The file the MLLM sees: the image itself, or (GeneCIS attribute items) the benchmark's crop written once."""
    if not image["crop_box"]:
        return image["path"]
    path = os.path.join(crops_dir, hashlib.sha1(image["image_id"].encode()).hexdigest() + ".png")
    if not os.path.exists(path):
        load_image(image["path"], image["crop_box"]).save(path)
    return path


def _texts_table(results) -> pa.Table:
    return pa.Table.from_pylist([
        {"id": r.id, "sample": 0, "text": r.text if r.status == "ok" else None, "raw": r.text,
         "status": r.status, "error": r.error, "seed": r.seed, "seconds": r.seconds}
        for r in results], schema=TEXTS)


def _stats_after(run_) -> dict:
    """Counts over every shard (committed now or by an earlier, interrupted run)."""
    t = run_.committed("data", columns=["id", "status", "error", "seconds"])
    ids, status, errors = (t.column(c).to_pylist() for c in ("id", "status", "error"))
    failed = [{"id": i, "error": e} for i, s, e in zip(ids, status, errors) if s != "ok"]
    secs = [s for s in t.column("seconds").to_pylist() if s is not None]
    return {"items": len(ids), "ok": len(ids) - len(failed), "failed": len(failed), "failures": failed[:20],
            "model_seconds_per_item": round(sum(secs) / len(secs), 4) if secs else None}
