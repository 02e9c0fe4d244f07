"""Held-out retrieval for the CoLLM / InstructCIR learning tests, through the project's own retrieval and metric
code: exact top-k (cirflow.retrieval.topk) over a held-out gallery, then CIRR-style Recall@K
(cirflow.evaluation.cirr: the target among the first K, in percent)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pyarrow as pa
import torch

from cirflow.evaluation.cirr import cirr_metrics
from cirflow.retrieval.topk import topk


def recall(queries: torch.Tensor, gallery: torch.Tensor, gallery_ids: Sequence[str],
           targets: Sequence[str]) -> dict[str, float]:
    """{"recall@1", "recall@2", "recall@5", "recall@10", "recall@50"} of cosine-ranked `gallery` per query."""
    q = torch.nn.functional.normalize(queries.detach().float(), dim=-1).numpy()
    g = torch.nn.functional.normalize(gallery.detach().float(), dim=-1).numpy()
    _, idx = topk(q, g, min(50, len(gallery_ids)))
    lists = {str(i): [gallery_ids[j] for j in row] for i, row in enumerate(idx)}
    table = pa.table({"query_id": [str(i) for i in range(len(targets))], "target_ids": [[t] for t in targets]})
    return cirr_metrics(table, lists)


class HeldOutScenes:
    """New drawings of every scene of test_collm_shapes (the gallery: 48 images) and 48 triplets over them."""

    def __init__(self, root: Path):
        import test_collm_shapes as shapes

        from cirflow.models.collm.vision import image_transform
        from cirflow.models.images import load_image

        self.rows = shapes.make_images(root, copies=1, seed=9)
        self.ids = [r["image_id"] for r in self.rows]
        tf = image_transform(shapes.PRE)
        self.pixels = torch.stack([tf(load_image(r["path"])) for r in self.rows])
        self.triplets = shapes.triplet_rows(self.rows, 48, seed=5)
