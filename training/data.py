"""Deterministic data order: which samples each process reads at each micro-step, as a pure function of
(seed, epoch, step, rank), never of a DataLoader's global RNG, so a resumed run reads what an uninterrupted one
would and N processes at batch B/N read exactly what one process reads at batch B.

An optimizer step consumes `effective` samples of the epoch's permutation; they are split into
`accumulation` micro-steps of `micro = per_device × world` samples, and each micro-step's slice is split over
the ranks in rank order. The epoch's last incomplete global batch is dropped, so every step sees `effective`
samples.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    # SeedSequence([seed, epoch]): independent streams per epoch, no state carried between epochs
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch]))).permutation(n)


def steps_per_epoch(n: int, effective: int) -> int:
    return n // effective


def rank_batches(perm: np.ndarray, step: int, effective: int, per_device: int, world: int,
                 rank: int) -> list[list[int]]:
    """The micro-batches (lists of dataset indices) rank `rank` reads for optimizer step `step` of an epoch."""
    batch = perm[step * effective:(step + 1) * effective]
    micro = per_device * world
    return [batch[s + rank * per_device:s + (rank + 1) * per_device].tolist() for s in range(0, effective, micro)]


class ParquetDataset(torch.utils.data.Dataset):
    """Rows of Parquet files as dicts; list columns become float32/int64 numpy arrays (stacked by
    default_collate), scalars and strings stay Python values."""

    def __init__(self, paths: Sequence[str], columns: Sequence[str] | None = None):
        tables = [pq.read_table(p, columns=list(columns) if columns else None) for p in paths]
        self.table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        self._cols = {name: _column(self.table.column(name)) for name in self.table.column_names}

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {name: col[i] for name, col in self._cols.items()}


def _column(col: pa.ChunkedArray):
    t = col.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        arr = col.combine_chunks()
        values = arr.flatten().to_numpy(zero_copy_only=False)
        # one writable copy per column: torch warns on (and must not write into) Arrow's read-only buffers
        values = np.array(values, dtype=np.float32 if values.dtype.kind == "f" else np.int64)
        if pa.types.is_fixed_size_list(t):
            offsets = np.arange(len(arr) + 1) * t.list_size
        else:
            offsets = arr.offsets.to_numpy()
            offsets = offsets - offsets[0]  # a sliced array's offsets do not start at 0
        return [values[offsets[i]:offsets[i + 1]] for i in range(len(arr))]
    return col.to_pylist()


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
