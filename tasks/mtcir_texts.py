"""mtcir_texts (CoLLM §4.1, supplementary 8.1 and tables 9/22): for each image pair, an LLM reads the two
detailed captions and writes several short categorised modification texts in both directions (forward: image 1
→ image 2, backward: 2 → 1), as JSON validated against a schema (ChatRequest.json_schema; the backend checks
the answer). One request per pair; malformed, refused and failed answers are rows of the `requests` table with
the reason, never dropped. Each text is checked afterwards: over `max_words` → "too_long"; containing a
biometric keyword (collm.txt §4.1) → "biometric"; the rest are "ok". Category counts are written like table 9
(`categories.md`).
"""

from __future__ import annotations

import json
import re
import time
from contextlib import ExitStack
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from cirflow.models.mllm.protocol import ChatRequest
from cirflow.prompts import load_template, render
from cirflow.schemas.builds import MTCIR_CATEGORIES, MTCIR_TEXTS, PAIR_REQUESTS, MTCIRTextConfig
from cirflow.schemas.mllm import MLLMConfig
from cirflow.storage import Artifact, ArtifactStore, begin, item_seed
from cirflow.tasks.build_texts import backend, cache_delta, cache_stats, classify, count_words, generate, status_counts

STAGE = "mtcir_texts"
VERSION = "1"
SYSTEM = "You are a language assistant that writes short modification texts describing how one image differs " \
         "from another, using only the two image captions you are given."

_TEXT_LIST = {"type": "array", "items": {
    "type": "object", "properties": {"category": {"enum": list(MTCIR_CATEGORIES)}, "text": {"type": "string", "minLength": 1}},
    "required": ["category", "text"], "additionalProperties": False}}  # fmt: skip
SCHEMA = {"title": "mtcir_modifications", "type": "object", "properties": {"forward": _TEXT_LIST, "backward": _TEXT_LIST},
          "required": ["forward", "backward"], "additionalProperties": False}  # fmt: skip


def categories_block() -> str:
    return "\n".join(f"{i}. {cid} ({name}): {definition}"
                     for i, (cid, (name, definition)) in enumerate(MTCIR_CATEGORIES.items(), 1))


