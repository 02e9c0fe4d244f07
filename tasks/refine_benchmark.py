"""Refined benchmarks (CoLLM §4.2, supplementary §8.2): validate every triplet of a CIRR / Fashion-IQ split with
an MLLM against hard negatives, regenerate the modification text of the ambiguous ones coarse → fine,
re-validate, and drop what stays ambiguous.

Stages (each keyed, sharded and resumable like every other stage; a validation round is a stage, so an
interrupted refinement resumes at the round and shard it stopped in):

    ingest ─► embed_images ─► refine_candidates ─► refine_validate(level 0: original text)
                                                        ├─► refine_regenerate (pending triplets: L texts)
                                                        └─► refine_validate(level 1) ─► … ─► refine_validate(level L)
                                                                                               └─► refine_benchmark

- refine_candidates: hard negatives = the `hard_negatives` gallery images most similar to the target
  (cosine of encoder image features), the target and the reference excluded.
- refine_validate: the MLLM sees the reference, the text and the candidates (target + negatives) in an order
  that differs per vote, and answers {"choice": k} (ChatRequest.json_schema). A text passes with
  >= min_correct correct votes. Refusals ("I apologize ...") and unparsable answers are recorded per vote; a
  refused triplet leaves the benchmark (CoLLM excludes them). Its "state" table says where each triplet stands
  after the round; the next round reads only that.
- refine_regenerate: one request per failed triplet (reference + target images, the old text, a few passing
  texts as examples) answering {"texts": [coarse, …, fine]}.
- refine_benchmark: the per-triplet decisions (Parquet), the refined annotation files in the benchmark's own
  format (written as artifact files under benchmark/), and the report (Markdown table + bar chart).

`export()` copies a refined benchmark out of the store into a data root that `cirflow ingest` / `evaluate`
read like the original.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import random
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import MLLM, ChatRequest, ChatResult
from cirflow.prompts import load_template, render
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.mllm import MLLMConfig
from cirflow.schemas.refine import CANDIDATES, DECISIONS, STATE, VOTES, RefineOptions
from cirflow.schemas.tables import TEXTS
from cirflow.storage import Artifact, ArtifactStore, begin, item_seed
from cirflow.tasks.lazy import Lazy

VERSION = "1"
SUPPORTED = ("cirr", "fashioniq")
RAW_MARK = "; raw text: "  # how check_json_answer appends a rejected answer to its error


# ------------------------------------------------------------------------------------- hard negatives


def candidates(store: ArtifactStore, bench: Artifact, image_emb: Artifact, opts: RefineOptions, *,
               shard_size: int = 4096) -> Artifact:
    """Per query: the `hard_negatives` gallery images most similar to the target (reference and target
    excluded). Queries whose target or features are missing get status "failed"."""
    _check_benchmark(bench)
    params = {"hard_negatives": opts.hard_negatives}
    run_ = begin(store, "refine_candidates", VERSION, params, inputs={"bench": bench, "image_emb": image_emb},
                 runtime={"shard_size": shard_size}, schemas={"data": CANDIDATES})
    if run_.cached:
        return run_.artifact
    queries = bench.read("queries", columns=["query_id", "reference_id", "target_ids"]).to_pylist()
    images = bench.read("images", columns=["image_id", "in_gallery"])
    in_gallery = dict(zip(images.column("image_id").to_pylist(), images.column("in_gallery").to_pylist()))
    ids, emb = image_emb.embeddings()
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    row_of = {i: r for r, i in enumerate(ids)}
    gallery = np.array([row_of[i] for i in ids if in_gallery.get(i)], dtype=np.int64)
    gallery_ids = [ids[r] for r in gallery]
    col_of = {i: c for c, i in enumerate(gallery_ids)}
    g = emb[gallery]
    for shard in run_.pending(len(queries), shard_size):
        t0 = time.perf_counter()
        rows = []
        for q in queries[shard.start:shard.stop]:
            target = q["target_ids"][0] if q["target_ids"] else None
            base = {"query_id": q["query_id"], "reference_id": q["reference_id"], "target_id": target,
                    "negatives": [], "similarities": [], "status": "failed", "error": None}
            if target is None:
                rows.append(base | {"error": "no target (split without ground truth)"})
                continue
            if target not in row_of:
                rows.append(base | {"error": f"no image features for target {target} (see embed_images failures)"})
                continue
            sims = g @ emb[row_of[target]]
            for excluded in (target, q["reference_id"]):
                if excluded in col_of:
                    sims[col_of[excluded]] = -np.inf
            k = min(opts.hard_negatives, int(np.isfinite(sims).sum()))
            top = np.argsort(-sims, kind="stable")[:k]
            if k < 1:
                rows.append(base | {"error": "gallery has no image besides the target and the reference"})
                continue
            rows.append(base | {"negatives": [gallery_ids[c] for c in top],
                                "similarities": [float(sims[c]) for c in top], "status": "ok"})
        run_.commit(shard, pa.Table.from_pylist(rows, schema=CANDIDATES), seconds=time.perf_counter() - t0)
    t = run_.committed("data", columns=["status"])
    failed = sum(s != "ok" for s in t.column("status").to_pylist())
    return run_.finish(stats={"queries": t.num_rows, "failed": failed, "gallery": len(gallery_ids)})


# ----------------------------------------------------------------------------------------- validation


def choice_schema(n: int) -> dict:
    return {"title": "choice", "type": "object", "additionalProperties": False, "required": ["choice"],
            "properties": {"choice": {"type": "integer", "enum": list(range(1, n + 1))}}}


def validate(store: ArtifactStore, bench: Artifact, cands: Artifact, mllm_cfg: MLLMConfig, opts: RefineOptions, *,
             level: int = 0, previous: Artifact | None = None, texts: Artifact | None = None,
             mllm: Lazy[MLLM] | None = None, progress: bool = True) -> Artifact:
    """One validation round. Level 0 tests every triplet's original text; level k >= 1 tests the k-th
    regenerated text (`texts`, sample k-1) of the triplets still "pending" in `previous`."""
    benchmark = _check_benchmark(bench)
    if level > 0 and (previous is None or texts is None):
        raise ValueError("a re-validation round (level >= 1) needs the previous round and the regenerated texts")
    template, source = load_template("refine_validate", benchmark, opts.validate_prompt)
    params = {"mllm": mllm_cfg.key_fields(), "sampling": opts.validate_sampling, "template": template,
              "level": level, "votes": opts.votes, "min_correct": opts.min_correct, "seed": opts.seed,
              "refusals": sorted(p.lower() for p in opts.refusal_prefixes)}
    inputs = {"bench": bench, "candidates": cands}
    if level > 0:
        inputs |= {"previous": previous, "texts": texts}
    run_ = begin(store, "refine_validate", VERSION, params, inputs=inputs,
                 runtime={"shard_size": opts.shard_size, "template_source": source, "backend": mllm_cfg.backend},
                 schemas={"votes": VOTES, "state": STATE})
    if run_.cached:
        return run_.artifact

    queries = bench.read("queries", columns=["query_id", "reference_id", "modification"]).to_pylist()
    paths = _paths(bench)
    cand = {r["query_id"]: r for r in cands.read().to_pylist()}
    prev = {r["query_id"]: r for r in previous.read("state").to_pylist()} if previous is not None else {}
    new_text = _texts_at(texts, level - 1) if texts is not None else {}
    todo: list[tuple[dict, str]] = []
    for q in queries:
        qid = q["query_id"]
        if level == 0:
            if cand[qid]["status"] == "ok":
                todo.append((q, q["modification"]))
        elif prev[qid]["state"] == "pending" and qid in new_text:
            todo.append((q, new_text[qid]))

    with ExitStack() as stack:
        backend = mllm or stack.enter_context(Lazy(lambda: load_mllm(mllm_cfg)))
        shards = list(run_.pending(len(todo), opts.shard_size, table="votes"))
        for shard in tqdm(shards, desc=f"refine_validate[{level}]", unit="shard", disable=not progress or len(shards) < 2):
            t0 = time.perf_counter()
            requests, meta = [], []
            for q, text in todo[shard.start:shard.stop]:
                c = cand[q["query_id"]]
                shown = [c["target_id"], *c["negatives"]]
                for vote, order in enumerate(_orders(len(shown), opts.votes,
                                                     item_seed(opts.seed, f"{q['query_id']}:{level}:order"))):
                    ids = [shown[i] for i in order]
                    seed = item_seed(opts.validate_sampling.seed, f"{q['query_id']}:{level}:{vote}")
                    requests.append(ChatRequest(
                        id=f"{q['query_id']}:{vote}",
                        prompt=render(template, modification=text, n=str(len(ids))),
                        images=(paths[q["reference_id"]], *(paths[i] for i in ids)),
                        sampling=opts.validate_sampling.model_copy(update={"seed": seed}),
                        json_schema=choice_schema(len(ids))))
                    meta.append((q["query_id"], vote, text, ids, ids.index(c["target_id"]) + 1))
            results = backend.get().generate(requests, progress=progress) if requests else []
            rows = [_vote_row(r, level, *m, opts.refusal_prefixes) for r, m in zip(results, meta)]
            run_.commit(shard, pa.Table.from_pylist(rows, schema=VOTES), seconds=time.perf_counter() - t0)

    votes = run_.committed("votes").to_pylist()
    state = _state_after(queries, cand, prev, votes, level, opts)
    run_.write_table("state", pa.Table.from_pylist(state, schema=STATE))
    counts: dict[str, int] = {}
    for s in state:
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    by_status: dict[str, int] = {}
    for v in votes:
        by_status[v["status"]] = by_status.get(v["status"], 0) + 1
    tested = {v["query_id"] for v in votes}
    passed_now = sum(1 for s in state if s["state"] == "passed" and s["level"] == level)
    secs = [v["seconds"] for v in votes if v["seconds"] is not None]
    return run_.finish(stats={
        "level": level, "tested": len(tested), "passed": passed_now, "votes": len(votes), "vote_status": by_status,
        "states": counts,
        "failures": [{"id": v["query_id"], "vote": v["vote"], "status": v["status"], "error": (v["error"] or "")[:300]}
                     for v in votes if v["status"] != "ok"][:20],
        "model_seconds_per_item": round(sum(secs) / len(secs), 4) if secs else None})


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
    raw = _raw_answer(result.error)
    if raw is None:
        return "failed", None
    head = raw.strip().lstrip("\"'` *#>").lower()
    if any(head.startswith(p.lower()) for p in refusal_prefixes):
        return "refused", raw
    return "unparsable", raw


def _raw_answer(error: str | None) -> str | None:
    if not error or RAW_MARK not in error:
        return None
    tail = error.rsplit(RAW_MARK, 1)[1]
    try:
        raw = ast.literal_eval(tail)
    except (ValueError, SyntaxError):
        return tail
    return raw if isinstance(raw, str) else None


def _vote_row(r: ChatResult, level: int, qid: str, vote: int, text: str, order: list[str], target_pos: int,
              refusal_prefixes: list[str]) -> dict:
    status, raw = classify(r, refusal_prefixes)
    choice = json.loads(r.text)["choice"] if status == "ok" else None
    return {"query_id": qid, "level": level, "vote": vote, "text": text, "order": order,
            "target_position": target_pos, "choice": int(choice) if choice is not None else None,
            "correct": choice is not None and int(choice) == target_pos, "status": status,
            "error": None if status == "ok" else r.error, "raw": raw, "seed": r.seed, "seconds": r.seconds}


def _state_after(queries: list[dict], cand: dict, prev: dict, votes: list[dict], level: int,
                 opts: RefineOptions) -> list[dict]:
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


# --------------------------------------------------------------------------------------- regeneration


def texts_schema(levels: int) -> dict:
    return {"title": "regenerated", "type": "object", "additionalProperties": False, "required": ["texts"],
            "properties": {"texts": {"type": "array", "minItems": levels, "maxItems": levels,
                                     "items": {"type": "string", "minLength": 1}}}}


def regenerate(store: ArtifactStore, bench: Artifact, validated: Artifact, mllm_cfg: MLLMConfig, opts: RefineOptions,
               *, mllm: Lazy[MLLM] | None = None, progress: bool = True) -> Artifact:
    """`levels` new texts (coarse → fine, TEXTS rows sample 0..levels-1) for each triplet still "pending"
    after the level-0 round `validated`; a few passing original texts are shown as examples."""
    benchmark = _check_benchmark(bench)
    template, source = load_template("refine_regenerate", benchmark, opts.regenerate_prompt)
    params = {"mllm": mllm_cfg.key_fields(), "sampling": opts.regenerate_sampling, "template": template,
              "levels": opts.levels, "good_examples": opts.good_examples, "seed": opts.seed}
    run_ = begin(store, "refine_regenerate", VERSION, params, inputs={"bench": bench, "validated": validated},
                 runtime={"shard_size": opts.shard_size, "template_source": source, "backend": mllm_cfg.backend},
                 schemas={"data": TEXTS})
    if run_.cached:
        return run_.artifact
    queries = bench.read("queries", columns=["query_id", "reference_id", "modification", "target_ids"]).to_pylist()
    state = {r["query_id"]: r for r in validated.read("state").to_pylist()}
    todo = [q for q in queries if state[q["query_id"]]["state"] == "pending"]
    good = sorted(s["text"] for s in state.values() if s["state"] == "passed" and s["level"] == 0 and s["text"])
    examples = random.Random(opts.seed).sample(good, min(opts.good_examples, len(good)))
    examples_text = "\n".join(f"- {t}" for t in examples) or "(none available)"
    paths = _paths(bench)
    schema = texts_schema(opts.levels)
    with ExitStack() as stack:
        backend = mllm or stack.enter_context(Lazy(lambda: load_mllm(mllm_cfg)))
        shards = list(run_.pending(len(todo), opts.shard_size))
        for shard in tqdm(shards, desc="refine_regenerate", unit="shard", disable=not progress or len(shards) < 2):
            t0 = time.perf_counter()
            rows_in = todo[shard.start:shard.stop]
            requests = [ChatRequest(
                id=q["query_id"],
                prompt=render(template, modification=q["modification"], good_examples=examples_text,
                              levels=str(opts.levels)),
                images=(paths[q["reference_id"]], paths[q["target_ids"][0]]),
                sampling=opts.regenerate_sampling.model_copy(update={
                    "seed": item_seed(opts.regenerate_sampling.seed, f"{q['query_id']}:regenerate")}),
                json_schema=schema) for q in rows_in]
            results = backend.get().generate(requests, progress=progress) if requests else []
            rows = [row for r in results for row in _text_rows(r, opts)]
            run_.commit(shard, pa.Table.from_pylist(rows, schema=TEXTS), seconds=time.perf_counter() - t0)
    t = run_.committed("data", columns=["id", "status", "error"]).to_pylist()
    failed_ids = sorted({r["id"] for r in t if r["status"] != "ok"})
    return run_.finish(stats={"items": len(todo), "texts": len(t), "ok": sum(r["status"] == "ok" for r in t),
                              "failed_items": len(failed_ids), "examples": examples,
                              "failures": [{"id": r["id"], "error": (r["error"] or "")[:300]}
                                           for r in t if r["status"] != "ok"][:20]})


def _text_rows(r: ChatResult, opts: RefineOptions) -> list[dict]:
    base = {"id": r.id, "seed": r.seed, "seconds": r.seconds}
    if r.status != "ok":
        _, raw = classify(r, opts.refusal_prefixes)
        return [base | {"sample": i, "text": None, "raw": raw, "status": "failed", "error": r.error}
                for i in range(opts.levels)]
    texts = json.loads(r.text)["texts"]
    rows = []
    for i, t in enumerate(texts):
        t = " ".join(t.split())
        rows.append(base | {"sample": i, "text": t or None, "raw": r.text, "status": "ok" if t else "failed",
                            "error": None if t else "blank text"})
    return rows


def _texts_at(texts: Artifact, sample: int) -> dict[str, str]:
    t = texts.read(columns=["id", "sample", "text", "status"]).to_pylist()
    return {r["id"]: r["text"] for r in t if r["sample"] == sample and r["status"] == "ok" and r["text"]}


# ------------------------------------------------------------------------------------ the benchmark


def build(store: ArtifactStore, bench: Artifact, cands: Artifact, rounds: list[Artifact],
          regenerated: Artifact | None) -> Artifact:
    """Decisions per triplet, the refined annotation files (benchmark/…) and the report. `rounds` are the
    validation artifacts in level order (level 0 first); `regenerated` is None when nothing needed it."""
    benchmark = _check_benchmark(bench)
    p, stats = bench.manifest.params, bench.manifest.stats
    files = stats.get("annotation_files") or {}
    cap_path, split_path = files["captions"]["path"], files["image_split"]["path"]
    cap_bytes, split_bytes = _read_bytes(cap_path), _read_bytes(split_path)
    params = {"benchmark": benchmark, "split": p.get("split"), "category": p.get("category"),
              "levels": len(rounds) - 1,
              "annotations": {"captions": _sha(cap_bytes), "image_split": _sha(split_bytes)}}
    inputs = {"bench": bench, "candidates": cands} | {f"round{i}": a for i, a in enumerate(rounds)}
    if regenerated is not None:
        inputs["regenerated"] = regenerated
    run_ = begin(store, "refine_benchmark", VERSION, params, inputs=inputs,
                 runtime={"captions": cap_path, "image_split": split_path}, schemas={"data": DECISIONS})
    if run_.cached:
        return run_.artifact

    queries = bench.read("queries", columns=["query_id", "reference_id", "modification", "target_ids"]).to_pylist()
    cand = {r["query_id"]: r for r in cands.read().to_pylist()}
    final = {r["query_id"]: r for r in rounds[-1].read("state").to_pylist()}
    votes = [v for a in rounds for v in a.read("votes", columns=["query_id", "status"]).to_pylist()]
    regen: dict[str, list[str]] = {}
    regen_failed: set[str] = set()
    if regenerated is not None:
        for r in sorted(regenerated.read(columns=["id", "sample", "text", "status"]).to_pylist(),
                        key=lambda r: (r["id"], r["sample"])):
            if r["status"] == "ok":
                regen.setdefault(r["id"], []).append(r["text"])
            else:
                regen_failed.add(r["id"])
    tally: dict[str, dict[str, int]] = {}
    for v in votes:
        t = tally.setdefault(v["query_id"], {"refused": 0, "unparsable": 0, "failed": 0, "ok": 0})
        t[v["status"]] += 1

    decisions, new_index = [], 0
    for q in queries:
        qid, s = q["query_id"], final[q["query_id"]]
        if s["state"] == "passed":
            decision, reason, level, text = ("kept" if s["level"] == 0 else "revised"), None, s["level"], s["text"]
        else:
            decision, level, text = "removed", None, None
            reason = {"refused": "refused", "error": "no_candidates"}.get(s["state"])
            if reason is None:  # still pending after the last round
                reason = "regeneration_failed" if qid in regen_failed or qid not in regen else "unresolved"
        t = tally.get(qid, {})
        decisions.append({
            "query_id": qid, "reference_id": q["reference_id"], "target_id": q["target_ids"][0] if q["target_ids"] else None,
            "decision": decision, "reason": reason, "level": level, "original_text": q["modification"],
            "final_text": text, "regenerated": regen.get(qid, []), "negatives": cand[qid]["negatives"] or [],
            "correct": s["correct"], "refusals": t.get("refused", 0), "unparsable": t.get("unparsable", 0),
            "failed": t.get("failed", 0), "new_index": new_index if decision != "removed" else None})
        if decision != "removed":
            new_index += 1
    table = pa.Table.from_pylist(decisions, schema=DECISIONS)
    run_.write_table("data", table)

    by_id = {d["query_id"]: d for d in decisions}
    cap_name, split_name = Path(cap_path).name, Path(split_path).name
    refined = _refined_captions(benchmark, json.loads(cap_bytes), by_id)
    # each benchmark's own formatting: CIRR compact, Fashion-IQ 4-space indented
    run_.write_file(f"benchmark/captions/{cap_name}",
                    (json.dumps(refined) if benchmark == "cirr" else json.dumps(refined, indent=4)).encode())
    run_.write_file(f"benchmark/image_splits/{split_name}", split_bytes)
    label = "/".join(x for x in (benchmark, p.get("category")) if x)
    counts = count_decisions(decisions)
    run_.write_file("counts.json", json.dumps({label: counts}, indent=2).encode())
    run_.write_file("report.md", report_markdown({label: counts}).encode())
    run_.write_file("refinement.png", bar_chart({label: counts}))
    return run_.finish(stats={"label": label, **counts, "captions_file": cap_name})


def _refined_captions(benchmark: str, records: list[dict], by_id: dict[str, dict]) -> list[dict]:
    """The original records minus the removed ones, revised texts in place; every other field untouched."""
    out = []
    for i, rec in enumerate(records):
        qid = str(rec["pairid"]) if benchmark == "cirr" else str(i)
        d = by_id[qid]
        if d["decision"] == "removed":
            continue
        rec = dict(rec)
        if d["decision"] == "revised":
            if benchmark == "cirr":
                rec["caption"] = d["final_text"]
            else:  # Fashion-IQ has two captions per triplet; the loader drops an empty one when joining
                rec["captions"] = [d["final_text"], ""]
        out.append(rec)
    return out


def count_decisions(decisions: list[dict]) -> dict:
    n = len(decisions)
    c = {"total": n, "kept": 0, "revised": 0, "removed": 0, "revised_by_level": {}, "removed_by_reason": {}}
    for d in decisions:
        c[d["decision"]] += 1
        if d["decision"] == "revised":
            c["revised_by_level"][str(d["level"])] = c["revised_by_level"].get(str(d["level"]), 0) + 1
        if d["decision"] == "removed":
            c["removed_by_reason"][d["reason"]] = c["removed_by_reason"].get(d["reason"], 0) + 1
    return c


def _rows(counts: dict) -> list[tuple[str, int]]:
    rows = [("kept", counts["kept"])]
    rows += [(f"revised (text {lvl})", k) for lvl, k in sorted(counts["revised_by_level"].items(), key=lambda x: int(x[0]))]
    rows += [(f"removed ({why})", k) for why, k in sorted(counts["removed_by_reason"].items())]
    return rows


def report_markdown(groups: dict[str, dict]) -> str:
    """CoLLM figure 5 as a table: per benchmark, kept / revised / removed counts and shares."""
    lines = ["| benchmark | triplets | kept | revised | removed |", "|---|--:|--:|--:|--:|"]
    for label, c in groups.items():
        pct = (lambda k: f"{k} ({100 * k / c['total']:.1f}%)") if c["total"] else str
        lines.append(f"| {label} | {c['total']} | {pct(c['kept'])} | {pct(c['revised'])} | {pct(c['removed'])} |")
    lines += ["", "| benchmark | outcome | triplets | share |", "|---|---|--:|--:|"]
    for label, c in groups.items():
        for name, k in _rows(c):
            lines.append(f"| {label} | {name} | {k} | {100 * k / c['total']:.1f}% |" if c["total"] else
                         f"| {label} | {name} | {k} | |")
    return "\n".join(lines) + "\n"


def bar_chart(groups: dict[str, dict]) -> bytes:
    """One stacked horizontal bar per benchmark: kept, revised (per text level), removed (per reason), in %."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(n for c in groups.values() for n, _ in _rows(c)))
    palette = {"kept": "#4c9a2a"}
    blues = ["#9ecae1", "#6baed6", "#3182bd", "#08519c", "#08306b", "#041f4a"]
    reds = ["#fc9272", "#ef3b2c", "#a50f15", "#67000d"]
    for n in names:
        if n.startswith("revised"):
            palette[n] = blues[min(len([m for m in palette if m.startswith("revised")]), len(blues) - 1)]
        elif n.startswith("removed"):
            palette[n] = reds[min(len([m for m in palette if m.startswith("removed")]), len(reds) - 1)]
    fig = Figure(figsize=(10, 1.8 + 0.6 * len(groups)), dpi=100)
    ax = fig.add_subplot()
    labels = list(groups)
    for y, label in enumerate(labels):
        c, left = groups[label], 0.0
        vals = dict(_rows(c))
        for n in names:
            share = 100 * vals.get(n, 0) / c["total"] if c["total"] else 0.0
            ax.barh(y, share, left=left, color=palette[n], label=n if y == 0 else None)
            if share >= 6:
                ax.text(left + share / 2, y, f"{share:.0f}%", ha="center", va="center", fontsize=8)
            left += share
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()  # first benchmark on top
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of triplets")
    ax.set_title("Benchmark refinement (CoLLM fig. 5)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- export


def export(builds: dict[str, tuple[Artifact, Artifact]], out_dir: str | os.PathLike, *, link_images: bool = True) -> dict:
    """Write refined benchmarks out of the store: `out_dir` becomes an official-layout data root
    (captions/, image_splits/, and links to the original image folders when local) plus decisions.parquet
    (a `group` column added), report.md, refinement.png and counts.json. `builds` maps a label to
    (refine_benchmark artifact, its ingest artifact). Returns what was written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, tables, counts, links = [], [], {}, []
    for label, (art, bench) in builds.items():
        for f in art.manifest.files:
            if f.name.startswith("benchmark/"):
                dest = out / f.name.removeprefix("benchmark/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(dest, art.read_file(f.name))
                written.append(str(dest))
        t = art.read("data")
        tables.append(t.append_column("group", pa.array([label] * t.num_rows, pa.string())))
        counts[label] = json.loads(art.read_file("counts.json"))[art.manifest.stats["label"]]
        if link_images:
            links += _link_images(bench, out)
    pq.write_table(pa.concat_tables(tables), out / "decisions.parquet", compression="zstd")
    (out / "counts.json").write_text(json.dumps(counts, indent=2))
    (out / "report.md").write_text("# Refined benchmark\n\n" + report_markdown(counts))
    (out / "refinement.png").write_bytes(bar_chart(counts))
    return {"out_dir": str(out), "annotation_files": written, "image_links": links, "counts": counts,
            "decisions": str(out / "decisions.parquet"), "report": str(out / "report.md"),
            "chart": str(out / "refinement.png")}


def _link_images(bench: Artifact, out: Path) -> list[str]:
    """Symlink the top folders under which the original images lie (CIRR dev/, Fashion-IQ images/) into `out`,
    so the loader's image-root rule finds them. Only for local files; never replaces an existing path."""
    root = bench.manifest.stats.get("image_root")
    if not root or "://" in str(root) and not str(root).startswith("file://"):
        return []
    root_p = Path(str(root).removeprefix("file://"))
    tops = set()
    for path in bench.read("images", columns=["path"]).column("path").to_pylist():
        try:
            rel = Path(path).relative_to(root_p)
        except ValueError:
            continue
        if len(rel.parts) > 1:
            tops.add(rel.parts[0])
    made = []
    for top in sorted(tops):
        link, target = out / top, root_p / top
        if target.is_dir() and not link.exists() and not link.is_symlink() and link.resolve() != target.resolve():
            link.symlink_to(target, target_is_directory=True)
            made.append(str(link))
    return made


# ---------------------------------------------------------------------------------------------- helpers


def _check_benchmark(bench: Artifact) -> str:
    name = bench.manifest.params["benchmark"]
    if name not in SUPPORTED:
        raise CirflowError(f"refinement supports {', '.join(SUPPORTED)}, not {name}")
    return name


def _paths(bench: Artifact) -> dict[str, str]:
    t = bench.read("images", columns=["image_id", "path"])
    return dict(zip(t.column("image_id").to_pylist(), t.column("path").to_pylist()))


def _read_bytes(path: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CirflowError(f"refine_benchmark: the annotation file {path} recorded at ingest is gone") from None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
