"""The report page: one self-contained HTML file (inline CSS, JS and data; thumbnails by relative path; no
network). Queries are rendered by plain JS from the embedded JSON, one page at a time, so a benchmark with
thousands of queries loads only the thumbnails of the page shown; filters work over all queries."""

from __future__ import annotations

import html
import json

PAGE_SIZE = 50

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}
table.grid{border-collapse:collapse;background:#fff}table.grid td,table.grid th{border:1px solid #ddd;padding:3px 7px}
table.grid td.n{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#666}.plots img{max-width:560px;border:1px solid #ddd;margin:4px}
#controls{position:sticky;top:0;background:#fafafa;padding:8px 0;border-bottom:1px solid #ddd;z-index:2}
#controls button.on{background:#234;color:#fff}
table#queries{border-collapse:collapse;width:100%;background:#fff;margin-top:8px}
#queries th{background:#eef;position:sticky;top:44px;padding:4px;border:1px solid #ccd}
#queries td{vertical-align:top;border:1px solid #ddd;padding:6px}
td.q{width:230px}.qid{font-weight:600}.mod{margin:4px 0;font-style:italic}
img.t{height:72px;margin:1px;border:3px solid transparent;vertical-align:top}
img.ref{height:110px;border:1px solid #999}
.hit img.t,img.t.hit{border-color:#1a9c3a}
.thumb{display:inline-block;position:relative}.thumb .mark{position:absolute;left:3px;top:2px;background:#1a9c3a;
color:#fff;font-size:10px;padding:0 3px;border-radius:2px}
.missing{display:inline-block;width:72px;height:72px;background:#eee;color:#999;font-size:11px;text-align:center;
line-height:72px;margin:1px}
.rank{font-weight:600;margin-bottom:4px}.fail .rank{color:#c0392b}.ok .rank{color:#1a9c3a}
.out{font-size:12px;margin:2px 0;max-width:520px;overflow-wrap:anywhere}.out b{color:#456}.out.bad{color:#c0392b}
#pager button{margin:0 2px}
"""

# What every report page shares (run, comparison, build): its data blob, HTML escaping, the page buttons and the
# "all images loaded" status the Chromium tests wait for.
COMMON_SCRIPT = r"""
const D = JSON.parse(document.getElementById('data').textContent);
const ENT = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'};
const esc = s => String(s ?? '').replace(/[&<>"']/g, c => ENT[c]);
function waitImages() {
  const st = document.getElementById('img-status');
  const imgs = [...document.querySelectorAll('img')];
  st.dataset.state = 'loading';
  const check = () => {
    if (!imgs.every(i => i.complete)) return setTimeout(check, 50);
    const bad = imgs.filter(i => !i.naturalWidth).length;
    st.dataset.state = bad ? 'broken' : 'loaded';
    st.textContent = bad ? `${bad} of ${imgs.length} images failed to load` : `all ${imgs.length} images loaded`;
  };
  check();
}
// the current page of `items` that pass the filter (`keep`), drawn with `row`, and the count / filter / page bar
function showPage(items, noun) {
  const list = items.filter(keep);
  const pages = Math.max(1, Math.ceil(list.length / D.page_size));
  S.page = Math.min(S.page, pages);
  const shown = list.slice((S.page - 1) * D.page_size, S.page * D.page_size);
  document.getElementById('rows').innerHTML = shown.map(row).join('');
  const c = document.getElementById('count');
  c.dataset.shown = shown.length; c.dataset.matching = list.length;
  c.textContent = `${list.length} of ${items.length} ${noun} match; showing ${shown.length}`;
  for (const b of document.querySelectorAll('[data-filter]')) b.classList.toggle('on', b.dataset.filter === S.filter);
  drawPager(pages);
}
function drawPager(pages) {
  document.getElementById('pager').innerHTML = pages < 2 ? '' : Array.from({length: pages}, (_, i) =>
    `<button ${i + 1 === S.page ? 'class="on"' : ''} onclick="writeHash({page:${i + 1}})">${i + 1}</button>`).join('');
}
"""

SCRIPT = COMMON_SCRIPT + r"""
const S = {filter: 'all', k: D.k_default, page: 1};
function readHash() {
  const h = new URLSearchParams(location.hash.slice(1));
  S.filter = ['all', 'failures', 'disagree'].includes(h.get('filter')) ? h.get('filter') : 'all';
  S.k = parseInt(h.get('k')) || D.k_default;
  S.page = Math.max(1, parseInt(h.get('page')) || 1);
}
function writeHash(change) {
  Object.assign(S, change);
  location.hash = `filter=${S.filter}&k=${S.k}&page=${S.page}`;
}
// a variant fails a query when a target exists and is not within the first k of its ranking
const fails = (q, v) => q.targets.length > 0 && (v.rank === null || v.rank > S.k);
function disagree(q) {
  if (q.v.length < 2) return false;
  if (q.targets.length) return new Set(q.v.map(v => fails(q, v))).size > 1;
  return new Set(q.v.map(v => v.top.length ? v.top[0][0] : '')).size > 1;  // no ground truth: top-1 differs
}
function keep(q) {
  if (S.filter === 'failures') return q.v.some(v => fails(q, v));
  if (S.filter === 'disagree') return disagree(q);
  return true;
}
const thumb = (src, title, cls, mark) => src
  ? `<span class="thumb"><img class="${cls}" src="${esc(src)}" title="${esc(title)}" alt="${esc(title)}">` +
    (mark ? `<span class="mark">${esc(mark)}</span>` : '') + '</span>'
  : `<span class="missing" title="${esc(title)}">no image</span>`;
function cell(q, v) {
  const rank = !q.targets.length ? 'no ground truth'
    : v.rank === null ? `target not in top-${D.k_ranked}` : `target rank ${v.rank}`;
  const outs = v.out.map(o => `<div class="out${o.ok ? '' : ' bad'}"><b>${esc(o.stage)}:</b> ` +
    (o.image ? thumb(o.image, o.text || o.stage, 't', '') + ' ' : '') + esc(o.text) + '</div>').join('');
  const top = v.top.map(([id, src, hit], i) => thumb(src, `#${i + 1} ${id}` + (hit ? ' (target)' : ''),
                                                       't' + (hit ? ' hit target' : ''), hit ? 'target' : '')).join('');
  const cls = q.targets.length ? (fails(q, v) ? 'fail' : 'ok') : '';
  return `<td class="v ${cls}"><div class="rank">${rank}</div>${outs}<div class="top">${top}</div></td>`;
}
function row(q) {
  const targets = q.targets.map(([id, src]) => thumb(src, `target ${id}`, 't hit', 'target')).join('');
  return `<tr class="query" data-qid="${esc(q.id)}"><td class="q"><div class="qid">${esc(q.g)} · ${esc(q.id)}</div>` +
    thumb(q.ref, `reference ${q.ref_id}`, 'ref', '') + `<div class="mod">${esc(q.mod)}</div>` +
    (targets ? `<div>targets:<br>${targets}</div>` : '') + '</td>' + q.v.map(v => cell(q, v)).join('') + '</tr>';
}
function render() {
  readHash();
  showPage(D.queries, 'queries');
  document.getElementById('k').value = S.k;
  waitImages();
}
for (const b of document.querySelectorAll('[data-filter]')) {
  b.onclick = () => writeHash({filter: b.dataset.filter, page: 1});
}
document.getElementById('k').onchange = e => writeHash({k: parseInt(e.target.value), page: 1});
window.addEventListener('hashchange', render);
render();
"""


def _table(columns: list[str], rows: list[list]) -> str:
    def td(v):
        if isinstance(v, float):
            return f'<td class="n">{v:.2f}</td>'
        if isinstance(v, int):
            return f'<td class="n">{v}</td>'
        return f"<td>{html.escape(str(v if v is not None else ''))}</td>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(td(v) for v in r) + "</tr>" for r in rows)
    return f'<table class="grid"><tr>{head}</tr>{body}</table>'


def failed_section(failed: dict | None) -> str:
    """A run stopped by a stage over its failure threshold: the error line and each failed item with its reason
    (the rows `execute` attached; they are in no artifact, the stage wrote no manifest)."""
    if not failed:
        return ""
    from cirflow.tasks.stage import ID_COLUMNS

    rows = []
    for r in failed.get("failures") or []:
        item = next((r[c] for c in ID_COLUMNS if r.get(c) is not None), "")
        rows.append(f'<tr class="failure"><td>{html.escape(str(item))}</td>'
                    f'<td>{html.escape(str(r.get("error") or "unknown"))}</td></tr>')
    st = failed.get("stats") or {}
    return (f'<h2 id="failed-stage">Failed: {html.escape(str(failed.get("label", "")))} · '
            f'{html.escape(failed["stage"])} ({st.get("failed", "?")} of {st.get("items", "?")} items)</h2>'
            f'<div class="out bad" id="failed-error">{html.escape(failed.get("error", ""))}</div>'
            f'<table class="grid" id="failures"><tr><th>item</th><th>reason</th></tr>{"".join(rows)}</table>')


def render(title: str, subtitle: str, metrics: tuple[list[str], list[list]], stages: tuple[list[str], list[list]],
           plots: list[str], variants: list[str], queries: list[dict], k_ranked: int,
           failed: dict | None = None) -> str:
    data = {"queries": queries, "page_size": PAGE_SIZE, "k_default": min(10, k_ranked) or 10, "k_ranked": k_ranked,
            "failed_stage": failed}
    # "</" inside a <script> block would end it early; JSON allows the escaped form
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    ks = sorted({1, 5, 10, 50, k_ranked} - {0})
    plots_html = "".join(f'<img src="{html.escape(p)}" alt="plot">' for p in plots)
    heads = "".join(f"<th>{html.escape(v)}</th>" for v in variants)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1><div class="meta">{html.escape(subtitle)}</div>
{failed_section(failed)}
<h2>Metrics (percent)</h2>{_table(*metrics)}
{f'<h2>Plots</h2><div class="plots">{plots_html}</div>' if plots else ''}
<h2>Stages</h2>{_table(*stages)}
<h2>Queries</h2>
<div id="controls">show:
 <button data-filter="all">all</button>
 <button data-filter="failures">failures</button>
 <button data-filter="disagree" {'' if len(variants) > 1 else 'disabled title="one variant"'}>variants disagree</button>
 · failure = target not in top-<select id="k">{''.join(f'<option value="{k}">{k}</option>' for k in ks)}</select>
 · <span id="count"></span> · <span id="img-status" data-state="loading"></span>
 <span id="pager"></span></div>
<table id="queries"><thead><tr><th>query</th>{heads}</tr></thead><tbody id="rows"></tbody></table>
<script id="data" type="application/json">{blob}</script>
<script>{SCRIPT}</script>
</body></html>
"""
