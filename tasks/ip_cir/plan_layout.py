"""plan_layout (IP-CIR "imagine" step): an LLM reads the reference caption (plus CIRCO's shared concept) and the
modification, and plans the target image as a layout (a scene sentence and boxed object instances,
cirflow.schemas.layout). The proxy images are then drawn from it by synthesize_proxies.

Text-only requests with a JSON schema (`request_schema()`: the Layout schema with capped texts, instance fields in
the prompt's order), so a server with structured outputs, or the in-process backend, constrains decoding (the
layout answer is valid JSON with four numbers in [0, 1] per box). An answer that fails the schema or the layout
rules is retried with a fresh seed, `item_seed(sampling.seed, f"{query_id}:{attempt}")` for attempt 0, 1, ..., up
to `max_attempts`; a query that never yields a valid layout is kept as a row with status "failed", the last raw
answer and the reasons of every attempt. Partially valid answers are salvaged: invalid instances are dropped and listed in `dropped`.

The Layout Rule (IP-CIR §3.2, metrics-and-methods B.1) is the query's relative caption, or with `rules` (a
TEXTS artifact, id = query_id, sample 0) "generating an image of <that text>": the authors' CIRR setting,
where the rule is built from the baseline's first LLM-edited target caption. The rule fills `{modification}`.

Optional enrichment (`enrich=True`) is a documented, deterministic simplification of the authors'
`enrich_layout`: see `enrich_layout` below.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Mapping

import pyarrow as pa

from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import MLLM, ChatRequest, ChatResult
from cirflow.prompts import load_template, render
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.layout import MAX_INSTANCES, Layout, LayoutParse, parse_layout
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.storage import Artifact, ArtifactStore, item_seed
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.stage import Context, MLLMRuntime, MLLMStage, Params, execute

USER_MARKER = "<<<USER>>>"  # in a template: the system message above this line, the user message below
NO_CAPTION = "(not available)"
EDITED_RULE = "generating an image of {edited}"  # the authors' CIRR rule: "generating a image of {edited caption}"

# Caps, in characters, on each text of a layout answer, sent in the request's schema so that constrained decoding
# ends every text (a small model otherwise fills its whole token budget with the scene sentence): the prompt asks
# for "one sentence", a "short name", a "short phrase", and GLIGEN's CLIP text encoder reads at most 77 tokens of
# any of them. Generous for a real LLM (the prompt's examples stay under half); an answer over a cap from a server
# without structured outputs fails the schema like any other violation, and is asked again (max_attempts).
TEXT_CAPS = {"scene": 240, "label": 40, "category": 40, "description": 120}
# The order in which the prompt's examples write an instance (prompts/plan_layout.*): a decoder that writes object
# properties in schema order (vLLM's xgrammar, models/mllm/constrained.py) then answers as the examples do.
PROMPT_ORDER = ("label", "category", "description", "size", "from", "box", "reference")

# One row per query.
LAYOUTS = pa.schema([
    pa.field("id", pa.string(), nullable=False),  # query_id
    pa.field("status", pa.string(), nullable=False),  # "ok" | "failed"
    pa.field("attempts", pa.int32(), nullable=False),  # requests made (0: nothing to ask, e.g. missing caption)
    pa.field("seed", pa.int64()),  # seed of the last attempt
    pa.field("scene", pa.string()),  # null when failed
    pa.field("layout_json", pa.string()),  # the validated (and, with enrich, enriched) Layout as JSON; null when failed
    pa.field("dropped", pa.list_(pa.string())),  # instances removed from the answer, with the reason each
    pa.field("raw", pa.string()),  # the last raw answer, kept for audits
    pa.field("error", pa.string()),  # why it failed: one line per attempt
    pa.field("seconds", pa.float32()),  # model time over all attempts
])  # fmt: skip

# Rough typical box size per category, as fractions of the image: (width, aspect = width / height).
# Hand-set approximations in the spirit of the COCO per-class statistics the authors use; NOT measured
# from COCO. Pass `size_stats` to run() to use real statistics.
DEFAULT_SIZE_STATS: dict[str, tuple[float, float]] = {
    "person": (0.30, 0.45), "dog": (0.45, 1.20), "cat": (0.40, 1.10), "horse": (0.55, 1.20),
    "bird": (0.20, 1.00), "cow": (0.50, 1.30), "sheep": (0.35, 1.30), "elephant": (0.60, 1.20),
    "car": (0.45, 1.70), "bus": (0.60, 1.40), "truck": (0.55, 1.40), "bicycle": (0.40, 1.40),
    "motorcycle": (0.40, 1.30), "train": (0.75, 1.80), "airplane": (0.60, 2.00), "boat": (0.40, 1.60),
    "chair": (0.20, 0.70), "couch": (0.60, 1.80), "bed": (0.70, 1.50), "dining table": (0.60, 1.60),
    "cup": (0.10, 0.80), "bottle": (0.08, 0.35), "bowl": (0.20, 1.60), "pizza": (0.45, 1.30),
    "clock": (0.15, 1.00), "umbrella": (0.35, 1.40), "laptop": (0.35, 1.30), "tv": (0.35, 1.50),
}  # fmt: skip


class PlanLayoutParams(Params):
    mllm: MLLMConfig
    sampling: SamplingParams
    template: str
    max_attempts: int
    min_instances: int
    enrich: dict | None  # {"strength", "size_stats"} when enriching
    text_caps: dict[str, int]  # maxLength per text field of the request's schema (request_schema)


class PlanLayout(MLLMStage):
    """Multi-round: an answer that fails the layout rules is asked again with the next attempt's seed."""

    name = "plan_layout"
    version = "3"  # 2: instances keep IP-CIR's optional size / from fields; 3: request_schema (capped texts)
    Params, Runtime = PlanLayoutParams, MLLMRuntime
    inputs = ("bench", "captions", "rules")
    outputs = {"data": LAYOUTS}
    multi_round = True

    def items(self, ctx: Context):
        captions = ctx.inputs.get("captions")
        ctx.scratch["caption_of"] = _captions(captions) if captions is not None else None
        rules = ctx.inputs.get("rules")
        ctx.scratch["rule_of"] = _captions(rules) if rules is not None else None
        ctx.scratch["system"], ctx.scratch["user"] = split_template(ctx.params.template)
        ctx.scratch["schema"] = request_schema(ctx.params.text_caps)
        return ctx.inputs["bench"].read("queries").to_pylist()

    def _caption(self, ctx: Context, q: dict) -> tuple[str | None, str | None]:
        caption_of = ctx.scratch["caption_of"]
        if caption_of is None:
            return NO_CAPTION, None
        return caption_of.get(q["reference_id"], (None, "no caption row"))

    def _rule(self, ctx: Context, q: dict) -> tuple[str | None, str | None]:
        """The Layout Rule: the modification, or "generating an image of <edited caption>" with `rules`."""
        rule_of = ctx.scratch["rule_of"]
        if rule_of is None:
            return q["modification"], None
        edited, why = rule_of.get(q["query_id"], (None, "no edited caption row"))
        return (EDITED_RULE.replace("{edited}", edited.strip()), None) if edited is not None else (None, why)

    def request(self, ctx: Context, q: dict, attempt: int = 0) -> ChatRequest | None:
        caption, _ = self._caption(ctx, q)
        rule, _ = self._rule(ctx, q)
        if caption is None or rule is None:
            return None
        p, qid = ctx.params, q["query_id"]
        return ChatRequest(
            id=qid, system=ctx.scratch["system"] or None, json_schema=ctx.scratch["schema"],
            prompt=render(ctx.scratch["user"], caption=caption, shared_concept=q["shared_concept"],
                          modification=rule),
            sampling=p.sampling.model_copy(update={"seed": item_seed(p.sampling.seed, f"{qid}:{attempt}")}),
        )  # fmt: skip

    def follow_up(self, ctx: Context, q: dict, answers: list) -> ChatRequest | None:
        if len(answers) >= ctx.params.max_attempts or self._state(ctx, q, answers).done:
            return None
        return self.request(ctx, q, attempt=len(answers))

    def _state(self, ctx: Context, q: dict, answers: list) -> "_State":
        state = _State()
        caption, why = self._caption(ctx, q)
        if caption is None:
            state.fail(f"no usable caption for reference {q['reference_id']}: {why}")
        rule, why_rule = self._rule(ctx, q)
        if rule is None:
            state.fail(f"no usable edited caption for the layout rule: {why_rule}")
        for attempt, res in enumerate(answers):
            state.record(res, attempt, ctx.params.min_instances)
        return state

    def row(self, ctx: Context, q: dict, answers: list) -> dict:
        e = ctx.params.enrich
        return self._state(ctx, q, answers).row(q["query_id"], e is not None, (e or {}).get("strength", 0.5),
                                                 (e or {}).get("size_stats", {}))

    def model_factory(self, slot: str, ctx: Context):
        return load_mllm(ctx.params.mllm)

    def stats(self, ctx: Context) -> dict:
        return _stats_after(ctx.run)


