"""rewrite_caption: a text-only LLM edits the caption of a query's reference image according to the
modification (CIReVL, metrics-and-methods.md B.3; LDRE, B.2).

For each query and each caption sample of its reference image (a `caption_images` artifact, id = image_id):
    prompt = base prompt (role, I/O markers, few-shot examples or semantic aspects; `prompts/rewrite_caption.
             <benchmark>.txt`) ending in "Image Content: {caption}\\nInstruction: {modification}\\nEdited Description:"
    answer = LLM(prompt)                     # no image: any text LLM behind the HTTP backend, or an MLLM
    text   = parse_edited_description(answer, modification)
* style "cirevl": one caption per reference (sample 0) → one row per query, sample 0.
* style "ldre":   every caption sample i → one row per (query, i), sample = i (LDRE's n divergent edits).

Parsing (CIReVL's rule, made explicit): the text after "Edited Description:" on the first line carrying the
marker; if the model put nothing after the marker on that line, the next non-empty line; if there is no
marker, the whole answer when it reads like a description; otherwise the raw modification. Every row that did
not take the marker path records its path in `error` as "parse:<path>: <reason>" with status "ok" (the text is
usable), and `stats.parse` counts the rows per path, so a prompt that the model does not follow shows up in the
manifest instead of silently degrading to the modification. Rows whose request or reference caption failed
have status "failed" and text null (embed_texts then applies its own fallback).
"""

from __future__ import annotations

import re
import time
from contextlib import ExitStack
from typing import Literal

import pyarrow as pa
from tqdm.auto import tqdm

from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import MLLM, ChatRequest
from cirflow.prompts import render
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.tables import TEXTS
from cirflow.storage import Artifact, ArtifactStore, begin, item_seed
from cirflow.tasks.caption_images import load_prompt
from cirflow.tasks.lazy import Lazy

STAGE = "rewrite_caption"
VERSION = "1"
STYLES = ("cirevl", "ldre")

# How a row's text was obtained. "marker*" = the model followed the format; the others are fallbacks.
MARKER, MARKER_NEXT_LINE, WHOLE_ANSWER, MODIFICATION = "marker", "marker_next_line", "whole_answer", "modification"
PARSE_PATHS = (MARKER, MARKER_NEXT_LINE, WHOLE_ANSWER, MODIFICATION)
FAILED = "failed"  # the request itself (or the reference caption) failed: no text at all

_MARKER_RE = re.compile(r"edited\s+description\s*:", re.IGNORECASE)
# The model continuing the few-shot pattern past its answer: cut there.
_NEXT_FIELD_RE = re.compile(r"\b(?:image\s+content|instruction|edited\s+description)\s*:", re.IGNORECASE)
_REFUSAL_RE = re.compile(
    r"^\s*(?:i\s*(?:'m|am)\s+(?:sorry|unable|not able)|sorry\b|i\s+(?:can\s*(?:'|no)t|cannot|won't|will not)\b"
    r"|as an ai\b|unfortunately\b|i apologi[sz]e)", re.IGNORECASE)
_QUOTES = "\"'`“”‘’*"


def parse_edited_description(answer: str | None, modification: str) -> tuple[str, str, str | None]:
    """(text, path, reason). `path` is one of PARSE_PATHS; `reason` says why a fallback was taken (None for the
    marker paths). Never raises: the worst case is the raw modification, as in CIReVL."""
    lines = (answer or "").splitlines()
    for n, line in enumerate(lines):
        m = _MARKER_RE.search(line)
        if not m:
            continue
        text = _clean(line[m.end():])
        if text:
            return text, MARKER, None
        rest = _clean(next((x for x in lines[n + 1:] if x.strip()), ""))
        if rest:
            return rest, MARKER_NEXT_LINE, None
        return modification.strip(), MODIFICATION, "nothing after the 'Edited Description:' marker"
    whole = _clean(" ".join(x.strip() for x in lines if x.strip()))
    if not whole:
        return modification.strip(), MODIFICATION, "empty answer"
    if _REFUSAL_RE.match(whole):
        return modification.strip(), MODIFICATION, "refusal"
    if len(re.findall(r"[A-Za-z]{2,}", whole)) < 2:
        return modification.strip(), MODIFICATION, "answer does not read like a description"
    return whole, WHOLE_ANSWER, "no 'Edited Description:' marker"


def parse_path(status: str, error: str | None) -> str:
    """The parse path of a written row, read back from its status and error columns."""
    if status != "ok":
        return FAILED
    if error and error.startswith("parse:"):
        return error.split(":", 2)[1]
    return MARKER


def _clean(s: str) -> str:
    s = s.strip()
    cut = _NEXT_FIELD_RE.search(s)
    if cut:
        s = s[:cut.start()].strip()
    return s.strip(_QUOTES).strip()


