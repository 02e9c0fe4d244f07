"""A small real model for the training-engine tests: a dual encoder (two 2-layer MLPs) trained with in-batch
InfoNCE to match procedural query vectors with their targets (target = tanh(A·query), A fixed by a seed).
Imported by dotted path (`training_toy:...`) in worker processes, so the tests put this folder on PYTHONPATH."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from cirflow.training.data import ParquetDataset
from cirflow.training.dist import all_gather_with_grad

DIM = 16


class ToyDualEncoder(torch.nn.Module):
    def __init__(self, dim: int = DIM, hidden: int = 64, out: int = 32, dropout: float = 0.0):
        super().__init__()

        def mlp():
            return torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(hidden, out))

        self.query, self.target = mlp(), mlp()

    def forward(self, query: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.query(query), dim=-1), F.normalize(self.target(target), dim=-1)


def build(**kwargs) -> ToyDualEncoder:
    return ToyDualEncoder(**kwargs)


def infonce(model, batch, temperature: float = 0.1, sleep: float = 0.0):
    if sleep:
        time.sleep(sleep)  # slows the run so a test can kill it between checkpoints
    q, t = model(batch["query"], batch["target"])
    q, t = all_gather_with_grad(q), all_gather_with_grad(t)
    logits = q @ t.T / temperature
    labels = torch.arange(len(q), device=q.device)
    q2t, t2q = F.cross_entropy(logits, labels), F.cross_entropy(logits.T, labels)
    return {"loss": (q2t + t2q) / 2, "loss_q2t": q2t, "loss_t2q": t2q}


def vectors(n: int, seed: int, map_seed: int = 7) -> pa.Table:
    a = np.random.default_rng(map_seed).normal(size=(DIM, DIM)) / np.sqrt(DIM)
    q = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    t = np.tanh(q @ a).astype(np.float32)
    col = lambda x: pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM)  # noqa: E731
    return pa.table({"query": col(q), "target": col(t)})


def write_vectors(path, n: int, seed: int) -> str:
    pq.write_table(vectors(n, seed), path)
    return str(path)


def dataset(paths: list[str] | None = None, tables: dict[str, list[str]] | None = None) -> ParquetDataset:
    return ParquetDataset(list(paths or []) + [p for ps in (tables or {}).values() for p in ps])


@torch.no_grad()
def recall_at_1(model: ToyDualEncoder, table: pa.Table) -> float:
    model.eval()
    q = torch.tensor(np.stack(table.column("query").to_numpy(zero_copy_only=False)))
    t = torch.tensor(np.stack(table.column("target").to_numpy(zero_copy_only=False)))
    qe, te = model(q, t)
    return float(((qe @ te.T).argmax(1) == torch.arange(len(q))).float().mean())
