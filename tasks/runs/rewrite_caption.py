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
from typing import Literal

from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import MLLM, ChatRequest
from cirflow.prompts import render
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.tables import TEXTS
from cirflow.storage import Artifact, ArtifactStore, item_seed
from cirflow.tasks.runs.caption_images import load_prompt
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.stage import Context, MLLMRuntime, MLLMStage, Params, execute

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


class RewriteParams(Params):
    mllm: MLLMConfig  # any text LLM (or an MLLM): its key_fields()
    sampling: SamplingParams
    template: str
    style: Literal["cirevl", "ldre"]


class RewriteCaption(MLLMStage):
    name, version = "rewrite_caption", "1"
    Params, Runtime = RewriteParams, MLLMRuntime
    inputs = ("bench", "captions")
    outputs = {"data": TEXTS}

    def items(self, ctx: Context):
        work = _work_items(ctx.inputs["bench"], ctx.inputs["captions"], ctx.params.style)
        ctx.scratch["queries"] = len({w["query_id"] for w in work})
        return work

    def request(self, ctx: Context, w: dict) -> ChatRequest | None:
        if w["caption_status"] != "ok":
            return None  # nothing to edit: the row says why
        p, rid = ctx.params, f"{w['query_id']}:{w['sample']}"
        return ChatRequest(id=rid, prompt=render(p.template, caption=w["caption"], modification=w["modification"]),
                           sampling=p.sampling.model_copy(update={"seed": item_seed(p.sampling.seed, rid)}))

    def row(self, ctx: Context, w: dict, r) -> dict:
        row = {"id": w["query_id"], "sample": w["sample"],
               "seed": item_seed(ctx.params.sampling.seed, f"{w['query_id']}:{w['sample']}")}
        if r is None:
            return row | {"text": None, "raw": None, "status": "failed", "seconds": 0.0,
                          "error": f"reference caption failed: {w['caption_error']}"}
        if r.status != "ok":
            return row | {"text": None, "raw": r.text, "status": "failed", "error": r.error, "seconds": r.seconds}
        text, path, reason = parse_edited_description(r.text, w["modification"])
        error = None if path == MARKER else f"parse:{path}" + (f": {reason}" if reason else "")
        return row | {"text": text, "raw": r.text, "status": "ok", "error": error, "seconds": r.seconds}

    def model_factory(self, slot: str, ctx: Context):
        return load_mllm(ctx.params.mllm)

    def stats(self, ctx: Context) -> dict:
        return _stats_after(ctx.run, style=ctx.params.style, queries=ctx.scratch["queries"])


def run(store: ArtifactStore, bench: Artifact, captions: Artifact, mllm_cfg: MLLMConfig, sampling: SamplingParams, *,
        style: Literal["cirevl", "ldre"] = "cirevl", prompt: str | None = None, shard_size: int = 256,
        mllm: Lazy[MLLM] | None = None, progress: bool = True, max_failure_rate: float | None = None,
        retry_failed: bool | None = None, rank: int = 0, world: int = 1) -> Artifact:
    """Rewrite reference captions into target descriptions. `captions`: a caption_images artifact covering every
    query's reference image. `prompt`: None = the benchmark's built-in template, a built-in name, or a file path;
    the template must contain {caption} and {modification}."""
    if style not in STYLES:
        raise ConfigError(f"rewrite_caption: style must be one of {STYLES}, got {style!r}")
    template, template_source = load_prompt(RewriteCaption.name, bench.manifest.params["benchmark"], prompt)
    for field in ("{caption}", "{modification}"):
        if field not in template:
            raise ConfigError(f"rewrite_caption: the template ({template_source}) has no {field} placeholder")
    return execute(RewriteCaption, store, {"bench": bench, "captions": captions},
                   RewriteParams(mllm=mllm_cfg, sampling=sampling, template=template, style=style),
                   MLLMRuntime(shard_size=shard_size, progress=progress, template_source=template_source,
                               backend=mllm_cfg.backend, max_failure_rate=max_failure_rate,
                               retry_failed=retry_failed),
                   {"mllm": mllm}, rank=rank, world=world)


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


def _stats_after(run_, **extra) -> dict:
    """Parse paths and fallbacks over every committed row (ok / failed / failures come from `failure_stats`)."""
    t = run_.committed("data", columns=["id", "sample", "status", "error", "seconds"])
    ids, samples, status, errors = (t.column(c).to_pylist() for c in ("id", "sample", "status", "error"))
    paths = [parse_path(s, e) for s, e in zip(status, errors)]
    counts = {p: paths.count(p) for p in (*PARSE_PATHS, FAILED)}
    fallbacks = [{"id": i, "sample": s, "error": e} for i, s, p, e in zip(ids, samples, paths, errors)
                 if p in (WHOLE_ANSWER, MODIFICATION)]
    secs = [s for s in t.column("seconds").to_pylist() if s]
    return {**extra, "rows": len(ids), "parse": counts, "fallbacks": len(fallbacks),
            "fallback_examples": fallbacks[:20],
            "model_seconds_per_item": round(sum(secs) / len(secs), 4) if secs else None}