def run(store: ArtifactStore, bench: Artifact, captions: Artifact, mllm_cfg: MLLMConfig, sampling: SamplingParams, *,
        style: Literal["cirevl", "ldre"] = "cirevl", prompt: str | None = None, shard_size: int = 256,
        mllm: Lazy[MLLM] | None = None, progress: bool = True) -> Artifact:
    """Rewrite reference captions into target descriptions. `captions`: a caption_images artifact covering every
    query's reference image. `prompt`: None = the benchmark's built-in template, a built-in name, or a file path;
    the template must contain {caption} and {modification}."""
    if style not in STYLES:
        raise ConfigError(f"rewrite_caption: style must be one of {STYLES}, got {style!r}")
    benchmark = bench.manifest.params["benchmark"]
    template, template_source = load_prompt(STAGE, benchmark, prompt)
    for field in ("{caption}", "{modification}"):
        if field not in template:
            raise ConfigError(f"rewrite_caption: the template ({template_source}) has no {field} placeholder")
    params = {"mllm": mllm_cfg.key_fields(), "sampling": sampling, "template": template, "style": style}
    run_ = begin(store, STAGE, VERSION, params, inputs={"bench": bench, "captions": captions},
                 runtime={"shard_size": shard_size, "template_source": template_source, "backend": mllm_cfg.backend},
                 schemas={"data": TEXTS})
    if run_.cached:
        return run_.artifact

    work = _work_items(bench, captions, style)
    with ExitStack() as stack:
        backend = mllm or stack.enter_context(Lazy(lambda: load_mllm(mllm_cfg)))
        shards = list(run_.pending(len(work), shard_size))
        for shard in tqdm(shards, desc=STAGE, unit="shard", disable=not progress or len(shards) < 2):
            t0 = time.perf_counter()
            items = work[shard.start:shard.stop]
            todo = [w for w in items if w["caption_status"] == "ok"]
            requests = [ChatRequest(
                id=f"{w['query_id']}:{w['sample']}",
                prompt=render(template, caption=w["caption"], modification=w["modification"]),
                sampling=sampling.model_copy(update={"seed": item_seed(sampling.seed, f"{w['query_id']}:{w['sample']}")}),
            ) for w in todo]
            results = backend.get().generate(requests, progress=progress) if requests else []
            by_id = {r.id: r for r in results}
            run_.commit(shard, _texts_table(items, by_id, sampling.seed), seconds=time.perf_counter() - t0)

    return run_.finish(stats=_stats_after(run_, style=style, queries=len({w["query_id"] for w in work})))


def _work_items(bench: Artifact, captions: Artifact, style: str) -> list[dict]:
    """One item per (query, caption sample), query-major, samples ascending."""
    caps: dict[str, dict[int, dict]] = {}
    for r in captions.read(columns=["id", "sample", "text", "status", "error"]).to_pylist():
        caps.setdefault(r["id"], {})[r["sample"]] = r
    queries = bench.read("queries", columns=["query_id", "reference_id", "modification"]).to_pylist()
    missing = sorted({q["reference_id"] for q in queries if q["reference_id"] not in caps})
    if missing:
        raise ConfigError(f"rewrite_caption: the captions artifact has no caption for {len(missing)} reference "
                          f"image(s) (e.g. {missing[:3]}); caption them with which='references' or 'all'")
    work = []
    for q in queries:
        samples = caps[q["reference_id"]]
        for s in ([min(samples)] if style == "cirevl" else sorted(samples)):
            c = samples[s]
            ok = c["status"] == "ok" and bool((c["text"] or "").strip())
            work.append({"query_id": q["query_id"], "sample": s if style == "ldre" else 0,
                         "modification": q["modification"], "caption": c["text"] if ok else None,
                         "caption_status": "ok" if ok else "failed",
                         "caption_error": None if ok else (c["error"] or "empty caption")})
    return work


def _texts_table(items: list[dict], by_id: dict, base_seed: int) -> pa.Table:
    rows = []
    for w in items:
        rid = f"{w['query_id']}:{w['sample']}"
        row = {"id": w["query_id"], "sample": w["sample"], "seed": item_seed(base_seed, rid)}
        if w["caption_status"] != "ok":
            rows.append(row | {"text": None, "raw": None, "status": "failed", "seconds": 0.0,
                               "error": f"reference caption failed: {w['caption_error']}"})
            continue
        r = by_id[rid]
        if r.status != "ok":
            rows.append(row | {"text": None, "raw": r.text, "status": "failed", "error": r.error,
                               "seconds": r.seconds})
            continue
        text, path, reason = parse_edited_description(r.text, w["modification"])
        error = None if path == MARKER else f"parse:{path}" + (f": {reason}" if reason else "")
        rows.append(row | {"text": text, "raw": r.text, "status": "ok", "error": error, "seconds": r.seconds})
    return pa.Table.from_pylist(rows, schema=TEXTS)


def _stats_after(run_, **extra) -> dict:
    t = run_.committed("data", columns=["id", "sample", "status", "error", "seconds"])
    ids, samples, status, errors = (t.column(c).to_pylist() for c in ("id", "sample", "status", "error"))
    paths = [parse_path(s, e) for s, e in zip(status, errors)]
    counts = {p: paths.count(p) for p in (*PARSE_PATHS, FAILED)}
    failed = [{"id": i, "sample": s, "error": e} for i, s, st, e in zip(ids, samples, status, errors) if st != "ok"]
    fallbacks = [{"id": i, "sample": s, "error": e} for i, s, p, e in zip(ids, samples, paths, errors)
                 if p in (WHOLE_ANSWER, MODIFICATION)]
    secs = [s for s in t.column("seconds").to_pylist() if s]
    return {**extra, "rows": len(ids), "ok": len(ids) - len(failed), "failed": len(failed),
            "parse": counts, "fallbacks": len(fallbacks), "fallback_examples": fallbacks[:20],
            "failures": failed[:20], "model_seconds_per_item": round(sum(secs) / len(secs), 4) if secs else None}
