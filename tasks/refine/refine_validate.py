"""refine_validate: one validation round of the refinement (CoLLM supp. §8.2). The MLLM sees the reference,
the text and the candidates (target + negatives) side by side in one numbered strip image
(tasks/refine/candidate_strip.py), in an order that differs per vote, and answers {"choice": k}, or -1 for
"none of them / several equally" (CoLLM table 24; ChatRequest.json_schema). A text passes with >= min_correct
correct votes. Refusals ("I apologize ...") and unparsable answers are recorded per vote; a refused triplet
leaves the benchmark (CoLLM excludes them). Its "state" table says where each triplet stands after the round;
the next round reads only that. Level 0 tests the original texts, level k the k-th regenerated text.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa

from cirflow.models.mllm.protocol import MLLM, ChatRequest, ChatResult
from cirflow.prompts import load_template, render
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.refine import STATE, VOTES, RefineOptions
from cirflow.storage import Artifact, ArtifactStore, item_seed
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.refine.candidate_strip import strip_file
from cirflow.tasks.refine.common import RefineRuntime, RefineStage, check_benchmark, image_paths, raw_answer
from cirflow.tasks.stage import Context, MLLMStage, Params, execute

NONE_OF_THEM = -1  # CoLLM table 24: "-1" when several candidates match equally or the target is not among them


def choice_schema(n: int) -> dict:
    return {"title": "choice", "type": "object", "additionalProperties": False, "required": ["choice"],
            "properties": {"choice": {"type": "integer", "enum": [*range(1, n + 1), NONE_OF_THEM]}}}


class ValidateParams(Params):
    mllm: MLLMConfig
    sampling: SamplingParams
    template: str
    level: int
    votes: int
    min_correct: int
    seed: int
    refusals: list[str]
    cell: int  # pixels per candidate in the strip (tasks/refine/candidate_strip.py)


class RefineValidate(RefineStage, MLLMStage):
    """One item per (triplet, vote): a vote is one request and one `votes` row; the `state` table (where each
    triplet stands after this round) is written once every vote is in."""

    name, version = "refine_validate", "2"  # 2: the candidates as one strip image (supp. 8.2)
    Params, Runtime = ValidateParams, RefineRuntime
    inputs = ("bench", "candidates", "previous", "texts")
    outputs = {"votes": VOTES, "state": STATE}
    table = "votes"
    shardable = False

    def items(self, ctx: Context):
        p, i = ctx.params, ctx.inputs
        queries = i["bench"].read("queries", columns=["query_id", "reference_id", "modification"]).to_pylist()
        cand = {r["query_id"]: r for r in i["candidates"].read().to_pylist()}
        prev = {r["query_id"]: r for r in i["previous"].read("state").to_pylist()} if "previous" in i else {}
        new_text = _texts_at(i["texts"], p.level - 1) if "texts" in i else {}
        ctx.scratch.update(queries=queries, cand=cand, prev=prev, paths=image_paths(i["bench"]))
        work = []
        for q in queries:
            qid = q["query_id"]
            if p.level == 0:
                if cand[qid]["status"] != "ok":
                    continue
                text = q["modification"]
            elif prev[qid]["state"] == "pending" and qid in new_text:
                text = new_text[qid]
            else:
                continue
            c = cand[qid]
            shown = [c["target_id"], *c["negatives"]]
            for vote, order in enumerate(_orders(len(shown), p.votes, item_seed(p.seed, f"{qid}:{p.level}:order"))):
                ids = [shown[k] for k in order]
                work.append((q, vote, text, ids, ids.index(c["target_id"]) + 1))
        return work

    def request(self, ctx: Context, item) -> ChatRequest:
        q, vote, text, ids, _ = item
        p, paths = ctx.params, ctx.scratch["paths"]
        return ChatRequest(
            id=f"{q['query_id']}:{vote}", prompt=render(p.template, modification=text, n=str(len(ids))),
            # supp. 8.2: the candidates "concatenated horizontally", numbered 1..n left to right
            images=(paths[q["reference_id"]], strip_file(ctx, [paths[i] for i in ids], p.cell)),
            sampling=p.sampling.model_copy(update={
                "seed": item_seed(p.sampling.seed, f"{q['query_id']}:{p.level}:{vote}")}),
            json_schema=choice_schema(len(ids)))

    def row(self, ctx: Context, item, r) -> dict:
        q, vote, text, ids, target_pos = item
        return _vote_row(r, ctx.params.level, q["query_id"], vote, text, ids, target_pos, ctx.params.refusals)

    def produce(self, ctx: Context) -> None:
        super().produce(ctx)
        votes = ctx.run.committed("votes").to_pylist()
        state = _state_after(ctx.scratch["queries"], ctx.scratch["cand"], ctx.scratch["prev"], votes, ctx.params.level,
                             ctx.params)
        ctx.write_table("state", pa.Table.from_pylist(state, schema=STATE))
        ctx.scratch.update(votes=votes, state=state)

    def stats(self, ctx: Context) -> dict:
        level, votes, state = ctx.params.level, ctx.scratch["votes"], ctx.scratch["state"]
        counts: dict[str, int] = {}
        for s in state:
            counts[s["state"]] = counts.get(s["state"], 0) + 1
        by_status: dict[str, int] = {}
        for v in votes:
            by_status[v["status"]] = by_status.get(v["status"], 0) + 1
        secs = [v["seconds"] for v in votes if v["seconds"] is not None]
        return {
            "level": level, "tested": len({v["query_id"] for v in votes}),
            "passed": sum(1 for s in state if s["state"] == "passed" and s["level"] == level), "votes": len(votes),
            "vote_status": by_status, "none_of_them_votes": sum(v["choice"] == NONE_OF_THEM for v in votes),
            "states": counts,
            "failures": [{"id": v["query_id"], "vote": v["vote"], "status": v["status"],
                          "error": (v["error"] or "")[:300]} for v in votes if v["status"] != "ok"][:20],
            "model_seconds_per_item": round(sum(secs) / len(secs), 4) if secs else None}


def validate(store: ArtifactStore, bench: Artifact, cands: Artifact, mllm_cfg: MLLMConfig, opts: RefineOptions, *,
             level: int = 0, previous: Artifact | None = None, texts: Artifact | None = None,
             mllm: Lazy[MLLM] | None = None, progress: bool = True) -> Artifact:
    """One validation round. Level 0 tests every triplet's original text; level k >= 1 tests the k-th
    regenerated text (`texts`, sample k-1) of the triplets still "pending" in `previous`."""
    benchmark = check_benchmark(bench)
    if level > 0 and (previous is None or texts is None):
        raise ValueError("a re-validation round (level >= 1) needs the previous round and the regenerated texts")
    template, source = load_template("refine_validate", benchmark, opts.validate_prompt)
    params = ValidateParams(mllm=mllm_cfg, sampling=opts.validate_sampling, template=template, level=level,
                            votes=opts.votes, min_correct=opts.min_correct, seed=opts.seed,
                            refusals=sorted(p.lower() for p in opts.refusal_prefixes), cell=opts.candidate_cell)
    inputs = {"bench": bench, "candidates": cands, "previous": previous if level > 0 else None,
              "texts": texts if level > 0 else None}
    # shards hold `shard_size` triplets' votes, as the triplet-sharded stage did
    return execute(RefineValidate, store, inputs, params,
                   RefineRuntime(shard_size=opts.shard_size * opts.votes, progress=progress, template_source=source,
                                 backend=mllm_cfg.backend), {"mllm": mllm})


def _orders(n: int, votes: int, seed: int) -> list[list[int]]:
    """`votes` candidate orders, pairwise different while there are enough permutations (n! >= votes)."""
    rng = random.Random(seed)
    distinct = int(np.prod(range(1, n + 1))) >= votes
    out: list[list[int]] = []
    while len(out) < votes:
        order = list(range(n))
        rng.shuffle(order)
        if not distinct or order not in out:
            out.append(order)
    return out


def classify(result: ChatResult, refusal_prefixes: list[str]) -> tuple[str, str | None]:
    """(status, raw answer) of a failed or passed request: "ok", "refused" (the answer opens like a refusal),
    "unparsable" (an answer that is not the asked JSON), "failed" (no answer: transport, server, image)."""
    if result.status == "ok":
        return "ok", result.text
    raw = raw_answer(result.error)
    if raw is None:
        return "failed", None
    head = raw.strip().lstrip("\"'` *#>").lower()
    if any(head.startswith(p.lower()) for p in refusal_prefixes):
        return "refused", raw
    return "unparsable", raw


def _vote_row(r: ChatResult, level: int, qid: str, vote: int, text: str, order: list[str], target_pos: int,
              refusal_prefixes: list[str]) -> dict:
    status, raw = classify(r, refusal_prefixes)
    choice = json.loads(r.text)["choice"] if status == "ok" else None
    # NONE_OF_THEM is an answer, not a failure: the vote is not correct, so a text the model finds ambiguous
    # fails like a wrong pick and is regenerated, then removed if it stays ambiguous (CoLLM supp. 8.2)
    return {"query_id": qid, "level": level, "vote": vote, "text": text, "order": order,
            "target_position": target_pos, "choice": int(choice) if choice is not None else None,
            "correct": choice is not None and int(choice) == target_pos, "status": status,
            "error": None if status == "ok" else r.error, "raw": raw, "seed": r.seed, "seconds": r.seconds}


def _state_after(queries: list[dict], cand: dict, prev: dict, votes: list[dict], level: int,
                 opts: RefineOptions | ValidateParams) -> list[dict]:
    by_query: dict[str, list[dict]] = {}
    for v in votes:
        by_query.setdefault(v["query_id"], []).append(v)
    out = []
    for q in queries:
        qid = q["query_id"]
        p = prev.get(qid) or {"state": "pending", "level": None, "text": None, "correct": []}
        if level == 0 and cand[qid]["status"] != "ok":
            p = {"state": "error", "level": None, "text": None, "correct": []}
        vs = by_query.get(qid)
        correct = list(p["correct"] or [])
        row = {"query_id": qid, "state": p["state"], "level": p["level"], "text": p["text"]}
        if vs is None or p["state"] != "pending":
            out.append(row | {"correct": correct + [-1]})
            continue
        n_ok = sum(v["correct"] for v in vs)
        if any(v["status"] == "refused" for v in vs):
            row["state"] = "refused"
        elif n_ok >= opts.min_correct:
            row |= {"state": "passed", "level": level, "text": vs[0]["text"]}
        out.append(row | {"correct": correct + [n_ok]})
    return out


def _texts_at(texts: Artifact, sample: int) -> dict[str, str]:
    t = texts.read(columns=["id", "sample", "text", "status"]).to_pylist()
    return {r["id"]: r["text"] for r in t if r["sample"] == sample and r["status"] == "ok" and r["text"]}
