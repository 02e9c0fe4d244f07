"""What the HTML report shows, read back from a run folder's summary.json and the store: per query the
reference, the modification, the targets, what each stage of each variant produced for it, and the top-k with
the target's rank. Runs have one variant; comparisons and sweeps one per row of their table."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cirflow.flows.report_html.thumbs import Thumbs
from cirflow.schemas.errors import ConfigError
from cirflow.storage import Artifact, ArtifactStore
from cirflow.storage.item_files import ItemFiles
from cirflow.tasks.stage import ID_COLUMNS

TOP_SHOWN = 10  # thumbnails per ranking: a benchmark-scale page stays light; the rank itself counts the whole top-k
RANKINGS_COLS = {"query_id", "ranked_ids"}
TEXTS_COLS = {"id", "sample", "text", "status"}
GENERATED_COLS = {"id", "sample", "file", "sha256", "status"}


def _columns(art: Artifact, table: str) -> set[str]:
    # the manifest keeps each table's Arrow schema as text: top-level fields are the unindented "name: type" lines
    text = art.manifest.schemas.get(table, "")
    return {line.split(":", 1)[0] for line in text.splitlines() if line and not line.startswith(" ")}


@dataclass
class Variant:
    name: str
    groups: dict[str, list[Artifact]] = field(default_factory=dict)  # group -> artifacts in stage order


def load_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no summary.json (give a run folder: <output_dir>/<name>/<stamp>)")
    return json.loads(path.read_text())


def variants_of(doc: dict, store: ArtifactStore) -> list[Variant]:
    """Runs: one variant named after the run, groups from stage labels. Comparisons: one per (encoder, variant)."""
    out: dict[str, Variant] = {}
    opened: dict[str, Artifact] = {}
    for s in doc["stages"]:
        if s.get("status") == "failed":  # stopped over its failure threshold: no manifest to open (failed_stage)
            continue
        if "variant" in s:
            name, group = f"{s['encoder']} · {s['variant']}", s["group"]
        else:
            name, group = doc.get("run", "run"), s["label"]
        if s["key"] not in opened:
            opened[s["key"]] = store.open(s["stage"], s["key"])
        out.setdefault(name, Variant(name)).groups.setdefault(group, []).append(opened[s["key"]])
    return list(out.values())


def _rank(ranked: list[str], targets: list[str]) -> int | None:
    return next((i + 1 for i, r in enumerate(ranked) if r in set(targets)), None)


class Collector:
    def __init__(self, doc: dict, store: ArtifactStore, thumbs: Thumbs, top: int = TOP_SHOWN):
        self.doc, self.store, self.thumbs, self.top = doc, store, thumbs, top
        self.genecis = doc.get("benchmark") == "genecis"
        self._tables: dict[tuple[str, str], list[dict]] = {}
        self._files: dict[str, ItemFiles] = {}  # generated images per artifact key (both storage layouts)
        self.k_ranked = 0  # the longest ranking: "not in top-k" means not in what retrieval kept

    def rows(self, art: Artifact, table: str) -> list[dict]:
        k = (art.key, table)
        if k not in self._tables:
            self._tables[k] = art.read(table).to_pylist()
        return self._tables[k]

    def queries(self) -> tuple[list[str], list[dict]]:
        variants = variants_of(self.doc, self.store)
        groups = list(dict.fromkeys(g for v in variants for g in v.groups))
        out = []
        for group in groups:
            ingest = next((a for v in variants for a in v.groups.get(group, []) if a.stage == "ingest"), None)
            if ingest is None:  # a failed run stopped before its queries were read
                continue
            images = {r["image_id"]: r for r in self.rows(ingest, "images")}
            per_variant = [self._variant_outputs(v.groups.get(group, []), images) for v in variants]
            if len(per_variant) == 1:
                self._failed_rows(group, per_variant[0])
            for q in self.rows(ingest, "queries"):
                out.append(self._query(group, q, images, per_variant))
        return [v.name for v in variants], out

    def _thumb(self, images: dict, image_id: str) -> str | None:
        img = images.get(image_id)
        return self.thumbs.image(img["path"], img["crop_box"]) if img else None

    def _variant_outputs(self, arts: list[Artifact], images: dict) -> dict:
        """Per query id: the rankings row and (stage, texts, generated images) of every per-query stage."""
        rankings: dict[str, dict] = {}
        outputs: dict[str, list[dict]] = {}
        by_ref: dict[str, list[dict]] = {}  # per-image texts (captions of references), by image id
        for a in arts:
            for table in a.manifest.tables():
                cols = _columns(a, table)
                if RANKINGS_COLS <= cols:
                    rankings = {r["query_id"]: r for r in self.rows(a, table)}  # the last ranking is the variant's
                elif GENERATED_COLS <= cols:
                    for r in self.rows(a, table):
                        files = self._files.setdefault(a.key, ItemFiles(a))
                        thumb = (self.thumbs.blob(lambda f=files, r=r: f.read(r), r["sha256"],
                                                  f"{a.stage}/{r['file'] or r['id']}") if r["status"] == "ok" else None)
                        entry = {"stage": a.stage, "image": thumb, "text": r.get("prompt"), "ok": r["status"] == "ok"}
                        (by_ref if r["id"] in images else outputs).setdefault(r["id"], []).append(entry)
                elif TEXTS_COLS <= cols:
                    for r in self.rows(a, table):
                        text = r["text"] if r["status"] == "ok" else f"failed: {r.get('error') or ''}"
                        entry = {"stage": a.stage if table == "data" else f"{a.stage}/{table}", "text": text,
                                 "ok": r["status"] == "ok"}
                        (by_ref if r["id"] in images else outputs).setdefault(r["id"], []).append(entry)
        return {"rankings": rankings, "outputs": outputs, "by_ref": by_ref}

    def _failed_rows(self, group: str, outputs: dict) -> None:
        """A run stopped by a failed stage: its failed rows (not in any artifact: no manifest) shown under their
        queries (or reference images), with the reason."""
        failed = self.doc.get("failed_stage") or {}
        if failed.get("label") != group:
            return
        for r in failed.get("failures") or []:
            item = next((r[c] for c in ID_COLUMNS if r.get(c) is not None), None)
            entry = {"stage": failed["stage"], "text": f"failed: {r.get('error') or 'unknown'}", "ok": False}
            outputs["outputs"].setdefault(item, []).append(entry)
            outputs["by_ref"].setdefault(item, []).append(entry)

    def _query(self, group: str, q: dict, images: dict, per_variant: list[dict]) -> dict:
        candidates = q.get("candidate_ids") or []
        targets = list(q.get("target_ids") or [])
        if self.genecis and candidates:
            targets = [candidates[0]]  # GeneCIS: index 0 of the per-sample gallery is the target
        vs = []
        for pv in per_variant:
            r = pv["rankings"].get(q["query_id"])
            ranked = list(r["ranked_ids"]) if r else []
            self.k_ranked = max(self.k_ranked, len(ranked))
            if self.genecis and candidates:  # rankings of GeneCIS are positions in the sample's candidates
                ranked = [candidates[int(i)] for i in ranked if i.isdigit() and int(i) < len(candidates)]
            vs.append({
                "rank": _rank(ranked, targets) if targets else None,
                "top": [[i, self._thumb(images, i), i in targets] for i in ranked[:self.top]],
                "out": pv["outputs"].get(q["query_id"], []) + pv["by_ref"].get(q["reference_id"], []),
            })
        return {"g": group, "id": q["query_id"], "ref_id": q["reference_id"],
                "ref": self._thumb(images, q["reference_id"]),
                "mod": q["modification"], "targets": [[t, self._thumb(images, t)] for t in targets], "v": vs}


__all__ = ["Collector", "TOP_SHOWN", "load_summary", "variants_of"]
