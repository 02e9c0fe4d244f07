"""What the build text stages share (caption_collection, mtcir_texts, instructcir_texts, mvft_texts): the
MLLM stage bases with the request cache (BuildRuntime, BuildTextStage, PairTextStage),
failure classification (malformed / refused / failed) and word counts.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from cirflow.models.mllm.cache import CachedMLLM
from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import ChatResult
from cirflow.storage import item_seed
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.stage import Context, MLLMRuntime, MLLMStage

_REFUSAL = re.compile(r"^\W*(i'?m sorry|i am sorry|sorry,|i cannot|i can'?t|i can not|i'?m unable|i am unable|"
                      r"i won'?t|as an ai|i'?m not able|i am not able)", re.IGNORECASE)
_WORD = re.compile(r"[\w'-]+")


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


# ------------------------------------------------------------------------------------------ stage bases




class BuildRuntime(MLLMRuntime):
    cache: str | None = None  # the request cache root: a rebuild asks only what it has not asked before


def build_handle(mllm: Any) -> Lazy | None:
    """A flow's model handle as a slot handle: flows share one CachedMLLM object per model across stages."""
    if mllm is None or isinstance(mllm, Lazy):
        return mllm
    handle = Lazy(lambda: mllm)
    handle.get()  # already loaded: its cache counters before this stage are the baseline of `llm_cache`
    return handle


class BuildTextStage(MLLMStage):
    """The builds' MLLM stages: every request goes through the request cache (`BuildRuntime.cache`), and the
    stats say how many answers came from it. A build keeps what the model answered: refusals and malformed
    answers are counted rows (the facades default to no failure threshold, as builds always had)."""

    Runtime = BuildRuntime

    def model_factory(self, slot: str, ctx: Context):
        cfg, root = ctx.params.mllm, ctx.runtime.cache
        inner = Lazy(lambda: load_mllm(cfg))
        # nothing loads while every request hits the cache
        return inner.get() if root is None else CachedMLLM(inner, root, cfg.key_fields())

    def produce(self, ctx: Context) -> None:
        handle = ctx.models[self.models[0]]
        ctx.scratch["cache_before"] = cache_stats(handle) if handle.loaded else {}
        super().produce(ctx)

    def stats(self, ctx: Context) -> dict:
        handle = ctx.models[self.models[0]]
        after = cache_stats(handle) if handle.loaded else None
        return {"llm_cache": cache_delta(ctx.scratch.get("cache_before"), after)}


class PairTextStage(BuildTextStage):
    """Builds that write text about an image pair from the two images' captions (mtcir, instructcir)."""

    inputs = ("pairs", "captions")

    def items(self, ctx: Context):
        t = ctx.inputs["captions"].read(columns=["id", "text", "status"])
        ctx.scratch["cap"] = {i: x for i, x, s in zip(*(t.column(c).to_pylist() for c in ("id", "text", "status")))
                              if s == "ok" and x}
        return ctx.inputs["pairs"].read("pairs", columns=["pair_id", "ref_id", "tgt_id"]).to_pylist()

    def captions(self, ctx: Context, p: dict) -> tuple[str, str] | None:
        """(caption of ref, caption of tgt), or None when either image has no usable caption."""
        cap = ctx.scratch["cap"]
        return (cap[p["ref_id"]], cap[p["tgt_id"]]) if p["ref_id"] in cap and p["tgt_id"] in cap else None

    def missing(self, ctx: Context, p: dict) -> str:
        return f"no caption for {[i for i in (p['ref_id'], p['tgt_id']) if i not in ctx.scratch['cap']]}"

    def seed(self, ctx: Context, p: dict) -> int:
        return item_seed(ctx.params.sampling.seed, p["pair_id"])
