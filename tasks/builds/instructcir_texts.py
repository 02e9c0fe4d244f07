"""instructcir_texts (InstructCIR §II-A, table I): for each random pair, an LLM reads the two captions and writes
a reformulation text, "concise and within 12 words", describing the change from image A to image B.

Word limit policy: an answer over `max_words` is NOT truncated (a cut sentence is a worse training text than
none); the pair gets status "too_long", the raw answer is kept for audit, and the count is in the stats. The
answer is cleaned first: first non-empty line, a leading "Difference:" and surrounding quotes removed.
"""

from __future__ import annotations

import re
from typing import Any

from cirflow.models.mllm.protocol import ChatRequest
from cirflow.prompts import load_template, render
from cirflow.schemas.builds import REFORMULATIONS, InstructCIRTextConfig
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.builds.common import (BuildRuntime, PairTextStage, build_handle, classify, count_words, is_refusal,
                                       status_counts)
from cirflow.tasks.stage import Context, Params, execute
_PREFIX = re.compile(r"^\s*(difference|reformulation|answer)\s*:\s*", re.IGNORECASE)


def clean(text: str) -> str:
    # the prompt ends on the "Difference:" slot (table I): a model may repeat it, the answer on the next line
    text = _PREFIX.sub("", text.strip())
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).strip()
    return line.strip("\"'“”‘’` ").strip()


class InstructCIRTextsParams(Params):
    mllm: MLLMConfig  # the text LLM
    sampling: SamplingParams
    template: str
    max_words: int


class InstructCIRTexts(PairTextStage):
    name, version = "instructcir_texts", "1"
    Params = InstructCIRTextsParams
    outputs = {"data": REFORMULATIONS}

    def request(self, ctx: Context, p: dict) -> ChatRequest | None:
        caps, prm = self.captions(ctx, p), ctx.params
        if caps is None:
            return None
        return ChatRequest(id=p["pair_id"], prompt=render(prm.template, caption_a=caps[0], caption_b=caps[1]),
                           sampling=prm.sampling.model_copy(update={"seed": self.seed(ctx, p)}))

    def row(self, ctx: Context, p: dict, res) -> dict:
        if res is None:
            return _row(p, None, None, "failed", self.missing(ctx, p), self.seed(ctx, p), 0.0)
        status, raw, err = classify(res)
        text = clean(res.text) if status == "ok" else None
        if status == "ok":
            n = count_words(text)
            if not text:
                status, err = "failed", "empty answer"
            elif is_refusal(text):
                status, err = "refused", "the model declined"
            elif n > ctx.params.max_words:
                status, err = "too_long", f"{n} words > {ctx.params.max_words}"
        return _row(p, text if status == "ok" else None, raw, status, err, res.seed, res.seconds)

    def stats(self, ctx: Context) -> dict:
        statuses = ctx.run.committed("data", columns=["status"]).column("status").to_pylist()
        return {**super().stats(ctx), "pairs": len(statuses), "status": status_counts(statuses),
                "too_long": statuses.count("too_long")}


def run(store: ArtifactStore, pairs: Artifact, captions: Artifact, llm_cfg: MLLMConfig, cfg: InstructCIRTextConfig, *,
        cache_root: str | None = None, mllm: Any = None, progress: bool = True, max_failure_rate: float = 1.0,
        rank: int = 0, world: int = 1) -> Artifact:
    template, source = load_template(InstructCIRTexts.name, "reformulation", cfg.prompt)
    return execute(InstructCIRTexts, store, {"pairs": pairs, "captions": captions},
                   InstructCIRTextsParams(mllm=llm_cfg, sampling=cfg.sampling, template=template,
                                          max_words=cfg.max_words),
                   BuildRuntime(shard_size=cfg.shard_size, progress=progress, template_source=source,
                                cache=cache_root, max_failure_rate=max_failure_rate),
                   {"mllm": build_handle(mllm)}, rank=rank, world=world)


def _row(p, text, raw, status, err, seed, seconds) -> dict:
    return {"pair_id": p["pair_id"], "ref_id": p["ref_id"], "tgt_id": p["tgt_id"], "text": text,
            "words": count_words(text) if text else None, "raw": raw, "status": status, "error": err, "seed": seed,
            "seconds": seconds}
