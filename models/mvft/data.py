"""MVFT-JI training data as tensors: one item per unlabeled image (mvft-ji.txt §3.2).

Each item joins the image's target-text triplet (reference image, modification, target text) with its caption
pair (caption, image): the triplet's reference image is the caption's image, so one ViT pass serves both tasks.
Inputs are the release tables of the stored MVFT build (`cirflow.tasks.builds.release.release_tables("mvft", ...)`, or
a release folder's data/*.parquet):

    triplets: reference_id, reference_path, modification, target_text
    captions: image_id, path, caption

Only images with both an ok triplet and an ok caption are used (their count is `dataset.stats`). Items are in
image-id order and fully deterministic (no augmentation; texts padded to a fixed length), so a data order is
reproduced from a seed alone.

    ds = MVFTDataset.from_tables(triplets, captions, model.tokenizer, model.image_processor,
                                 model.settings.max_text_length)
    DataLoader(ds, batch_size=..., collate_fn=collate)   # batches for MVFTLoss / model.forward
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import torch
from torch.utils.data import Dataset

from cirflow.models.images import load_image
from cirflow.schemas.errors import CirflowError

TEXT_FIELDS = ("modification", "target", "caption")


def join_rows(triplets: pa.Table, captions: pa.Table) -> tuple[list[dict], dict]:
    """[{image_id, path, modification, target_text, caption}] sorted by image_id, and counts of what was dropped."""
    _need(triplets, ("reference_id", "reference_path", "modification", "target_text"), "triplets")
    _need(captions, ("image_id", "caption"), "captions")
    caps = {}
    for r in captions.select(["image_id", "caption"]).to_pylist():
        if r["caption"]:
            caps.setdefault(str(r["image_id"]), r["caption"])  # first caption of an image (sample 0)
    rows, seen = [], set()
    no_caption = 0
    for r in triplets.to_pylist():
        iid = str(r["reference_id"])
        if iid in seen or not r["modification"] or not r["target_text"]:
            continue
        if iid not in caps:
            no_caption += 1
            continue
        seen.add(iid)
        rows.append({"image_id": iid, "path": str(r["reference_path"]), "modification": r["modification"],
                     "target_text": r["target_text"], "caption": caps[iid]})
    rows.sort(key=lambda r: r["image_id"])
    stats = {"items": len(rows), "triplets": triplets.num_rows, "captions": captions.num_rows,
             "dropped_no_caption": no_caption}
    return rows, stats


class MVFTDataset(Dataset):
    """Map-style dataset of dicts of tensors (see `collate`); picklable for DataLoader workers."""

    def __init__(self, rows: list[dict], tokenizer, image_processor, max_text_length: int, stats: dict | None = None):
        if not rows:
            raise CirflowError("MVFT training data is empty: no image has both a target-text triplet and a caption")
        self.rows = rows
        self.image_processor = image_processor
        self.stats = stats or {"items": len(rows)}
        # tokenized once up front: fixed-length padding makes each text's ids independent of any batching
        self.text = {}
        for field, col in zip(TEXT_FIELDS, ("modification", "target_text", "caption")):
            enc = tokenizer([r[col] for r in rows], padding="max_length", truncation=True, max_length=max_text_length,
                            return_tensors="pt")
            self.text[field] = (enc["input_ids"], enc["attention_mask"])

    @classmethod
    def from_tables(cls, triplets: pa.Table, captions: pa.Table, tokenizer, image_processor,
                    max_text_length: int) -> MVFTDataset:
        rows, stats = join_rows(triplets, captions)
        return cls(rows, tokenizer, image_processor, max_text_length, stats)

    @classmethod
    def from_release(cls, folder: str | os.PathLike, tokenizer, image_processor, max_text_length: int) -> MVFTDataset:
        """From a release folder written by `cirflow build mvft` (data/triplets.parquet, data/captions.parquet)."""
        import pyarrow.parquet as pq

        data = Path(folder) / "data"
        for name in ("triplets", "captions"):
            if not (data / f"{name}.parquet").is_file():
                raise CirflowError(f"{folder}: not an MVFT release folder (missing data/{name}.parquet)")
        return cls.from_tables(pq.read_table(data / "triplets.parquet"), pq.read_table(data / "captions.parquet"),
                               tokenizer, image_processor, max_text_length)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rows[i]
        try:
            image = load_image(row["path"])
        except Exception as e:  # noqa: BLE001 - named and re-raised as a user error
            raise CirflowError(f"MVFT training image {row['image_id']} ({row['path']}) cannot be read: {e}") from e
        item = {"index": torch.tensor(i, dtype=torch.long),
                "pixel_values": self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]}
        for field in TEXT_FIELDS:
            ids, mask = self.text[field]
            item[f"{field}_ids"], item[f"{field}_mask"] = ids[i], mask[i]
        return item


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of items into a batch: index [B], pixel_values [B, 3, H, W], {modification,target,caption}_ids
    and _mask [B, L] -- the keyword arguments of MVFTModel.forward."""
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _need(t: pa.Table, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in t.column_names]
    if missing:
        raise CirflowError(f"MVFT {what} table lacks columns {missing} (has {t.column_names})")
