"""What the encoder stages share (embed_images, embed_texts, embed_generated in tasks/runs/, and every stage
that writes features: robust_proxy, ldre_query, reference_mean, CoLLM's trained encoder): the features table
(`fixed_size_binary` float32 vectors keyed by id), the encoder runtime and slot, and the per-id reductions.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.tables import embeddings_schema
from cirflow.tasks.stage import Context, Runtime, Stage


def embeddings_table(ids: list[str], emb: np.ndarray) -> pa.Table:
    emb = np.ascontiguousarray(emb, dtype="<f4")  # little-endian bytes, whatever the host
    n, dim = emb.shape
    col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * dim), n, [None, pa.py_buffer(emb)])
    return pa.Table.from_arrays([pa.array(ids, pa.string()), col], schema=embeddings_schema(dim))


def embedding_dim(t: pa.DataType) -> int:
    """Vector width of an embedding column: fixed_size_binary(4 * dim), or fixed_size_list[dim] (older)."""
    return t.byte_width // 4 if pa.types.is_fixed_size_binary(t) else t.list_size


def embeddings_output(table: pa.Table) -> pa.Schema:
    """The declared features table: id + float32 features of the width the encoder gives (fixed by the first
    shard a run commits), and a `sample` column for per-sample features."""
    schema = embeddings_schema(embedding_dim(table.schema.field("embedding").type))
    return schema.append(pa.field("sample", pa.int32())) if "sample" in table.column_names else schema


class EncoderRuntime(Runtime):
    shard_size: int = 4096
    batch_size: int = 64  # recorded from the encoder config: speed, not results (up to float noise)
    device: str = "auto"


def encoder_runtime(cfg: EncoderConfig, shard_size: int, progress: bool, **extra) -> dict:
    return dict(shard_size=shard_size, batch_size=cfg.batch_size, device=cfg.device, progress=progress, **extra)


class EncoderStage(Stage):
    """The encoder family: one `encoder` slot, loaded from the params' EncoderConfig when no handle is given."""

    models = ("encoder",)

    def model_factory(self, slot: str, ctx: Context):
        from cirflow.models.encoder import OpenClipEncoder  # torch, when a model loads: not at `--plan`

        return OpenClipEncoder(ctx.params.encoder)

    def timings(self, ctx: Context) -> dict:
        return per_item_timings(ctx.run, ctx.scratch.get("n_items", 0))


def reduce_samples(flat: list[tuple[str, int, str]], emb: np.ndarray, samples: str) -> pa.Table:
    if samples == "each":
        t = embeddings_table([i for i, _, _ in flat], emb)
        return t.append_column("sample", pa.array([n for _, n, _ in flat], pa.int32()))
    return mean_by_id(flat, emb, normalize=True)


def per_item_timings(run_, n: int) -> dict:
    secs = run_.shard_seconds("data")
    return {"model_seconds_per_item": round(secs / n, 6) if n else 0.0}


def mean_by_id(flat, emb: np.ndarray, normalize: bool) -> pa.Table:
    order = list(dict.fromkeys(i for i, _, _ in flat))
    pos = {i: k for k, i in enumerate(order)}
    out = np.zeros((len(order), emb.shape[1] if emb.ndim == 2 else 0), np.float32)
    counts = np.zeros(len(order), np.float32)
    idx = [pos[i] for i, _, _ in flat]
    np.add.at(out, idx, emb)
    np.add.at(counts, idx, 1.0)
    out /= np.maximum(counts, 1.0)[:, None]
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return embeddings_table(order, out)