def run(store: ArtifactStore, pairs: Artifact, captions: Artifact, llm_cfg: MLLMConfig, cfg: MTCIRTextConfig, *,
        cache_root: str | None = None, mllm: Any = None, progress: bool = True) -> Artifact:
    template, source = load_template("build_mtcir", "modification", cfg.prompt)
    biometric = sorted({w.lower() for w in cfg.biometric_words}) if cfg.biometric_filter else []
    params = {"llm": llm_cfg.key_fields(), "sampling": cfg.sampling, "template": template, "system": SYSTEM,
              "schema": SCHEMA, "max_words": cfg.max_words, "biometric_words": biometric}
    run_ = begin(store, STAGE, VERSION, params, inputs={"pairs": pairs, "captions": captions},
                 runtime={"shard_size": cfg.shard_size, "template_source": source, "cache": cache_root},
                 schemas={"data": MTCIR_TEXTS, "requests": PAIR_REQUESTS})
    if run_.cached:
        return run_.artifact
    bio_re = re.compile(r"\b(" + "|".join(map(re.escape, biometric)) + r")\b", re.IGNORECASE) if biometric else None
    rows = pairs.read("pairs", columns=["pair_id", "ref_id", "tgt_id"]).to_pylist()
    cap = _captions(captions)
    with ExitStack() as stack:
        handle = backend(stack, mllm, llm_cfg, cache_root)
        before = cache_stats(handle)
        shards = list(run_.pending(len(rows), cfg.shard_size))
        for shard in tqdm(shards, desc=STAGE, unit="shard", disable=not progress or len(shards) < 2):
            t0 = time.perf_counter()
            batch = rows[shard.start:shard.stop]
            reqs, requests_out, texts_out = [], {}, []
            for p in batch:
                seed = item_seed(cfg.sampling.seed, p["pair_id"])
                missing = [i for i in (p["ref_id"], p["tgt_id"]) if i not in cap]
                if missing:
                    requests_out[p["pair_id"]] = _req_row(p, "failed", f"no caption for {missing}", None, seed, 0.0)
                    continue
                prompt = render(template, caption1=cap[p["ref_id"]], caption2=cap[p["tgt_id"]],
                                categories=categories_block())
                reqs.append(ChatRequest(id=p["pair_id"], prompt=prompt, system=SYSTEM, json_schema=SCHEMA,
                                        sampling=cfg.sampling.model_copy(update={"seed": seed})))
            by_id = {p["pair_id"]: p for p in batch}
            for res in generate(handle, reqs, progress):
                p = by_id[res.id]
                status, raw, err = classify(res)
                if status == "ok":
                    doc = json.loads(res.text)
                    for direction, (a, b) in (("forward", (p["ref_id"], p["tgt_id"])), ("backward", (p["tgt_id"], p["ref_id"]))):
                        for i, item in enumerate(doc[direction]):
                            text = " ".join(item["text"].split())
                            words = count_words(text)
                            st = ("biometric" if bio_re is not None and bio_re.search(text)
                                  else "too_long" if words > cfg.max_words else "ok")
                            texts_out.append({"pair_id": p["pair_id"], "direction": direction, "ref_id": a, "tgt_id": b,
                                              "index": i, "category": item["category"], "text": text, "words": words,
                                              "status": st})
                    if not doc["forward"] and not doc["backward"]:
                        status, err = "malformed", "the answer lists no modification"
                requests_out[p["pair_id"]] = _req_row(p, status, err, raw, res.seed, res.seconds)
            ordered = [requests_out[p["pair_id"]] for p in batch]
            run_.commit(type(shard)("requests", shard.index, shard.start, shard.stop),
                        pa.Table.from_pylist(ordered, schema=PAIR_REQUESTS))
            run_.commit(shard, pa.Table.from_pylist(texts_out, schema=MTCIR_TEXTS), seconds=time.perf_counter() - t0)
        after = cache_stats(handle)

    req_t = run_.committed("requests", columns=["pair_id", "status", "error"])
    txt_t = run_.committed("data", columns=["category", "status"])
    cats = [c for c, s in zip(txt_t.column("category").to_pylist(), txt_t.column("status").to_pylist()) if s == "ok"]
    table9 = category_table(cats)
    run_.write_file("categories.md", table9.encode())
    statuses = req_t.column("status").to_pylist()
    failures = [{"pair_id": i, "status": s, "error": e} for i, s, e in
                zip(*(req_t.column(c).to_pylist() for c in ("pair_id", "status", "error"))) if s != "ok"]
    ok_pairs = statuses.count("ok")
    return run_.finish(stats={
        "pairs": len(statuses), "requests": status_counts(statuses), "texts": status_counts(txt_t.column("status").to_pylist()),
        "filtered_biometric": txt_t.column("status").to_pylist().count("biometric"),
        "categories": status_counts(cats), "texts_per_ok_pair": round(len(cats) / ok_pairs, 3) if ok_pairs else None,
        "failures": failures[:20], "llm_cache": cache_delta(before, after)})


def _captions(captions: Artifact) -> dict[str, str]:
    t = captions.read(columns=["id", "text", "status"])
    return {i: x for i, x, s in zip(*(t.column(c).to_pylist() for c in ("id", "text", "status"))) if s == "ok" and x}


def _req_row(p: dict, status: str, err: str | None, raw: str | None, seed: int, seconds: float) -> dict:
    return {"pair_id": p["pair_id"], "ref_id": p["ref_id"], "tgt_id": p["tgt_id"], "status": status, "error": err,
            "raw": raw, "seed": seed, "seconds": seconds}


def category_table(categories: list[str]) -> str:
    """Markdown like collm.txt table 9: category id, name, number of texts (share), definition."""
    total = len(categories)
    lines = ["| Category ID | Name | No. Samples | Definition |", "|---|---|---|---|"]
    for cid, (name, definition) in MTCIR_CATEGORIES.items():
        n = categories.count(cid)
        share = f"{100 * n / total:.2f}%" if total else "-"
        lines.append(f"| {cid} | {name} | {n:,} ({share}) | {definition} |")
    lines.append(f"| total | | {total:,} | |")
    return "\n".join(lines) + "\n"