def run(store: ArtifactStore, bench: Artifact, mllm_cfg: MLLMConfig, sampling: SamplingParams, *,
        captions: Artifact | None = None, rules: Artifact | None = None, prompt: str | None = None,
        max_attempts: int = 3, text_chars: int | None = None,
        min_instances: int = 1, enrich: bool = False, enrich_strength: float = 0.5,
        size_stats: Mapping[str, tuple[float, float]] | None = None, shard_size: int = 64,
        mllm: Lazy[MLLM] | None = None, progress: bool = True, max_failure_rate: float | None = None,
        retry_failed: bool | None = None, rank: int = 0, world: int = 1) -> Artifact:
    """One layout per query of `bench`. `captions`: a TEXTS artifact with id = image_id (sample 0 is used)
    describing reference images; without it the LLM sees only the concept and the modification. `rules`: a
    TEXTS artifact with id = query_id (sample 0 is used, e.g. the baseline's edited captions): the Layout Rule
    becomes "generating an image of <text>" instead of the modification (IP-CIR on CIRR). `text_chars`: a
    tighter cap than TEXT_CAPS on every text of the answer (short answers for a small token budget)."""
    if max_attempts < 1:
        raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
    if not 1 <= min_instances <= MAX_INSTANCES:
        raise ConfigError(f"min_instances must be in 1..{MAX_INSTANCES}, got {min_instances}")
    template, template_source = load_template(PlanLayout.name, bench.manifest.params["benchmark"], prompt)
    if text_chars is not None and text_chars < 1:
        raise ConfigError(f"text_chars must be >= 1, got {text_chars}")
    caps = {k: min(v, text_chars or v) for k, v in TEXT_CAPS.items()}
    stats_table = {k.lower(): tuple(v) for k, v in (size_stats or DEFAULT_SIZE_STATS).items()}
    params = PlanLayoutParams(mllm=mllm_cfg, sampling=sampling, template=template, max_attempts=max_attempts,
                              min_instances=min_instances, text_caps=caps,
                              enrich={"strength": enrich_strength, "size_stats": stats_table} if enrich else None)
    return execute(PlanLayout, store, {"bench": bench, "captions": captions, "rules": rules}, params,
                   MLLMRuntime(shard_size=shard_size, progress=progress, template_source=template_source,
                               backend=mllm_cfg.backend, max_failure_rate=max_failure_rate,
                               retry_failed=retry_failed),
                   {"mllm": mllm}, rank=rank, world=world)


