"""refine_benchmark: the refined benchmark (CoLLM §4.2, supp. §8.2) from the validation rounds: the per-triplet
decisions (Parquet), the refined annotation files in the benchmark's own format (written as artifact files under
benchmark/), and the report (Markdown table + bar chart, CoLLM figure 5).

`export()` copies a refined benchmark out of the store into a data root that `cirflow ingest` / `evaluate`
read like the original.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cirflow.schemas.errors import CirflowError
from cirflow.schemas.refine import DECISIONS
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.refine.common import RefineStage, check_benchmark
from cirflow.tasks.stage import Context, Params, Runtime, execute


class BuildParams(Params):
    benchmark: str
    split: str | None
    category: str | None
    levels: int
    annotations: dict  # sha256 of the original annotation files: an edited file is a new key


class RefineBenchmarkRuntime(Runtime):
    captions: str
    image_split: str


class RefineBenchmarkStage(RefineStage):
    """Inputs: bench, candidates, round0..roundL (validation rounds in level order), and `regenerated` when
    anything needed it."""

    name, version = "refine_benchmark", "1"
    Params, Runtime = BuildParams, RefineBenchmarkRuntime
    inputs = ("bench", "candidates", "round0")
    outputs = {"data": DECISIONS}

    def produce(self, ctx: Context) -> None:
        bench, cands, regenerated = ctx.inputs["bench"], ctx.inputs["candidates"], ctx.inputs.get("regenerated")
        rounds = [ctx.inputs[f"round{i}"] for i in range(ctx.params.levels + 1)]
        benchmark, p = ctx.params.benchmark, bench.manifest.params
        cap_path, split_path = ctx.runtime.captions, ctx.runtime.image_split
        cap_bytes, split_bytes = _read_bytes(cap_path), _read_bytes(split_path)
        run_ = ctx.run
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
        ctx.write_table("data", table)

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
        ctx.scratch["stats"] = {"label": label, **counts, "captions_file": cap_name}

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch["stats"]


def build(store: ArtifactStore, bench: Artifact, cands: Artifact, rounds: list[Artifact],
          regenerated: Artifact | None) -> Artifact:
    """Decisions per triplet, the refined annotation files (benchmark/…) and the report. `rounds` are the
    validation artifacts in level order (level 0 first); `regenerated` is None when nothing needed it."""
    benchmark = check_benchmark(bench)
    p, stats = bench.manifest.params, bench.manifest.stats
    files = stats.get("annotation_files") or {}
    cap_path, split_path = files["captions"]["path"], files["image_split"]["path"]
    params = BuildParams(benchmark=benchmark, split=p.get("split"), category=p.get("category"),
                         levels=len(rounds) - 1,
                         annotations={"captions": _sha(_read_bytes(cap_path)),
                                      "image_split": _sha(_read_bytes(split_path))})
    inputs = {"bench": bench, "candidates": cands, "regenerated": regenerated} | {
        f"round{i}": a for i, a in enumerate(rounds)}
    return execute(RefineBenchmarkStage, store, inputs, params, RefineBenchmarkRuntime(captions=cap_path, image_split=split_path))


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
