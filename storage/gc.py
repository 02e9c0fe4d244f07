"""Store tools beyond ls / show / verify: look at rows (`head`), copy an artifact out (`export`), remove one with
everything built on it (`rm`), and garbage-collect what no run references (`gc`).

What references an artifact:
* a run folder: every `summary.json` under the run roots (a run's `output_dir`, default .cirflow/runs) names the
  keys of the stages it used; any 64-hex string in it counts, so every summary shape (benchmark runs,
  comparisons, ablations, builds) is covered, and a scheduled deployment's runs write such folders too;
* a release folder's card (`README.md`, `cirflow.artifacts.*.key`) when a release folder lies under a run root;
* another kept artifact: the manifest's `inputs` name the keys it was computed from, kept transitively.

Only finished artifacts (with a manifest) are removed by `gc`: a folder without one may be a run in progress
(its leases decide that, not gc). Each artifact is removed manifest first, so a concurrent reader sees an
unfinished folder and never a manifest whose shards are gone; then its key-index marker (storage/index.py), so
`find` and `ls` never list it again. A run still in progress has no summary.json yet:
run gc between runs (an artifact it was about to reuse would be recomputed, or a read in flight would fail).
Prefect deployments are not asked: each scheduled run writes a run folder, which keeps its artifacts.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cirflow.schemas.errors import StoreError
from cirflow.storage import index
from cirflow.storage.manifest import LEASES, MANIFEST, Manifest
from cirflow.storage.store import Artifact, ArtifactStore, sha256_bytes
from cirflow.storage.writers import is_temp

HEX_KEY = re.compile(r"\b[0-9a-f]{64}\b")
REFERENCE_FILES = ("summary.json", "README.md")


# ------------------------------------------------------------------------------------------------ head


def head(art: Artifact, table: str = "data", n: int = 10) -> pa.Table:
    """The first `n` rows of a table, reading (and checking) only the shards they are in."""
    shards = [s for s in art.manifest.shards if s.table == table]
    if not shards and table not in art.manifest.schemas:
        raise StoreError(f"{art!r} has no table {table!r} (tables: {', '.join(art.manifest.tables()) or 'none'})")
    parts, rows = [], 0
    for s in shards:
        if rows >= n:
            break
        t = pq.read_table(io.BytesIO(art._checked_bytes(s)))
        parts.append(t.slice(0, n - rows))
        rows += parts[-1].num_rows
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def format_rows(t: pa.Table, width: int = 40) -> str:
    """Rows as an aligned text table; long cells are cut, vectors shown by their length."""
    def cell(v) -> str:
        if isinstance(v, (list, tuple)) and len(v) > 4:
            return f"[{len(v)} values]"
        if isinstance(v, bytes):
            return f"<{len(v)} bytes>"
        s = "" if v is None else str(v).replace("\n", " ")
        return s if len(s) <= width else s[: width - 1] + "…"

    cols = t.column_names
    body = [[cell(v) for v in row.values()] for row in t.to_pylist()]
    widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in body]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ export


def export(art: Artifact, to: str, storage_options: dict | None = None) -> tuple[ArtifactStore, int]:
    """Copy an artifact's folder to `<to>/<stage>/<key>/` (any fsspec URL; `to` is then a store holding it).
    Every file is checked against its sha256 before it is written (shards and files against the manifest,
    per-item files against their index table) and the copy is verified where it lands; the manifest goes last,
    so an interrupted export is an unfinished folder there. Returns (destination store, files copied)."""
    from cirflow.storage.verify import verify_store

    src = art.store
    problems = verify_store(src, art.key)
    if problems:
        raise StoreError(f"{art!r} does not verify ({problems[0]}); not exported — run `cirflow store verify`")
    dest = ArtifactStore(to, storage_options)
    if dest.fs.exists(dest.root) and not dest.fs.isdir(dest.root):
        raise StoreError(f"export target {to} is a file, not a folder")
    listed = {r.name: r.sha256 for r in [*art.manifest.shards, *art.manifest.files]}
    base = src.artifact_dir(art.stage, art.key)
    names = []
    for path in src.fs.find(base):
        rel = posixpath.relpath(path, base)
        if rel == MANIFEST or rel.split("/")[0] == LEASES or is_temp(path):
            continue
        names.append(rel)
    for rel in names:
        data = src.read_bytes(posixpath.join(base, rel))
        if rel in listed and sha256_bytes(data) != listed[rel]:  # changed since verify ran
            raise StoreError(f"{art.stage}/{art.key[:12]}/{rel}: checksum mismatch; not exported")
        dest.write_atomic(dest.path(art.stage, art.key, rel), data)
    dest.commit_manifest(art.stage, art.key, src.read_bytes(posixpath.join(base, MANIFEST)))
    problems = verify_store(dest, art.key)
    if problems:
        raise StoreError(f"the exported copy does not verify: {problems[0]}")
    return dest, len(names) + 1


# ------------------------------------------------------------------------------------------------ rm / gc


@dataclass
class Removal:
    stage: str
    key: str
    reason: str  # "requested", "depends on <stage>/<key12>", "unreferenced"


def _finished(store: ArtifactStore) -> dict[str, Manifest]:
    return {m.key: m for m in store.manifests()}


def dependents(manifests: dict[str, Manifest], keys: set[str]) -> dict[str, str]:
    """key -> the key it depends on, for every artifact computed (transitively) from one of `keys`."""
    out: dict[str, str] = {}
    frontier = set(keys)
    while frontier:
        nxt = set()
        for m in manifests.values():
            if m.key in keys or m.key in out:
                continue
            hit = next((k for k in m.inputs.values() if k in frontier), None)
            if hit is not None:
                out[m.key] = hit
                nxt.add(m.key)
        frontier = nxt
    return out


def plan_rm(store: ArtifactStore, key_prefix: str) -> list[Removal]:
    """The artifact and everything built on it, dependents first (the order they are removed in)."""
    store.check_root()
    target = store.find(key_prefix)
    manifests = _finished(store)
    deps = dependents(manifests, {target.key})
    out = []
    for k in reversed(_topological(manifests, deps)):
        via = manifests[deps[k]]
        out.append(Removal(manifests[k].stage, k, f"depends on {via.stage}/{via.key[:12]}"))
    return out + [Removal(target.stage, target.key, "requested")]


def _topological(manifests: dict[str, Manifest], deps: dict[str, str]) -> list[str]:
    """Dependents ordered so an artifact comes after what it was computed from (removal runs in reverse)."""
    order, seen = [], set()

    def visit(k: str) -> None:
        if k in seen:
            return
        seen.add(k)
        for i in manifests[k].inputs.values():
            if i in deps:
                visit(i)
        order.append(k)

    for k in sorted(deps):
        visit(k)
    return order


def referenced_keys(run_roots: list[str]) -> tuple[set[str], int]:
    """(keys named by any summary.json / release card under the run roots, number of files read)."""
    keys, files = set(), 0
    for root in run_roots:
        r = Path(root)
        if not r.exists():
            continue
        for name in REFERENCE_FILES:
            for p in ([r] if r.name == name else []) if r.is_file() else r.rglob(name):
                try:
                    text = p.read_text(errors="replace")
                except OSError:
                    continue
                if name == "summary.json":
                    try:  # a broken summary would silently reference nothing: name it instead
                        json.loads(text)
                    except ValueError as e:
                        raise StoreError(f"{p}: not valid JSON ({e}); fix or remove it before `store gc`") from None
                keys |= set(HEX_KEY.findall(text))
                files += 1
    return keys, files


def plan_gc(store: ArtifactStore, run_roots: list[str]) -> tuple[list[Removal], dict]:
    """What `gc` removes: every finished artifact that is neither referenced under `run_roots` nor an input
    (transitively) of one that is. Returns (removals, counts)."""
    store.check_root()
    manifests = _finished(store)
    refs, files = referenced_keys(run_roots)
    keep, frontier = set(), {k for k in refs if k in manifests}
    while frontier:
        keep |= frontier
        frontier = {i for k in frontier for i in manifests[k].inputs.values() if i in manifests} - keep
    gone = [Removal(m.stage, m.key, "unreferenced") for k, m in sorted(manifests.items(),
                                                                       key=lambda kv: (kv[1].stage, kv[0]))
            if k not in keep]
    unfinished = len(store.artifact_dirs()) - len(manifests)
    return gone, {"artifacts": len(manifests), "kept": len(keep), "removed": len(gone),
                  "unfinished_left": unfinished, "reference_files": files}


def remove(store: ArtifactStore, removals: list[Removal]) -> int:
    """Remove each artifact folder, manifest first, and its key-index marker; returns the bytes freed."""
    freed = 0
    for r in removals:
        d = store.artifact_dir(r.stage, r.key)
        try:
            freed += sum(i.get("size", 0) or 0 for i in store.fs.find(d, detail=True).values())
        except FileNotFoundError:
            continue
        store.discard(posixpath.join(d, MANIFEST))
        index.remove(store, r.stage, r.key)
        store.discard(d, recursive=True)
    return freed
