"""instructcir_texts (InstructCIR §II-A, table I): for each random pair, an LLM reads the two captions and writes
a reformulation text, "concise and within 12 words", describing the change from image A to image B.

Word limit policy: an answer over `max_words` is NOT truncated (a cut sentence is a worse training text than
none); the pair gets status "too_long", the raw answer is kept for audit, and the count is in the stats. The
answer is cleaned first: first non-empty line, a leading "Difference:" and surrounding quotes removed.
"""

from __future__ import annotations

import re
import time
from contextlib import ExitStack
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from cirflow.models.mllm.protocol import ChatRequest
from cirflow.prompts import load_template, render
from cirflow.schemas.builds import REFORMULATIONS, InstructCIRTextConfig
from cirflow.schemas.mllm import MLLMConfig
from cirflow.storage import Artifact, ArtifactStore, begin, item_seed
from cirflow.tasks.build_texts import (backend, cache_delta, cache_stats, classify, count_words, generate, is_refusal,
                                       status_counts)
from cirflow.tasks.mtcir_texts import _captions

STAGE = "instructcir_texts"
VERSION = "1"
_PREFIX = re.compile(r"^\s*(difference|reformulation|answer)\s*:\s*", re.IGNORECASE)


def clean(text: str) -> str:
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", line).strip()
    return line.strip("\"'“”‘’` ").strip()


def run(store: ArtifactStore, pairs: Artifact, captions: Artifact, llm_cfg: MLLMConfig, cfg: InstructCIRTextConfig, *,
        cache_root: str | None = None, mllm: Any = None, progress: bool = True) -> Artifact:
    template, source = load_template("build_instructcir", "reformulation", cfg.prompt)
    params = {"llm": llm_cfg.key_fields(), "sampling": cfg.sampling, "template": template, "max_words": cfg.max_words}
    run_ = begin(store, STAGE, VERSION, params, inputs={"pairs": pairs, "captions": captions},
                 runtime={"shard_size": cfg.shard_size, "template_source": source, "cache": cache_root},
                 schemas={"data": REFORMULATIONS})
    if run_.cached:
        return run_.artifact
    rows = pairs.read("pairs", columns=["pair_id", "ref_id", "tgt_id"]).to_pylist()
    cap = _captions(captions)
    with ExitStack() as stack:
        handle = backend(stack, mllm, llm_cfg, cache_root)
        before = cache_stats(handle)
        shards = list(run_.pending(len(rows), cfg.shard_size))
        for shard in tqdm(shards, desc=STAGE, unit="shard", disable=not progress or len(shards) < 2):
            t0 = time.perf_counter()
            batch = rows[shard.start:shard.stop]
            out, reqs = {}, []
            for p in batch:
                seed = item_seed(cfg.sampling.seed, p["pair_id"])
                missing = [i for i in (p["ref_id"], p["tgt_id"]) if i not in cap]
                if missing:
                    out[p["pair_id"]] = _row(p, None, None, "failed", f"no caption for {missing}", seed, 0.0)
                    continue
                reqs.append(ChatRequest(id=p["pair_id"], prompt=render(template, caption_a=cap[p["ref_id"]],
                                                                       caption_b=cap[p["tgt_id"]]),
                                        sampling=cfg.sampling.model_copy(update={"seed": seed})))
            by_id = {p["pair_id"]: p for p in batch}
            for res in generate(handle, reqs, progress):
                p = by_id[res.id]
                status, raw, err = classify(res)
                text = clean(res.text) if status == "ok" else None
                if status == "ok":
                    n = count_words(text)
                    if not text:
                        status, err = "failed", "empty answer"
                    elif is_refusal(text):
                        status, err = "refused", "the model declined"
                    elif n > cfg.max_words:
                        status, err = "too_long", f"{n} words > {cfg.max_words}"
                out[p["pair_id"]] = _row(p, text if status == "ok" else None, raw, status, err, res.seed, res.seconds)
            run_.commit(shard, pa.Table.from_pylist([out[p["pair_id"]] for p in batch], schema=REFORMULATIONS),
                        seconds=time.perf_counter() - t0)
        after = cache_stats(handle)
    t = run_.committed("data", columns=["pair_id", "status", "error"])
    statuses = t.column("status").to_pylist()
    failures = [{"pair_id": i, "status": s, "error": e} for i, s, e in
                zip(*(t.column(c).to_pylist() for c in ("pair_id", "status", "error"))) if s != "ok"]
    return run_.finish(stats={"pairs": len(statuses), "status": status_counts(statuses), "ok": statuses.count("ok"),
                              "too_long": statuses.count("too_long"), "failures": failures[:20],
                              "llm_cache": cache_delta(before, after)})


def _row(p, text, raw, status, err, seed, seconds) -> dict:
    return {"pair_id": p["pair_id"], "ref_id": p["ref_id"], "tgt_id": p["tgt_id"], "text": text,
            "words": count_words(text) if text else None, "raw": raw, "status": status, "error": err, "seed": seed,
            "seconds": seconds}
