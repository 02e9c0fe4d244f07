"""Config of the nearest-neighbour search behind retrieval.

"exact" (the default, and the only kind benchmark numbers should be reported with) is a chunked matmul +
top-k with a deterministic tie rule (cirflow.retrieval.topk), no FAISS. The FAISS kinds exist for large
galleries: "flat" is exact up to float summation order (no tie rule), "ivf" and "hnsw" are approximate.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class IndexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["exact", "flat", "ivf", "hnsw"] = "exact"
    nlist: int = Field(1024, ge=1)  # ivf: inverted lists (clipped to n/39 so training has enough points per centroid)
    nprobe: int = Field(32, ge=1)  # ivf: lists visited per query
    hnsw_m: int = Field(32, ge=1)  # hnsw: graph degree
    ef_search: int = Field(128, ge=1)  # hnsw: search beam width
    use_gpu: bool | Literal["auto"] = "auto"  # "auto": faiss-gpu when installed and a GPU is visible; True: require it

    @property
    def approximate(self) -> bool:
        return self.kind in ("ivf", "hnsw")
