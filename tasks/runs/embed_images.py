"""embed_images: a benchmark's (or collection's) images → encoder features, a Parquet table keyed by image_id.

The gallery is embedded once per (benchmark images, encoder) and reused by every variant.

The encoder's weights hash is part of the key (EncoderConfig.key_fields), so two fine-tuned checkpoints in the
same folder never share features. Shared helpers: tasks/embeddings.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from cirflow.schemas.encoder import EncoderConfig
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.embeddings import EncoderRuntime, EncoderStage, embeddings_output, embeddings_table, encoder_runtime
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.stage import Context, Params, execute

if TYPE_CHECKING:  # torch: the encoder is only an annotation here, and `--plan` imports this module
    from cirflow.models.encoder import OpenClipEncoder

FAILURES = pa.schema([("id", pa.string()), ("path", pa.string()), ("error", pa.string())])


class EmbedImagesParams(Params):
    encoder: EncoderConfig  # contributes key_fields(): the weights, never batch size or device


class EmbedImagesRuntime(EncoderRuntime):
    reuse: bool = True


class EmbedImages(EncoderStage):
    name, version = "embed_images", "1"
    Params, Runtime = EmbedImagesParams, EmbedImagesRuntime
    inputs = ("bench",)
    outputs = {"failures": FAILURES, "data": embeddings_output}
    shardable = True

    def items(self, ctx: Context):
        images = ctx.inputs["bench"].read("images")
        ids, paths, boxes = (images.column(c).to_pylist() for c in ("image_id", "path", "crop_box"))
        ctx.scratch.update(n_items=len(ids), reused=0,
                           donor=_donor_features(ctx.store, ctx.run) if ctx.runtime.reuse else {})
        return [{"id": i, "path": p, "box": b, "print": f}
                for i, p, b, f in zip(ids, paths, boxes, _fingerprints(images))]

    def compute(self, ctx: Context, items):
        donor, encoder = ctx.scratch["donor"], ctx.models["encoder"]
        todo = [k for k, it in enumerate(items) if it["print"] not in donor]
        paths, boxes = [items[k]["path"] for k in todo], [items[k]["box"] for k in todo]
        emb, failures = (encoder.get().encode_images_safe(paths, boxes, progress=ctx.runtime.progress)
                         if todo else (None, []))
        computed = {k: emb[j] for j, k in enumerate(todo)}
        failed = {todo[j] for j, _ in failures}
        keep = [k for k in range(len(items)) if k not in failed]
        ctx.scratch["reused"] += len(items) - len(todo)
        vectors = np.stack([computed[k] if k in computed else donor[items[k]["print"]] for k in keep]) if keep \
            else np.zeros((0, encoder.get().dim), np.float32)
        # unreadable images are recorded beside the features, never replaced by zeros
        return {"failures": pa.Table.from_pylist([{"id": items[todo[j]]["id"], "path": items[todo[j]]["path"],
                                                   "error": str(e)} for j, e in failures], schema=FAILURES),
                "data": embeddings_table([items[k]["id"] for k in keep], vectors)}

    def stats(self, ctx: Context) -> dict:
        failures = ctx.run.committed("failures")
        enc = ctx.models["encoder"]
        return {"images": ctx.scratch["n_items"], "failed": failures.num_rows,
                "reused_this_run": ctx.scratch["reused"], "failures": failures.slice(0, 20).to_pylist(),
                "dim": enc.get().dim if enc.loaded else None}


def embed_images(store: ArtifactStore, bench: Artifact, cfg: EncoderConfig, *, shard_size: int = 4096,
                 encoder: Lazy[OpenClipEncoder] | None = None, reuse: bool = True, progress: bool = True,
                 rank: int = 0, world: int = 1) -> Artifact:
    """Image features keyed by image_id. `reuse`: features of the same images (same content hash when the table
    has one — collections —, else same path and crop) stored by an earlier run of this encoder are copied
    instead of recomputed, so a grown collection or an edited annotation file embeds only the new images."""
    return execute(EmbedImages, store, {"bench": bench}, EmbedImagesParams(encoder=cfg),
                   EmbedImagesRuntime(**encoder_runtime(cfg, shard_size, progress, reuse=reuse)), {"encoder": encoder},
                   rank=rank, world=world)


def _fingerprints(images: pa.Table) -> list[tuple]:
    """What makes two image rows the same pixels: the content hash where the table has one, else path and crop."""
    if "sha256" in images.column_names:
        return [("sha256", h) for h in images.column("sha256").to_pylist()]
    return [("path", p, tuple(b) if b else None)
            for p, b in zip(images.column("path").to_pylist(), images.column("crop_box").to_pylist())]


def _donor_features(store: ArtifactStore, run_) -> dict[tuple, np.ndarray]:
    """fingerprint -> feature from the newest other embed_images artifact with exactly these params."""
    others = [m for m in store.manifests()
              if m.stage == "embed_images" and m.key != run_.key and m.version == run_.version and m.params == run_.params]
    if not others:
        return {}
    donor = store.open("embed_images", max(others, key=lambda m: m.created_at).key)
    try:
        source = store.find(donor.manifest.inputs["bench"])
        prints = dict(zip(source.read("images").column("image_id").to_pylist(), _fingerprints(source.read("images"))))
        ids, emb = donor.embeddings()
    except Exception:  # noqa: BLE001 - a donor that cannot be read is just not used; the features get computed
        return {}
    return {prints[i]: emb[k] for k, i in enumerate(ids) if i in prints}
