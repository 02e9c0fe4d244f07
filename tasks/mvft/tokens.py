"""Token features as a Parquet table: one row per image or query, `tokens` = fixed_size_list<fixed_size_list<
float32, d>, k> (a list of k token vectors of d floats). The nested form describes itself: a reader gets k and d
from the schema, with no side record, and a [N, k, d] array comes back without copying per row.

Which model produced them is the stage's key (the weights' sha256); a stored model folder is found through the
runtime (`TokenRuntime.model_dir`), never the key, so moving a folder recomputes nothing.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cirflow.tasks.stage import Runtime


def token_schema(k: int, d: int) -> pa.Schema:
    return pa.schema([pa.field("id", pa.string(), nullable=False),
                      pa.field("tokens", pa.list_(pa.list_(pa.float32(), d), k), nullable=False)])


def schema_of(table: pa.Table) -> pa.Schema:
    t = table.schema.field("tokens").type
    return token_schema(t.list_size, t.value_type.list_size)


def to_table(ids: list[str], feats: np.ndarray) -> pa.Table:
    n, k, d = feats.shape
    flat = pa.array(np.ascontiguousarray(feats, dtype=np.float32).reshape(-1))
    tokens = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, d), k)
    return pa.Table.from_arrays([pa.array(ids, pa.string()), tokens], schema=token_schema(k, d))


def read_tokens(art) -> tuple[list[str], np.ndarray]:
    """(ids, float32 [N, k, d]) of a token-feature artifact."""
    t = art.read("data")
    typ = t.schema.field("tokens").type
    k, d = typ.list_size, typ.value_type.list_size
    col = t.column("tokens").combine_chunks()
    values = col.flatten().flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return t.column("id").to_pylist(), values.reshape(len(col), k, d)


class TokenRuntime(Runtime):
    model_dir: str = ""  # the MVFT model folder (its identity is in the params)
    device: str = "auto"
    batch_size: int = 64


def load_encoder(runtime: TokenRuntime):
    import torch

    from cirflow.models.mvft.model import MVFTModel

    device = runtime.device if runtime.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return MVFTModel.from_pretrained(runtime.model_dir, device=device)
