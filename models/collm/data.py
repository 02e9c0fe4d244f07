"""Training data of the trained CIR models as map-style datasets over stored Parquet tables (no store, no Prefect).

    CaptionPairs(tables={"collection": [...], "captions": [...]}, preprocess=cfg)   # CoLLM pre-training (§3.2)
    Triplets(tables={"texts": [...], "collection": [...]}, preprocess=cfg)         # MTCIR / InstructCIR triplets

`tables` is what a train stage passes (input name → local Parquet files). Image–caption pairs: a collection's
`images` table (image_id, path, caption — a Parquet source's own captions), or any Parquet with `path` and
`caption` columns (a user's CC3M / LAION / LLaVA-558K shards, input name "pairs"); a `captions` input (TEXTS: id,
sample, text, status — the build's caption stage) replaces the collection's captions with its first ok sample.
Triplets: a build's text table (ref_id, tgt_id, text, status: `mtcir_texts` or `instructcir_texts`) joined with the
collection's image paths; only ok rows. Rows are in a fixed order (sorted by id), so the data order follows from
the training seed alone. `preprocess` is `vision.preprocess_config(...)` of the model's image tower.

Items: pairs {"pixel_values", "caption"}, triplets {"reference_pixels", "target_pixels", "modification"}; torch's
default_collate stacks them (strings become lists).
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from cirflow.models.collm.vision import image_transform
from cirflow.models.images import load_image
from cirflow.schemas.errors import CirflowError


def _read(paths: Sequence[str], what: str) -> pa.Table:
    if not paths:
        raise CirflowError(f"training data: the {what} input has no Parquet files")
    tables = [pq.read_table(p) for p in paths]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _need(t: pa.Table, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in t.column_names]
    if missing:
        raise CirflowError(f"training data: the {what} table lacks columns {missing} (has {t.column_names})")


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status", "ok") == "ok"]


def image_paths(collection: pa.Table) -> dict[str, str]:
    _need(collection, ("image_id", "path"), "collection")
    return {str(r["image_id"]): str(r["path"]) for r in collection.select(["image_id", "path"]).to_pylist()}


class _Images(Dataset):
    def __init__(self, preprocess: dict):
        self.preprocess = dict(preprocess)
        self._transform = None

    def pixels(self, path: str) -> torch.Tensor:
        if self._transform is None:  # built lazily: DataLoader workers build their own
            self._transform = image_transform(self.preprocess)
        try:
            return self._transform(load_image(path))
        except Exception as e:  # noqa: BLE001 - a user's file: one line naming it
            raise CirflowError(f"training image {path} cannot be read: {str(e).splitlines()[0][:200]}") from e


class CaptionPairs(_Images):
    def __init__(self, tables: dict[str, list[str]], preprocess: dict, limit: int | None = None):
        super().__init__(preprocess)
        source = "pairs" if "pairs" in tables else "collection"
        if source not in tables:
            raise CirflowError("CoLLM pre-training needs a 'collection' or 'pairs' input (image paths + captions)")
        base = _read(tables[source], source)
        _need(base, ("path",), source)
        rows = base.to_pylist()
        if "captions" in tables:
            caps: dict[str, str] = {}
            for r in sorted(_ok(_read(tables["captions"], "captions").to_pylist()), key=lambda r: r["sample"]):
                if r.get("text"):
                    caps.setdefault(str(r["id"]), r["text"])
            rows = [{**r, "caption": caps.get(str(r.get("image_id")))} for r in rows]
        rows = [r for r in rows if r.get("caption")]
        rows.sort(key=lambda r: (str(r.get("image_id", "")), str(r["path"])))
        self.rows = [{"path": str(r["path"]), "caption": str(r["caption"])} for r in rows[:limit]]
        if not self.rows:
            raise CirflowError("CoLLM pre-training data is empty: no image has a caption")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        return {"pixel_values": self.pixels(r["path"]), "caption": r["caption"]}


class Triplets(_Images):
    def __init__(self, tables: dict[str, list[str]], preprocess: dict, limit: int | None = None):
        super().__init__(preprocess)
        for name in ("texts", "collection"):
            if name not in tables:
                raise CirflowError(f"triplet training needs a {name!r} input (a build's texts and its collection)")
        texts = _read(tables["texts"], "texts")
        _need(texts, ("ref_id", "tgt_id", "text"), "texts")
        paths = image_paths(_read(tables["collection"], "collection"))
        rows = [r for r in _ok(texts.to_pylist()) if r.get("text") and str(r["ref_id"]) in paths
                and str(r["tgt_id"]) in paths]
        rows.sort(key=lambda r: (str(r.get("pair_id", "")), str(r.get("direction", "")), int(r.get("index") or 0),
                                 str(r["ref_id"]), str(r["tgt_id"])))
        # `limit` keeps a prefix of this fixed order: nested subsets of one build (InstructCIR table IV's scaling)
        self.rows = [{"reference": paths[str(r["ref_id"])], "target": paths[str(r["tgt_id"])],
                      "modification": str(r["text"])} for r in rows[:limit]]
        if not self.rows:
            raise CirflowError("triplet training data is empty: no ok text with both images in the collection")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r = self.rows[i]
        return {"reference_pixels": self.pixels(r["reference"]), "target_pixels": self.pixels(r["target"]),
                "modification": r["modification"]}


def caption_pairs(tables: dict[str, list[str]], preprocess: dict, limit: int | None = None) -> CaptionPairs:
    return CaptionPairs(tables, preprocess, limit)


def triplets(tables: dict[str, list[str]], preprocess: dict, limit: int | None = None) -> Triplets:
    return Triplets(tables, preprocess, limit)
