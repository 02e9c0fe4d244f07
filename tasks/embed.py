"""embed_images / embed_texts: encoder features as `fixed_size_list<float32>` Parquet tables keyed by id.

The gallery is embedded once per (benchmark images, encoder) and reused by every variant; text queries once per
(text artifact, encoder). The encoder's weights hash is part of the key (EncoderConfig.key_fields), so two
fine-tuned checkpoints in the same folder never share features.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from cirflow.models.encoder import OpenClipEncoder
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.tables import embeddings_schema
from cirflow.storage import Artifact, ArtifactStore, begin
from cirflow.tasks.lazy import Lazy

VERSION = "1"
FAILURES = pa.schema([("id", pa.string()), ("path", pa.string()), ("error", pa.string())])


def embeddings_table(ids: list[str], emb: np.ndarray) -> pa.Table:
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
    return pa.Table.from_arrays([pa.array(ids, pa.string()), col], schema=embeddings_schema(emb.shape[1]))


def embed_images(store: ArtifactStore, bench: Artifact, cfg: EncoderConfig, *, shard_size: int = 4096,
                 encoder: Lazy[OpenClipEncoder] | None = None, progress: bool = True) -> Artifact:
    params = {"encoder": cfg.key_fields()}
    run_ = begin(store, "embed_images", VERSION, params, inputs={"bench": bench},
                 runtime={"shard_size": shard_size, "batch_size": cfg.batch_size, "device": cfg.device})
    if run_.cached:
        return run_.artifact
    images = bench.read("images", columns=["image_id", "path", "crop_box"])
    ids, paths, boxes = (images.column(c).to_pylist() for c in ("image_id", "path", "crop_box"))
    lazy = encoder or Lazy(lambda: OpenClipEncoder(cfg))
    shards = list(run_.pending(len(ids), shard_size))
    for shard in tqdm(shards, desc="embed_images", unit="shard", disable=not progress or len(shards) < 2):
        t0 = time.perf_counter()
        sl = slice(shard.start, shard.stop)
        emb, failures = lazy.get().encode_images_safe(paths[sl], boxes[sl], progress=progress)
        failed = {i for i, _ in failures}
        keep = [i for i in range(len(emb)) if i not in failed]
        shard_ids = ids[sl]
        run_.commit(shard, embeddings_table([shard_ids[i] for i in keep], emb[keep]),
                    seconds=time.perf_counter() - t0)
        # unreadable images are recorded beside the features, never replaced by zeros
        fail_shard = type(shard)("failures", shard.index, shard.start, shard.stop)
        run_.commit(fail_shard, pa.Table.from_pylist(
            [{"id": shard_ids[i], "path": paths[sl][i], "error": str(r)} for i, r in failures], schema=FAILURES))
    failures = run_.committed("failures")
    return run_.finish(stats={"images": len(ids), "failed": failures.num_rows,
                              "failures": failures.slice(0, 20).to_pylist(),
                              "dim": lazy.get().dim if lazy.loaded else None},
                       timings=_per_item(run_, len(ids)))


def embed_texts(store: ArtifactStore, cfg: EncoderConfig, *, bench: Artifact, texts: Artifact | None = None,
                fallback: str = "modification", shard_size: int = 4096, encoder: Lazy[OpenClipEncoder] | None = None,
                progress: bool = True) -> Artifact:
    """Embed one text per query: the composed target text when `texts` is given (PEFUSE T→I), else the raw
    modification. A query whose composition failed falls back to its modification, or fails the stage."""
    inputs = {"bench": bench} | ({"texts": texts} if texts is not None else {})
    params = {"encoder": cfg.key_fields(), "source": "texts" if texts is not None else "modification",
              "fallback": fallback if texts is not None else None}
    run_ = begin(store, "embed_texts", VERSION, params, inputs=inputs,
                 runtime={"shard_size": shard_size, "batch_size": cfg.batch_size, "device": cfg.device})
    if run_.cached:
        return run_.artifact
    queries = bench.read("queries", columns=["query_id", "modification"])
    qids, mods = queries.column("query_id").to_pylist(), queries.column("modification").to_pylist()
    strings, fallbacks = list(mods), []
    if texts is not None:
        t = texts.read(columns=["id", "sample", "text", "status"]).filter(pc.field("sample") == 0)
        composed = dict(zip(t.column("id").to_pylist(), zip(t.column("text").to_pylist(), t.column("status").to_pylist())))
        for i, qid in enumerate(qids):
            text, status = composed.get(qid, (None, "missing"))
            if status == "ok" and text and text.strip():
                strings[i] = text
            elif fallback == "fail":
                raise CirflowError(f"embed_texts: query {qid} has no composed text ({status}); "
                                   "set compose.fallback: modification to embed the raw modification instead")
            else:
                fallbacks.append(qid)
    lazy = encoder or Lazy(lambda: OpenClipEncoder(cfg))
    for shard in run_.pending(len(qids), shard_size):
        t0 = time.perf_counter()
        emb = lazy.get().encode_texts(strings[shard.start:shard.stop], progress=progress)
        run_.commit(shard, embeddings_table(qids[shard.start:shard.stop], emb), seconds=time.perf_counter() - t0)
    return run_.finish(stats={"texts": len(qids), "fallbacks": len(fallbacks), "fallback_ids": fallbacks[:20]},
                       timings=_per_item(run_, len(qids)))


def _per_item(run_, n: int) -> dict:
    secs = run_.shard_seconds("data")
    return {"model_seconds_per_item": round(secs / n, 6) if n else 0.0}
