"""The run folder and `report.html` of a training-data build (`cirflow build mtcir|instructcir|mvft`).

A build writes a run folder like a benchmark run (`<output_dir>/<name>/<stamp>/`: summary.json naming every
artifact key, stages.md, config.resolved.yaml, report.html + thumbs/), so `cirflow store gc` keeps its artifacts
and `cirflow report RUN_DIR` rebuilds its page. The page shows the stage table with kept / failed counts and a
sample of the build's triplets: reference and target thumbnails with the texts the build produced for them
(captions, MTCIR modification texts, InstructCIR reformulations, MVFT modification + target text), and every
failed row (unreadable file, failed caption, failed or filtered text) with its reason under the "failures" filter.
"""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from pathlib import Path

from cirflow.flows.report_html.page import COMMON_SCRIPT, CSS, PAGE_SIZE, _table, failed_section
from cirflow.flows.report_html.thumbs import Thumbs
from cirflow.storage import Artifact, ArtifactStore

REPORT = "report.html"
TEXT_STAGES = ("mtcir_texts", "instructcir_texts", "mvft_texts")
SAMPLE_KEPT = 500  # kept triplets on the page: enough to judge a build, light at millions of triplets
MAX_FAILED = 5000  # failed rows on the page; their count in the stage table is always the full one
BUILD_CSS = "tr.triplet.failed td{background:#fff6f4}td.q .meta{font-size:12px}"  # failed rows stand out
NOTE_STATS = ("listed", "skipped_not_image", "groups", "pairs", "paired_images", "requests", "texts", "categories")


# ------------------------------------------------------------------------------------------------ stage table


def kept_failed(stage: str, stats: dict) -> tuple[int | None, int | None]:
    """(kept, failed) items of a build stage, as its manifest counts them; None where the stage has no such count."""
    if "ok" in stats:  # per-item status (captions, texts: for MTCIR the pair requests)
        return stats["ok"], stats.get("failed")
    if stage == "ingest_collection":  # usable images / unreadable files
        return stats.get("images"), stats.get("failed")
    if stage in ("pair_groups", "random_pairs"):
        return stats.get("pairs"), None
    if "failed" in stats and isinstance(stats.get("images"), int):  # embed_images: images less failures
        return stats["images"] - stats["failed"], stats["failed"]
    return None, None


def _note(stats: dict) -> str:
    parts = []
    for k in NOTE_STATS:
        v = stats.get(k)
        if isinstance(v, dict):
            parts.append(f"{k}: " + ", ".join(f"{n} {name}" for name, n in sorted(v.items())))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{k} {v}")
    return "; ".join(parts)


def stage_table(doc: dict, arts: dict[str, Artifact]) -> tuple[list[str], list[list]]:
    by_label = {s["label"]: s for s in doc.get("stages", [])}
    rows = []
    for label, a in arts.items():
        s = by_label.get(label, {})
        stats = s.get("stats") or a.manifest.stats
        kept, failed = kept_failed(a.stage, stats)
        rows.append([label, a.stage, s.get("status", "cached"), kept, failed, float(s.get("seconds", 0.0)),
                     _note(stats), a.key[:12]])
    for s in doc.get("stages", []):  # the stage that stopped a failed build: committed shards, no artifact
        if s.get("status") == "failed":
            kept, failed = kept_failed(s["stage"], s.get("stats") or {})
            rows.append([s["label"], s["stage"], "failed", kept, failed, float(s.get("seconds", 0.0)), "",
                         s["key"][:12]])
    return ["step", "stage", "status", "kept", "failed", "seconds", "notes", "key"], rows


# ------------------------------------------------------------------------------------------------ rows


