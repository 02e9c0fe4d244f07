"""Per-slot feature tensors [n, nQ, D] from "each"-sample embedding artifacts, in the benchmark's query order.

LDRE and IP-CIR pair the i-th sampled reference caption (f_o,i) with its edit (f_t,i). A slot can be missing
(a failed caption or rewrite); it is filled with the mean of the item's present slots so one failure does not
zero a term, and the number of filled slots is reported by the stage that uses them.
"""

from __future__ import annotations

import numpy as np

from cirflow.schemas.errors import CirflowError
from cirflow.storage import Artifact


def slot_features(art: Artifact, ids: list[str], n: int) -> tuple[np.ndarray, int]:
    """[n, len(ids), D] from an embeddings artifact with a `sample` column; ids may repeat (shared references)."""
    t = art.read()
    if "sample" not in t.column_names:
        raise CirflowError(f"{art!r} has one feature per id; slot features need embed_texts(samples='each')")
    fids, feats = art.embeddings()
    samples = t.column("sample").to_pylist()
    index: dict[str, dict[int, int]] = {}
    for row, (i, s) in enumerate(zip(fids, samples)):
        index.setdefault(i, {})[s] = row
    out = np.zeros((n, len(ids), feats.shape[1]), np.float32)
    filled = 0
    for q, item in enumerate(ids):
        rows = index.get(item)
        if not rows:
            raise CirflowError(f"{art!r} has no feature for {item!r}")
        mean = feats[list(rows.values())].mean(axis=0)
        for s in range(n):
            if s in rows:
                out[s, q] = feats[rows[s]]
            else:
                out[s, q] = mean
                filled += 1
    return out, filled
