"""refine_regenerate: new modification texts, coarse → fine, for the triplets that failed the level-0 validation
(CoLLM supp. §8.2): one request per failed triplet (reference + target images, the old text, a few passing texts
as examples) answering {"texts": [coarse, …, fine]}."""

from __future__ import annotations

import json
import random

import pyarrow as pa

from cirflow.models.mllm.protocol import MLLM, ChatRequest, ChatResult
from cirflow.prompts import load_template, render
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.refine import RefineOptions
from cirflow.schemas.tables import TEXTS
from cirflow.storage import Artifact, ArtifactStore, item_seed
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.refine.common import RefineRuntime, RefineStage, check_benchmark, image_paths, raw_answer
from cirflow.tasks.stage import Context, MLLMStage, Params, execute


def texts_schema(levels: int) -> dict:
    return {"title": "regenerated", "type": "object", "additionalProperties": False, "required": ["texts"],
            "properties": {"texts": {"type": "array", "minItems": levels, "maxItems": levels,
                                     "items": {"type": "string", "minLength": 1}}}}


class RegenerateParams(Params):
    mllm: MLLMConfig
    sampling: SamplingParams
    template: str
    levels: int
    good_examples: int
    seed: int


class RefineRegenerate(RefineStage, MLLMStage):
    """One request per triplet still pending after level 0; its answer is `levels` TEXTS rows (coarse → fine)."""

    name, version = "refine_regenerate", "1"
    Params, Runtime = RegenerateParams, RefineRuntime
    inputs = ("bench", "validated")
    outputs = {"data": TEXTS}
    shardable, row_per_item = False, False

    def items(self, ctx: Context):
        p, bench = ctx.params, ctx.inputs["bench"]
        queries = bench.read("queries", columns=["query_id", "reference_id", "modification", "target_ids"]).to_pylist()
        state = {r["query_id"]: r for r in ctx.inputs["validated"].read("state").to_pylist()}
        good = sorted(s["text"] for s in state.values() if s["state"] == "passed" and s["level"] == 0 and s["text"])
        examples = random.Random(p.seed).sample(good, min(p.good_examples, len(good)))
        ctx.scratch.update(examples=examples, examples_text="\n".join(f"- {t}" for t in examples) or "(none available)",
                           paths=image_paths(bench), schema=texts_schema(p.levels))
        todo = [q for q in queries if state[q["query_id"]]["state"] == "pending"]
        ctx.scratch["n_items"] = len(todo)
        return todo

    def request(self, ctx: Context, q: dict) -> ChatRequest:
        p, paths = ctx.params, ctx.scratch["paths"]
        return ChatRequest(
            id=q["query_id"],
            prompt=render(p.template, modification=q["modification"], good_examples=ctx.scratch["examples_text"],
                          levels=str(p.levels)),
            images=(paths[q["reference_id"]], paths[q["target_ids"][0]]),
            sampling=p.sampling.model_copy(update={"seed": item_seed(p.sampling.seed, f"{q['query_id']}:regenerate")}),
            json_schema=ctx.scratch["schema"])

    def rows_to_tables(self, ctx: Context, items, results):
        rows = [row for r in results for row in _text_rows(r, ctx.params.levels)]
        return pa.Table.from_pylist(rows, schema=TEXTS)

    def stats(self, ctx: Context) -> dict:
        t = ctx.run.committed("data", columns=["id", "status", "error"]).to_pylist()
        failed_ids = sorted({r["id"] for r in t if r["status"] != "ok"})
        return {"items": ctx.scratch["n_items"], "texts": len(t), "ok": sum(r["status"] == "ok" for r in t),
                "failed_items": len(failed_ids), "examples": ctx.scratch["examples"],
                "failures": [{"id": r["id"], "error": (r["error"] or "")[:300]} for r in t if r["status"] != "ok"][:20]}


def regenerate(store: ArtifactStore, bench: Artifact, validated: Artifact, mllm_cfg: MLLMConfig, opts: RefineOptions,
               *, mllm: Lazy[MLLM] | None = None, progress: bool = True) -> Artifact:
    """`levels` new texts (coarse → fine, TEXTS rows sample 0..levels-1) for each triplet still "pending"
    after the level-0 round `validated`; a few passing original texts are shown as examples."""
    benchmark = check_benchmark(bench)
    template, source = load_template("refine_regenerate", benchmark, opts.regenerate_prompt)
    return execute(RefineRegenerate, store, {"bench": bench, "validated": validated},
                   RegenerateParams(mllm=mllm_cfg, sampling=opts.regenerate_sampling, template=template,
                                    levels=opts.levels, good_examples=opts.good_examples, seed=opts.seed),
                   RefineRuntime(shard_size=opts.shard_size, progress=progress, template_source=source,
                                 backend=mllm_cfg.backend), {"mllm": mllm})


def _text_rows(r: ChatResult, levels: int) -> list[dict]:
    base = {"id": r.id, "seed": r.seed, "seconds": r.seconds}
    if r.status != "ok":
        return [base | {"sample": i, "text": None, "raw": raw_answer(r.error), "status": "failed", "error": r.error}
                for i in range(levels)]
    texts = json.loads(r.text)["texts"]
    rows = []
    for i, t in enumerate(texts):
        t = " ".join(t.split())
        rows.append(base | {"sample": i, "text": t or None, "raw": r.text, "status": "ok" if t else "failed",
                            "error": None if t else "blank text"})
    return rows
