"""embed_generated: generated images (PEFUSE I→I / I→T queries, IP-CIR proxies) → encoder features keyed by the
query they were generated for, N images per query combined by a reduction.

The encoder's weights hash is part of the key (EncoderConfig.key_fields), so two fine-tuned checkpoints in the
same folder never share features. Shared helpers: tasks/embeddings.py.
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING, Literal

from cirflow.schemas.encoder import EncoderConfig
from cirflow.storage import Artifact, ArtifactStore
from cirflow.storage.item_files import ItemFiles
from cirflow.tasks.embeddings import EncoderRuntime, EncoderStage, embeddings_output, encoder_runtime, mean_by_id, \
    reduce_samples
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.stage import Context, Params, execute

if TYPE_CHECKING:  # torch: the encoder is only an annotation here, and `--plan` imports this module
    from cirflow.models.encoder import OpenClipEncoder


class EmbedGeneratedParams(Params):
    encoder: EncoderConfig
    reduce: Literal["mean", "normalized_mean", "each"]
    max_samples: int | None


class EmbedGenerated(EncoderStage):
    name, version = "embed_generated", "1"
    Params, Runtime = EmbedGeneratedParams, EncoderRuntime
    inputs = ("images",)
    outputs = {"data": embeddings_output}

    def items(self, ctx: Context):
        ms = ctx.params.max_samples
        rows = [r for r in ctx.inputs["images"].read(columns=["id", "sample", "file", "status"]).to_pylist()
                if r["status"] == "ok" and (ms is None or r["sample"] < ms)]
        by_id: dict[str, list[dict]] = {}
        for r in rows:
            by_id.setdefault(r["id"], []).append(r)
        ctx.scratch.update(by_id=by_id, n_items=len(rows), unreadable=0)
        return list(by_id)

    def compute(self, ctx: Context, ids):
        generated = ctx.inputs["images"]
        items = [r for i in ids for r in sorted(ctx.scratch["by_id"][i], key=lambda r: r["sample"])]
        files = ctx.scratch.setdefault("files", ItemFiles(generated))
        # the encoder's loader opens paths: images kept in side-table shards are written to a scratch folder
        # for the shard (separate image files of older artifacts are opened where they are)
        with tempfile.TemporaryDirectory(prefix="cirflow-generated-") as scratch:
            emb, failures = ctx.model("encoder").encode_images_safe([files.local_path(r, scratch) for r in items],
                                                                    None, progress=ctx.runtime.progress)
        bad = {i for i, _ in failures}
        ctx.scratch["unreadable"] += len(bad)
        flat = [(r["id"], r["sample"], "") for k, r in enumerate(items) if k not in bad]
        emb = emb[[k for k in range(len(items)) if k not in bad]]
        if ctx.params.reduce == "each":
            return reduce_samples(flat, emb, "each")
        return mean_by_id(flat, emb, normalize=ctx.params.reduce == "normalized_mean")

    def stats(self, ctx: Context) -> dict:
        ids = ctx.scratch["by_id"]
        without = sorted(set(ctx.inputs["images"].read(columns=["id"]).column("id").to_pylist()) - set(ids))
        return {"images": ctx.scratch["n_items"], "ids": len(ids), "unreadable_images": ctx.scratch["unreadable"],
                "ids_without_images": len(without), "ids_without_images_examples": without[:20]}


def embed_generated(store: ArtifactStore, generated: Artifact, cfg: EncoderConfig, *,
                    reduce: Literal["mean", "normalized_mean", "each"] = "normalized_mean",
                    max_samples: int | None = None, shard_size: int = 1024,
                    encoder: Lazy[OpenClipEncoder] | None = None, progress: bool = True) -> Artifact:
    """Features of generated images (PEFUSE I→I / I→T queries, IP-CIR proxies), keyed by the query they were
    generated for. N images per query are combined by `reduce`: "normalized_mean" for retrieval, "mean" (not
    re-normalised) for IP-CIR's proxy feature f_p, "each" keeps one row per image with a `sample` column.
    `max_samples` uses only samples 0..max_samples-1 (IP-CIR's number-of-proxies ablation, from stored images)."""
    return execute(EmbedGenerated, store, {"images": generated},
                   EmbedGeneratedParams(encoder=cfg, reduce=reduce, max_samples=max_samples),
                   EncoderRuntime(**encoder_runtime(cfg, shard_size, progress)), {"encoder": encoder})
