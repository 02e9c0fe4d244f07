"""caption_collection: one detailed MLLM caption per collection image (all three builds), plus what the build
text stages share: the cached model handle, failure classification (malformed / refused / failed), word counts.

Every request carries a per-image seed `item_seed(seed, "<image_id>:caption")` and goes through CachedMLLM, so
a re-run after the collection grew only asks about the new images.
"""

from __future__ import annotations

import ast
import re
import time
from contextlib import ExitStack
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from cirflow.models.mllm.cache import CachedMLLM
from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import ChatRequest, ChatResult
from cirflow.prompts import load_template
from cirflow.schemas.builds import CaptionConfig
from cirflow.schemas.mllm import MLLMConfig
from cirflow.schemas.tables import TEXTS
from cirflow.storage import Artifact, ArtifactStore, begin, item_seed
from cirflow.tasks.lazy import Lazy

STAGE = "caption_collection"
VERSION = "1"

_REFUSAL = re.compile(r"^\W*(i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i can not|i'?m unable|i am unable|"
                      r"i won'?t|as an ai|i'?m not able|i am not able)", re.IGNORECASE)
_WORD = re.compile(r"[\w'-]+")


# ------------------------------------------------------------------------------------------ shared helpers


def backend(stack: ExitStack, mllm: Any, cfg: MLLMConfig, cache_root: str | None) -> Any:
    """The handle a stage generates with: the caller's (a flow shares one, already cached) or a CachedMLLM
    around a lazily loaded backend (nothing loads while every request hits the cache)."""
    if mllm is not None:
        return mllm
    inner = stack.enter_context(Lazy(lambda: load_mllm(cfg)))
    return inner if cache_root is None else stack.enter_context(CachedMLLM(inner, cache_root, cfg.key_fields()))


def generate(handle: Any, requests: list[ChatRequest], progress: bool) -> list[ChatResult]:
    if not requests:
        return []
    model = handle.get() if isinstance(handle, Lazy) else handle
    return model.generate(requests, progress=progress)


def cache_stats(handle: Any) -> dict | None:
    model = handle.get() if isinstance(handle, Lazy) and handle.loaded else handle
    return model.stats() if isinstance(model, CachedMLLM) else None


def cache_delta(before: dict | None, after: dict | None) -> dict | None:
    if before is None or after is None:
        return None
    return {k: after[k] - before.get(k, 0) for k in after}


def classify(res: ChatResult) -> tuple[str, str | None, str | None]:
    """(status, raw text, error): ok | refused | malformed | failed. The backend already validated a JSON-schema
    answer; its error keeps the raw answer after '; raw text: ', which is what tells a refusal from garbage."""
    if res.status == "ok":
        return "ok", res.text, None
    err = res.error or "failed"
    raw = None
    if "; raw text: " in err:
        try:
            raw = ast.literal_eval(err.split("; raw text: ", 1)[1])
        except (ValueError, SyntaxError):
            raw = err.split("; raw text: ", 1)[1]
    api_refusal = re.search(r'"refusal"\s*:\s*"', err) is not None  # OpenAI: content null, refusal set
    if api_refusal or (isinstance(raw, str) and _REFUSAL.search(raw)):
        return "refused", raw, err
    if err.startswith(("invalid JSON", "schema violation", "no text to parse")):
        return "malformed", raw, err
    return "failed", raw, err


def is_refusal(text: str | None) -> bool:
    return bool(text) and _REFUSAL.search(text) is not None


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def status_counts(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------ the caption stage


def run(store: ArtifactStore, collection: Artifact, mllm_cfg: MLLMConfig, cfg: CaptionConfig, *, build: str,
        cache_root: str | None = None, mllm: Any = None, progress: bool = True) -> Artifact:
    template, source = load_template("build_caption", build, cfg.prompt)
    params = {"source": cfg.source, "mllm": mllm_cfg.key_fields() if cfg.source == "mllm" else None,
              "sampling": cfg.sampling if cfg.source == "mllm" else None,
              "template": template if cfg.source == "mllm" else None}
    run_ = begin(store, STAGE, VERSION, params, inputs={"collection": collection},
                 runtime={"shard_size": cfg.shard_size, "template_source": source, "cache": cache_root},
                 schemas={"data": TEXTS})
    if run_.cached:
        return run_.artifact
    images = collection.read("images", columns=["image_id", "path", "caption"]).to_pylist()
    with ExitStack() as stack:
        handle = backend(stack, mllm, mllm_cfg, cache_root) if cfg.source == "mllm" else None
        before = cache_stats(handle) if handle is not None else None
        shards = list(run_.pending(len(images), cfg.shard_size))
        for shard in tqdm(shards, desc=STAGE, unit="shard", disable=not progress or len(shards) < 2):
            t0 = time.perf_counter()
            rows = images[shard.start:shard.stop]
            if cfg.source == "collection":
                table = [{"id": r["image_id"], "sample": 0, "text": r["caption"], "raw": r["caption"],
                          "status": "ok" if r["caption"] else "failed",
                          "error": None if r["caption"] else "the collection has no caption for this image",
                          "seed": None, "seconds": 0.0} for r in rows]
            else:
                reqs = [ChatRequest(id=r["image_id"], prompt=template.strip(), images=(r["path"],),
                                    sampling=cfg.sampling.model_copy(update={
                                        "seed": item_seed(cfg.sampling.seed, f"{r['image_id']}:caption")}))
                        for r in rows]
                table = []
                for res in generate(handle, reqs, progress):
                    text = (res.text or "").strip() if res.status == "ok" else None
                    status, raw, err = classify(res)
                    if status == "ok" and not text:
                        status, err = "failed", "empty caption"
                    if status == "ok" and is_refusal(text):
                        status, err = "refused", "the model declined to caption"
                    table.append({"id": res.id, "sample": 0, "text": text if status == "ok" else None, "raw": raw,
                                  "status": "ok" if status == "ok" else "failed",
                                  "error": None if status == "ok" else f"{status}: {err}", "seed": res.seed,
                                  "seconds": res.seconds})
            run_.commit(shard, pa.Table.from_pylist(table, schema=TEXTS), seconds=time.perf_counter() - t0)
        after = cache_stats(handle) if handle is not None else None
    t = run_.committed("data", columns=["id", "status", "error"])
    failed = [{"id": i, "error": e} for i, s, e in zip(*(t.column(c).to_pylist() for c in ("id", "status", "error")))
              if s != "ok"]
    return run_.finish(stats={"items": t.num_rows, "ok": t.num_rows - len(failed), "failed": len(failed),
                              "failures": failed[:20], "llm_cache": cache_delta(before, after)})
