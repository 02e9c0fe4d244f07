"""mtcir_texts (CoLLM §4.1, supplementary 8.1 and tables 9/22): for each image pair, an LLM reads the two
detailed captions and writes several short categorised modification texts in both directions (forward: image 1
→ image 2, backward: 2 → 1), as JSON validated against a schema (ChatRequest.json_schema; the backend checks
the answer). One request per pair; malformed, refused and failed answers are rows of the `requests` table with
the reason, never dropped. Each text is checked afterwards: over `max_words` → "too_long"; containing a
biometric keyword (collm.txt §4.1) → "biometric"; the rest are "ok". Category counts are written like table 9
(`categories.md`). Image level: a pair with an image whose caption mentions a person or a face is not asked
about at all (the paper blurs faces; we remove, see schemas/builds.py DEFAULT_BIOMETRIC_IMAGE_WORDS); the stats
count those images and pairs.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pyarrow as pa

from cirflow.models.mllm.protocol import ChatRequest
from cirflow.prompts import load_template, render
from cirflow.schemas.builds import MTCIR_CATEGORIES, MTCIR_TEXTS, PAIR_REQUESTS, MTCIRTextConfig
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.builds.common import BuildRuntime, PairTextStage, build_handle, classify, count_words, status_counts
from cirflow.tasks.stage import Context, Params, execute
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


class MTCIRTextsParams(Params):
    mllm: MLLMConfig  # the text LLM
    sampling: SamplingParams
    template: str
    system: str
    json_schema: dict
    max_words: int
    biometric_words: list[str]
    biometric_image_words: list[str] = []  # empty: no image-level filter


class MTCIRTexts(PairTextStage):
    """Per pair one request (`requests` table: status ok / malformed / refused / failed, the failure
    accounting) and its texts (`data`, any number per pair: status ok / too_long / biometric)."""

    name, version = "mtcir_texts", "2"  # 2: image-level biometric filter
    Params = MTCIRTextsParams
    outputs = {"requests": PAIR_REQUESTS, "data": MTCIR_TEXTS}
    status_table = "requests"
    row_per_item, redo_failed_shards = False, True  # texts per pair vary: a shard with failures is redone whole

    def items(self, ctx: Context):
        words = ctx.params.biometric_words
        ctx.scratch["bio_re"] = _words_re(words)
        pairs = super().items(ctx)
        person_re = _words_re(ctx.params.biometric_image_words)
        flagged = set() if person_re is None else \
            {i for i, text in ctx.scratch["cap"].items() if person_re.search(text)}
        kept = [p for p in pairs if p["ref_id"] not in flagged and p["tgt_id"] not in flagged]
        ctx.scratch["biometric_images"] = {"images": len(flagged), "pairs_removed": len(pairs) - len(kept)}
        return kept

    def request(self, ctx: Context, p: dict) -> ChatRequest | None:
        caps, prm = self.captions(ctx, p), ctx.params
        if caps is None:
            return None
        prompt = render(prm.template, caption1=caps[0], caption2=caps[1], categories=categories_block())
        return ChatRequest(id=p["pair_id"], prompt=prompt, system=prm.system, json_schema=prm.json_schema,
                           sampling=prm.sampling.model_copy(update={"seed": self.seed(ctx, p)}))

    def rows_to_tables(self, ctx: Context, batch, results):
        requests_out, texts_out = [], []
        for p, res in zip(batch, results):
            if res is None:
                requests_out.append(_req_row(p, "failed", self.missing(ctx, p), None, self.seed(ctx, p), 0.0))
                continue
            status, raw, err = classify(res)
            if status == "ok":
                doc = json.loads(res.text)
                texts_out += self._texts(ctx, p, doc)
                if not doc["forward"] and not doc["backward"]:
                    status, err = "malformed", "the answer lists no modification"
            requests_out.append(_req_row(p, status, err, raw, res.seed, res.seconds))
        return {"requests": pa.Table.from_pylist(requests_out, schema=PAIR_REQUESTS),
                "data": pa.Table.from_pylist(texts_out, schema=MTCIR_TEXTS)}

    def _texts(self, ctx: Context, p: dict, doc: dict) -> list[dict]:
        bio_re, out = ctx.scratch["bio_re"], []
        for direction, (a, b) in (("forward", (p["ref_id"], p["tgt_id"])), ("backward", (p["tgt_id"], p["ref_id"]))):
            for i, item in enumerate(doc[direction]):
                text = " ".join(item["text"].split())
                words = count_words(text)
                st = ("biometric" if bio_re is not None and bio_re.search(text)
                      else "too_long" if words > ctx.params.max_words else "ok")
                out.append({"pair_id": p["pair_id"], "direction": direction, "ref_id": a, "tgt_id": b, "index": i,
                            "category": item["category"], "text": text, "words": words, "status": st})
        return out

    def produce(self, ctx: Context) -> None:
        super().produce(ctx)
        if ctx.world == 1:  # the driver: every shard is committed
            txt_t = ctx.run.committed("data", columns=["category", "status"])
            ctx.run.write_file("categories.md", category_table(_ok_categories(txt_t)).encode())

    def stats(self, ctx: Context) -> dict:
        req_t = ctx.run.committed("requests", columns=["pair_id", "status", "error"])
        txt_t = ctx.run.committed("data", columns=["category", "status"])
        cats = _ok_categories(txt_t)
        statuses, texts = req_t.column("status").to_pylist(), txt_t.column("status").to_pylist()
        ok_pairs = statuses.count("ok")
        if "biometric_images" not in ctx.scratch:  # a run that found every shard committed never listed items
            self.items(ctx)
        return {**super().stats(ctx), "pairs": len(statuses), "requests": status_counts(statuses),
                "texts": status_counts(texts), "filtered_biometric": texts.count("biometric"),
                "filtered_biometric_images": ctx.scratch["biometric_images"]["images"],
                "pairs_removed_biometric_images": ctx.scratch["biometric_images"]["pairs_removed"],
                "categories": status_counts(cats),
                "texts_per_ok_pair": round(len(cats) / ok_pairs, 3) if ok_pairs else None}


def _words_re(words: list[str]) -> re.Pattern | None:
    return re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE) if words else None


def _ok_categories(txt_t: pa.Table) -> list[str]:
    return [c for c, s in zip(txt_t.column("category").to_pylist(), txt_t.column("status").to_pylist()) if s == "ok"]


def run(store: ArtifactStore, pairs: Artifact, captions: Artifact, llm_cfg: MLLMConfig, cfg: MTCIRTextConfig, *,
        cache_root: str | None = None, mllm: Any = None, progress: bool = True, max_failure_rate: float = 1.0,
        rank: int = 0, world: int = 1) -> Artifact:
    template, source = load_template(MTCIRTexts.name, "modification", cfg.prompt)
    biometric = sorted({w.lower() for w in cfg.biometric_words}) if cfg.biometric_filter else []
    persons = sorted({w.lower() for w in cfg.biometric_image_words}) if cfg.biometric_images else []
    return execute(MTCIRTexts, store, {"pairs": pairs, "captions": captions},
                   MTCIRTextsParams(mllm=llm_cfg, sampling=cfg.sampling, template=template, system=SYSTEM,
                                    json_schema=SCHEMA, max_words=cfg.max_words, biometric_words=biometric,
                                    biometric_image_words=persons),
                   BuildRuntime(shard_size=cfg.shard_size, progress=progress, template_source=source,
                                cache=cache_root, max_failure_rate=max_failure_rate),
                   {"mllm": build_handle(mllm)}, rank=rank, world=world)


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