def _sample(rows: list, n: int) -> list:
    """`n` rows evenly spread over `rows` (deterministic: a rebuilt report shows the same triplets)."""
    if len(rows) <= n:
        return rows
    return [rows[i * len(rows) // n] for i in range(n)]


class BuildCollector:
    """The page's rows: {id, kind, ok, ref, tgt (thumbnail paths or None), ref_id, tgt_id, texts: [[label, text]],
    reason}. Thumbnails are made only for the rows shown."""

    def __init__(self, arts: dict[str, Artifact], thumbs: Thumbs):
        self.thumbs = thumbs
        self.by_stage = {a.stage: a for a in arts.values()}
        coll = self.by_stage.get("ingest_collection")
        self.images = {r["image_id"]: r["path"] for r in coll.read("images", ["image_id", "path"]).to_pylist()} \
            if coll else {}
        caps = self.by_stage.get("caption_collection")
        self.captions = caps.read("data").to_pylist() if caps else []
        self.caption = {r["id"]: r["text"] for r in self.captions if r["status"] == "ok"}
        self.total_kept = 0

    def _thumb(self, image_id: str | None) -> str | None:
        path = self.images.get(image_id) if image_id else None
        return self.thumbs.image(path, None) if path else None

    def _row(self, rid: str, kind: str, ok: bool, ref_id, tgt_id, texts: list, reason: str | None = None) -> dict:
        texts = [[label, t] for label, t in texts if t]
        for label, iid in (("reference caption", ref_id), ("target caption", tgt_id)):
            if iid and self.caption.get(iid):
                texts.append([label, self.caption[iid]])
        return {"id": rid, "kind": kind, "ok": ok, "ref_id": ref_id, "tgt_id": tgt_id, "ref": self._thumb(ref_id),
                "tgt": self._thumb(tgt_id), "texts": texts, "reason": reason}

    def _triplets(self) -> tuple[list[tuple], list[tuple]]:
        """(kept, failed) row arguments of the build's text stage, before sampling."""
        kept, failed = [], []
        if (a := self.by_stage.get("mtcir_texts")) is not None:
            for r in a.read("requests").to_pylist():  # a pair whose answer failed has no text rows
                if r["status"] != "ok":
                    failed.append((r["pair_id"], f"request {r['status']}", False, r["ref_id"], r["tgt_id"],
                                   [("answer", r["raw"])], r["error"] or r["status"]))
            for r in a.read("data").to_pylist():
                args = (f"{r['pair_id']}/{r['direction']}/{r['index']}", f"{r['direction']} · {r['category']}",
                        r["status"] == "ok", r["ref_id"], r["tgt_id"], [("modification", r["text"])])
                if r["status"] == "ok":
                    kept.append(args)
                else:  # filtered: biometric words or over the word limit
                    failed.append((*args, f"{r['status']} ({r['words']} words)" if r["status"] == "too_long"
                                   else r["status"]))
        if (a := self.by_stage.get("instructcir_texts")) is not None:
            for r in a.read("data").to_pylist():
                args = (r["pair_id"], "reformulation", r["status"] == "ok", r["ref_id"], r["tgt_id"],
                        [("reformulation", r["text"] or r["raw"])])
                (kept if r["status"] == "ok" else failed).append(
                    args if r["status"] == "ok" else (*args, r["error"] or r["status"]))
        if (a := self.by_stage.get("mvft_texts")) is not None:  # the target is a text: no target image
            for r in a.read("data").to_pylist():
                args = (r["image_id"], "image → target text", r["status"] == "ok", r["image_id"], None,
                        [("modification", r["modification"] or r["raw_modification"]),
                         ("target text", r["target_text"] or r["raw_target"])])
                reason = f"{r['failed_step'] or ''} step: {r['error'] or r['status']}".lstrip()
                (kept if r["status"] == "ok" else failed).append(args if r["status"] == "ok" else (*args, reason))
        return kept, failed

    def rows(self) -> list[dict]:
        kept, failed = self._triplets()
        if (a := self.by_stage.get("ingest_collection")) is not None:
            failed += [(f"file:{r['path']}", "unreadable file", False, None, None, [("file", r["path"])],
                        r["reason"]) for r in a.read("failures").to_pylist()]
        failed += [(f"caption:{r['id']}", "caption", False, r["id"], None, [("answer", r["raw"])],
                    r["error"] or r["status"]) for r in self.captions if r["status"] != "ok"]
        if not any(s in self.by_stage for s in TEXT_STAGES):  # a build that stopped before its texts: captions
            kept = [(f"caption:{r['id']}", "caption", True, r["id"], None, []) for r in self.captions
                    if r["status"] == "ok"]
        self.total_kept = len(kept)
        return [self._row(*a) for a in _sample(kept, SAMPLE_KEPT)] + [self._row(*a) for a in failed[:MAX_FAILED]]


# ------------------------------------------------------------------------------------------------ page

SCRIPT = COMMON_SCRIPT + r"""
const S = {filter: 'all', page: 1};
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  S.filter = ['all', 'kept', 'failures'].includes(h.get('filter')) ? h.get('filter') : 'all';
  S.page = Math.max(1, parseInt(h.get('page')) || 1);
}
function writeHash(change) {
  Object.assign(S, change);
  location.hash = `filter=${S.filter}&page=${S.page}`;
}
const keep = r => S.filter === 'all' || (S.filter === 'failures' ? !r.ok : r.ok);
const thumb = (src, title, cls) => src
  ? `<span class="thumb"><img class="${cls}" src="${esc(src)}" title="${esc(title)}" alt="${esc(title)}"></span>`
  : `<span class="missing" title="${esc(title)}">no image</span>`;
function row(r) {
  const texts = r.texts.map(([l, t]) => `<div class="out"><b>${esc(l)}:</b> ${esc(t)}</div>`).join('');
  return `<tr class="triplet ${r.ok ? 'kept' : 'failed'}" data-rid="${esc(r.id)}"><td class="q">` +
    `<div class="qid">${esc(r.id)}</div><div class="meta">${esc(r.kind)}</div>` +
    (r.reason ? `<div class="out bad reason">${esc(r.reason)}</div>` : '') + '</td>' +
    `<td>${r.ref_id ? thumb(r.ref, `reference ${r.ref_id}`, 'ref') : ''}</td>` +
    `<td>${r.tgt_id ? thumb(r.tgt, `target ${r.tgt_id}`, 'ref') : ''}</td><td>${texts}</td></tr>`;
}
function render() {
  readHash();
  showPage(D.rows, 'rows');
  waitImages();
}
for (const b of document.querySelectorAll('[data-filter]')) {
  b.onclick = () => writeHash({filter: b.dataset.filter, page: 1});
}
window.addEventListener('hashchange', render);
render();
"""


def render(title: str, subtitle: str, stages: tuple[list[str], list[list]], rows: list[dict], sample_note: str,
           failed: dict | None = None) -> str:
    # "</" inside a <script> block would end it early; JSON allows the escaped form
    blob = json.dumps({"rows": rows, "page_size": PAGE_SIZE}, separators=(",", ":")).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}{BUILD_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1><div class="meta">{html.escape(subtitle)}</div>
{failed_section(failed)}
<h2>Stages</h2><div id="stages">{_table(*stages)}</div>
<h2>Triplets</h2><div class="meta">{html.escape(sample_note)}</div>
<div id="controls">show:
 <button data-filter="all">all</button>
 <button data-filter="kept">kept</button>
 <button data-filter="failures">failures</button>
 · <span id="count"></span> · <span id="img-status" data-state="loading"></span>
 <span id="pager"></span></div>
<table id="queries"><thead><tr><th>row</th><th>reference</th><th>target</th><th>texts</th></tr></thead>
<tbody id="rows"></tbody></table>
<script id="data" type="application/json">{blob}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def _artifacts(doc: dict, store: ArtifactStore) -> dict[str, Artifact]:
    return {label: store.find(key) for label, key in doc["artifacts"].items()}


def write_build_report(run_dir: str | Path, doc: dict, store: ArtifactStore | None = None) -> Path:
    """Write a build run folder's `report.html` (and the thumbnails it lacks); returns its path."""
    run_dir = Path(run_dir)
    store = store or ArtifactStore(doc["store"])
    arts = _artifacts(doc, store)
    collector = BuildCollector(arts, Thumbs(run_dir))
    rows = collector.rows()
    n_kept = sum(r["ok"] for r in rows)
    sampled = " (an even sample)" if n_kept < collector.total_kept else ""
    note = f"{n_kept} of {collector.total_kept} kept rows shown{sampled}, {len(rows) - n_kept} failed"
    title = f"{doc.get('method', 'build')}: {doc['name']}" + (" (failed)" if doc.get("status") == "failed" else "")
    sub = f"store {doc['store']}" + (f" · release {doc['release']}" if doc.get("release") else "")
    page = render(title, sub, stage_table(doc, arts), rows, note, doc.get("failed_stage"))
    out = run_dir / REPORT
    tmp = out.with_suffix(".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


# ------------------------------------------------------------------------------------------------ run folder


def stages_markdown(doc: dict, store: ArtifactStore) -> str:
    cols, rows = stage_table(doc, _artifacts(doc, store))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("--:" if c in ("kept", "failed", "seconds") else "---"
                                                          for c in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else "" if v is None else str(v)
                                       for v in r) + " |")
    return "\n".join(lines)


def publish_build(cfg, doc: dict, store: ArtifactStore | None = None) -> dict:
    """Write the build's run folder (summary.json, stages.md, config.resolved.yaml, report.html) and link the
    report from a Prefect artifact; returns the summary with `output_dir` and `report`. `--plan` writes nothing."""
    from cirflow.flows.record import write_resolved_config
    from cirflow.flows.summary import _new_run_folder
    from cirflow.tasks import plan_mode

    if plan_mode.active() is not None:  # `--plan`: the artifacts may not exist yet
        return doc
    store = store or ArtifactStore(cfg.store, cfg.storage_options)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = _new_run_folder(Path(cfg.output_dir) / cfg.name, stamp)
    doc = {**doc, "kind": "build", "method": cfg.method, "output_dir": str(out), "report": str(out / REPORT)}
    md = stages_markdown(doc, store)
    (out / "stages.md").write_text(md + "\n")
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str))
    write_resolved_config(out, cfg)
    write_build_report(out, doc, store)
    _prefect_artifact(doc, md)
    return doc


def _prefect_artifact(doc: dict, md: str) -> None:
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:  # the store shortcut or plain-Python use: no flow run to attach to
        return
    key = "".join(c if c.isalnum() else "-" for c in doc["name"].lower()).strip("-") or "build"
    create_markdown_artifact(markdown=f"[HTML report]({Path(doc['report']).resolve().as_uri()})\n\n" + md,
                             key=f"{key}-build", description=f"{doc['method']}: stages, kept / failed")


__all__ = ["BuildCollector", "kept_failed", "publish_build", "write_build_report"]