def request_schema(caps: Mapping[str, int] = TEXT_CAPS) -> dict:
    """The JSON schema a layout request carries: `Layout.model_json_schema()` with `caps` (TEXT_CAPS) as maxLength
    and the instance properties in PROMPT_ORDER (any property the prompt does not name follows, in schema order)."""
    schema = copy.deepcopy(Layout.model_json_schema())
    inst = schema["$defs"]["Instance"]
    props = inst["properties"]
    inst["properties"] = {k: props[k] for k in (*[k for k in PROMPT_ORDER if k in props],
                                                *[k for k in props if k not in PROMPT_ORDER])}
    for k in ("label", "category", "description"):
        props[k]["maxLength"] = caps[k]
    schema["properties"]["scene"]["maxLength"] = caps["scene"]
    return schema


def split_template(template: str) -> tuple[str, str]:
    """(system message, user message template). A template without the marker is all user message."""
    if USER_MARKER not in template:
        return "", template
    system, user = template.split(USER_MARKER, 1)
    return system.strip(), user.strip()


def raw_answer(res: ChatResult) -> str | None:
    """The model's text, also when the backend rejected it against the JSON schema: backends then put it in
    the error as `...; raw text: <repr>` (cirflow.models.mllm.protocol.check_json_answer)."""
    if res.text is not None:
        return res.text
    err = res.error or ""
    marker = "; raw text: "
    at = err.find(marker)
    while at != -1:  # the first occurrence whose remainder is exactly one string literal
        try:
            value = ast.literal_eval(err[at + len(marker):])
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, str):
            return value
        at = err.find(marker, at + 1)
    return None


