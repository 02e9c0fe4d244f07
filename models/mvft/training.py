"""The MVFT-JI model, data and loss as the training engine's references
(`Ref(target="cirflow.models.mvft.training:...")`).

    build(base=<BLIP-2 / MVFT folder>)                       -> TrainableMVFT (an MVFTModel that exports itself)
    dataset(tables={"triplets": [parquet...]}, base=<folder>) -> MVFTDataset over the joined training rows
    loss(model, batch, temperature=0.07, use_Lt=True, use_Lc=True) -> {"loss", "L_t", "L_c"}
    collate(items)                                            -> the batch model.forward takes

The training rows are one table (`TRAINING_ROWS`): image_id, path, modification, target_text, caption -- the MVFT
build joined per image (tasks/mvft/mvft_training_data.py) or any other source of the same columns (the demo's
rows from the mini benchmark's attributes). Several rows may share an image (several modifications of it).

The engine writes model.safetensors from the wrapper's state dict ("blip.*" keys); `export_extras` then writes
the folder again with `save_pretrained`, so a trained model folder is a plain MVFT folder that
`MVFTModel.from_pretrained` (and every encoding stage) reads, with factory.json beside it. Load it with
`MVFTModel.from_pretrained`, not `cirflow.training.load_model` (its keys are BLIP-2's, not the wrapper's).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from cirflow.models.mvft.data import MVFTDataset
from cirflow.models.mvft.data import collate as _collate
from cirflow.models.mvft.losses import MVFTLoss
from cirflow.models.mvft.model import MVFTModel
from cirflow.schemas.errors import CirflowError

# the rows' schema lives with the other table schemas (the mvft_training_data stage declares it without torch)
from cirflow.schemas.tables import MVFT_TRAINING_ROWS as TRAINING_ROWS


class TrainableMVFT(MVFTModel):
    """MVFTModel whose trained folder is a complete MVFT model folder (see the module docstring)."""

    def export_extras(self, folder) -> None:
        self.save_pretrained(folder)  # overwrites the engine's model.safetensors with BLIP-2-keyed weights


def build(base: str) -> TrainableMVFT:
    m = MVFTModel.from_pretrained(base)
    return TrainableMVFT(m.blip, m.tokenizer, m.image_processor, m.settings).train()


def dataset(tables: dict[str, list[str]], base: str) -> MVFTDataset:
    from pathlib import Path

    from transformers import AutoTokenizer, BlipImageProcessor

    from cirflow.models.mvft.model import SETTINGS_FILE, MVFTSettings

    paths = [p for ps in tables.values() for p in ps]
    if not paths:
        raise CirflowError("MVFT training: no training-data table")
    t = pa.concat_tables([pq.read_table(p) for p in paths])
    missing = [c for c in TRAINING_ROWS.names if c not in t.column_names]
    if missing:
        raise CirflowError(f"MVFT training data lacks columns {missing}")
    # a deterministic item order, whatever the shard layout of the input artifact
    rows = sorted(t.select(TRAINING_ROWS.names).to_pylist(), key=lambda r: (r["image_id"], r["sample"]))
    settings_file = Path(base) / SETTINGS_FILE
    settings = (MVFTSettings.model_validate_json(settings_file.read_text()) if settings_file.is_file()
                else MVFTSettings())
    return MVFTDataset(rows, AutoTokenizer.from_pretrained(base), BlipImageProcessor.from_pretrained(base),
                       settings.max_text_length, {"items": len(rows), "images": len({r["image_id"] for r in rows})})


def loss(model, batch, temperature: float = 0.07, use_Lt: bool = True, use_Lc: bool = True):
    return MVFTLoss(temperature=temperature, use_Lt=use_Lt, use_Lc=use_Lc)(model, batch)


def collate(items):
    return _collate(items)
