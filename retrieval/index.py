"""FAISS indexes for large galleries (inner product on L2-normalised rows = cosine).

Benchmark evaluation uses kind "exact" (cirflow.retrieval.topk) and never reaches this module. faiss-gpu is
used when it is installed, a GPU is visible and `use_gpu` allows; faiss-cpu otherwise. HNSW has no GPU
version in FAISS and stays on the CPU. GPU k-selection is capped at k <= 2048 (faiss #2103).
"""

from __future__ import annotations

import numpy as np

from cirflow.schemas.errors import ConfigError
from cirflow.schemas.index import IndexConfig

# FAISS warns below 39 training points per centroid; we shrink nlist instead of training a poor quantizer.
_MIN_POINTS_PER_LIST = 39


def _faiss():
    import faiss  # late: only index users pay for it

    return faiss


def gpu_available() -> bool:
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(emb: np.ndarray, cfg: IndexConfig):
    """A searchable faiss index over the rows of `emb` (row i gets id i)."""
    if cfg.kind == "exact":
        raise ConfigError('index kind "exact" has no FAISS index: use cirflow.retrieval.topk.topk')
    faiss = _faiss()
    x = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = x.shape
    if cfg.kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif cfg.kind == "ivf":
        nlist = max(1, min(cfg.nlist, n // _MIN_POINTS_PER_LIST))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(cfg.nprobe, nlist)
    elif cfg.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = cfg.ef_search
    else:  # pragma: no cover - pydantic already restricts kind
        raise ConfigError(f"unknown index kind {cfg.kind!r}")
    index = _to_gpu_if_wanted(index, cfg)
    index.add(x)
    return index


def search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores [nQ, k] float32, ids [nQ, k] int64); approximate kinds may return id -1 / score -inf padding."""
    k = min(int(k), index.ntotal)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


def on_gpu(index) -> bool:
    faiss = _faiss()
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def save_index(index, path: str) -> None:
    """Local files via faiss.write_index; fsspec URLs ("s3://...", "memory://...") via serialised bytes."""
    faiss = _faiss()
    if on_gpu(index):
        index = faiss.index_gpu_to_cpu(index)
    if "://" in path and not path.startswith("file://"):
        import fsspec

        with fsspec.open(path, "wb") as f:
            f.write(faiss.serialize_index(index).tobytes())
    else:
        faiss.write_index(index, path.removeprefix("file://"))


def load_index(path: str, cfg: IndexConfig | None = None):
    """Read an index written by save_index; moved to the GPU when cfg allows (default "auto")."""
    faiss = _faiss()
    if "://" in path and not path.startswith("file://"):
        import fsspec

        with fsspec.open(path, "rb") as f:
            index = faiss.deserialize_index(np.frombuffer(f.read(), dtype=np.uint8))
    else:
        index = faiss.read_index(path.removeprefix("file://"))
    return _to_gpu_if_wanted(index, cfg or IndexConfig())


def describe_index(index, cfg: IndexConfig) -> dict:
    """What a ranking's metadata records about the search that produced it."""
    info = {"kind": cfg.kind, "approximate": cfg.approximate, "gpu": on_gpu(index)}
    if cfg.kind == "ivf":
        ivf = _faiss().extract_index_ivf(index)
        info |= {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe)}
    elif cfg.kind == "hnsw":
        info |= {"hnsw_m": cfg.hnsw_m, "ef_search": cfg.ef_search}
    return info


def _to_gpu_if_wanted(index, cfg: IndexConfig):
    if cfg.use_gpu is False or cfg.kind == "hnsw":
        return index
    if not gpu_available():
        if cfg.use_gpu is True:
            raise ConfigError("use_gpu=True but faiss-gpu or a visible GPU is missing; use use_gpu='auto' or False")
        return index
    global _GPU_RES
    faiss = _faiss()
    if _GPU_RES is None:
        _GPU_RES = faiss.StandardGpuResources()  # one per process, kept alive as long as any GPU index may live
    return faiss.index_cpu_to_gpu(_GPU_RES, 0, index)


_GPU_RES = None