class _State:
    """What is known about one query so far."""

    def __init__(self):
        self.done = False
        self.parse: LayoutParse | None = None
        self.attempts = 0
        self.seed: int | None = None
        self.raw: str | None = None
        self.errors: list[str] = []
        self.seconds = 0.0

    def fail(self, reason: str) -> None:
        self.errors.append(reason)
        self.done = True

    def record(self, res: ChatResult, attempt: int, min_instances: int) -> None:
        self.attempts, self.seed, self.seconds = attempt + 1, res.seed, self.seconds + res.seconds
        self.raw = raw_answer(res)
        if self.raw is None:  # transport or server failure: nothing to parse
            self.errors.append(f"attempt {attempt + 1} (seed {res.seed}): {res.error}")
            return
        parsed = parse_layout(self.raw, min_instances=min_instances)
        if parsed.ok:
            self.parse, self.done = parsed, True
        else:
            detail = f" (dropped: {'; '.join(parsed.dropped[:5])})" if parsed.dropped else ""
            self.errors.append(f"attempt {attempt + 1} (seed {res.seed}): {parsed.error}{detail}")

    def row(self, qid: str, enrich: bool, strength: float, stats: Mapping[str, tuple[float, float]]) -> dict:
        ok = self.parse is not None
        layout = self.parse.layout if ok else None
        if ok and enrich:
            layout = enrich_layout(layout, stats, strength)
        return {"id": qid, "status": "ok" if ok else "failed", "attempts": self.attempts, "seed": self.seed,
                "scene": layout.scene if ok else None,
                "layout_json": layout.model_dump_json(exclude_none=True) if ok else None,
                "dropped": self.parse.dropped if ok else [], "raw": self.raw,
                "error": None if ok else "\n".join(self.errors) or "no attempt made", "seconds": self.seconds}


def enrich_layout(layout: Layout, size_stats: Mapping[str, tuple[float, float]], strength: float = 0.5) -> Layout:
    """Nudge each box towards its category's typical size (a simple, deterministic `enrich_layout`).

    For an instance whose (lower-cased) category has statistics (w_c, a_c) (width as a fraction of the image
    width, aspect = width / height):  w' = (1 - s)·w + s·w_c,  a' = (1 - s)·a + s·a_c,  h' = w' / a',
    keeping the box centre, then shifting the box back inside [0, 1] (and shrinking it if it is larger than
    the image). The LLM's box is kept as `obox`. Categories without statistics are left as they are.
    Differences from the authors' code: no random draws (their widths/aspects are sampled around the COCO
    class statistics) and no overlap resolution.
    """
    out = []
    for inst in layout.instances:
        stat = size_stats.get(inst.category.lower())
        if stat is None:
            out.append(inst)
            continue
        x1, y1, x2, y2 = inst.box
        w, h = x2 - x1, y2 - y1
        wc, ac = stat
        w_new = (1 - strength) * w + strength * wc
        a_new = (1 - strength) * (w / h) + strength * ac
        h_new = w_new / a_new
        scale = min(1.0, 1.0 / w_new, 1.0 / h_new)  # never larger than the image
        w_new, h_new = w_new * scale, h_new * scale
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        nx1 = min(max(cx - w_new / 2, 0.0), 1.0 - w_new)
        ny1 = min(max(cy - h_new / 2, 0.0), 1.0 - h_new)
        box = [round(nx1, 4), round(ny1, 4), round(nx1 + w_new, 4), round(ny1 + h_new, 4)]
        if not (box[0] < box[2] and box[1] < box[3]):  # degenerate after rounding: keep the LLM's box
            out.append(inst)
            continue
        out.append(inst.model_copy(update={"box": box, "obox": list(inst.box)}))
    return layout.model_copy(update={"instances": out})


def _captions(captions: Artifact) -> dict[str, tuple[str | None, str | None]]:
    """image_id -> (caption text or None, why not) from sample 0 of a TEXTS artifact."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for r in captions.read(columns=["id", "sample", "text", "status", "error"]).to_pylist():
        if r["sample"] != 0:
            continue
        ok = r["status"] == "ok" and r["text"] is not None and r["text"].strip()
        out[r["id"]] = (r["text"], None) if ok else (None, r["error"] or f"status {r['status']}")
    return out


def _stats_after(run_) -> dict:
    """Attempts and salvaged instances over every committed row (ok / failed / failures: `failure_stats`)."""
    t = run_.committed("data", columns=["id", "status", "attempts", "dropped", "error", "seconds"])
    rows = t.to_pylist()
    attempts = [r["attempts"] for r in rows]
    secs = [r["seconds"] for r in rows if r["seconds"] is not None]
    return {"attempts_total": sum(attempts), "retried": sum(a > 1 for a in attempts),
            "instances_dropped": sum(len(r["dropped"] or []) for r in rows),
            "model_seconds_per_item": round(sum(secs) / len(secs), 4) if secs else None}
