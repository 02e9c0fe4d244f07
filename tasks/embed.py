"""embed_images / embed_texts: encoder features as `fixed_size_list<float32>` Parquet tables keyed by id.

The gallery is embedded once per (benchmark images, encoder) and reused by every variant; text queries once per
(text artifact, encoder). The encoder's weights hash is part of the key (EncoderConfig.key_fields), so two
fine-tuned checkpoints in the same folder never share features.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import pyarrow as pa
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
                 encoder: Lazy[OpenClipEncoder] | None = None, reuse: bool = True, progress: bool = True) -> Artifact:
    """Image features keyed by image_id. `reuse`: features of the same images (same content hash when the table
    has one — collections —, else same path and crop) stored by an earlier run of this encoder are copied
    instead of recomputed, so a grown collection or an edited annotation file embeds only the new images."""
    params = {"encoder": cfg.key_fields()}
    run_ = begin(store, "embed_images", VERSION, params, inputs={"bench": bench},
                 runtime={"shard_size": shard_size, "batch_size": cfg.batch_size, "device": cfg.device})
    if run_.cached:
        return run_.artifact
    images = bench.read("images")
    ids, paths, boxes = (images.column(c).to_pylist() for c in ("image_id", "path", "crop_box"))
    prints = _fingerprints(images)
    donor = _donor_features(store, run_) if reuse else {}
    lazy = encoder or Lazy(lambda: OpenClipEncoder(cfg))
    reused = 0
    shards = list(run_.pending(len(ids), shard_size))
    for shard in tqdm(shards, desc="embed_images", unit="shard", disable=not progress or len(shards) < 2):
        t0 = time.perf_counter()
        rows = range(shard.start, shard.stop)
        todo = [r for r in rows if prints[r] not in donor]
        emb, failures = (lazy.get().encode_images_safe([paths[r] for r in todo], [boxes[r] for r in todo],
                                                        progress=progress) if todo else (None, []))
        computed = {r: emb[k] for k, r in enumerate(todo)} if todo else {}
        failed = {todo[k] for k, _ in failures}
        keep = [r for r in rows if r not in failed]
        reused += len(rows) - len(todo)
        vectors = np.stack([donor[prints[r]] if r not in computed else computed[r] for r in keep]) if keep else \
            np.zeros((0, lazy.get().dim), np.float32)
        run_.commit(shard, embeddings_table([ids[r] for r in keep], vectors), seconds=time.perf_counter() - t0)
        # unreadable images are recorded beside the features, never replaced by zeros
        fail_shard = type(shard)("failures", shard.index, shard.start, shard.stop)
        run_.commit(fail_shard, pa.Table.from_pylist(
            [{"id": ids[todo[k]], "path": paths[todo[k]], "error": str(e)} for k, e in failures], schema=FAILURES))
    failures = run_.committed("failures")
    return run_.finish(stats={"images": len(ids), "failed": failures.num_rows, "reused_this_run": reused,
                              "failures": failures.slice(0, 20).to_pylist(),
                              "dim": lazy.get().dim if lazy.loaded else None},
                       timings=_per_item(run_, len(ids)))


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


def embed_texts(store: ArtifactStore, cfg: EncoderConfig, *, bench: Artifact, texts: Artifact | None = None,
                kind: Literal["query", "image"] = "query", samples: Literal["first", "mean", "each"] = "first",
                fallback: str = "modification", shard_size: int = 4096, encoder: Lazy[OpenClipEncoder] | None = None,
                progress: bool = True) -> Artifact:
    """Text features keyed by the id the texts belong to.

    kind="query": one feature per query — the composed/rewritten text when `texts` is given (PEFUSE T→I,
    CIReVL), else the raw modification; a query whose text failed falls back to its modification (counted) or
    fails the stage. kind="image": gallery captions keyed by image_id (PEFUSE T→T, I→T); failed captions are
    left out and counted, so retrieval drops those images visibly.
    samples: "first" uses sample 0; "mean" averages the normalised features of all samples and re-normalises
    (SEARLE's two-caption average); "each" keeps one row per (id, sample) with a `sample` column (LDRE).
    """
    if kind == "image" and texts is None:
        raise CirflowError("embed_texts(kind='image') needs a captions artifact")
    inputs = {"bench": bench} | ({"texts": texts} if texts is not None else {})
    params = {"encoder": cfg.key_fields(), "kind": kind, "samples": samples,
              "source": "texts" if texts is not None else "modification",
              "fallback": fallback if texts is not None and kind == "query" else None}
    run_ = begin(store, "embed_texts", VERSION, params, inputs=inputs,
                 runtime={"shard_size": shard_size, "batch_size": cfg.batch_size, "device": cfg.device})
    if run_.cached:
        return run_.artifact
    groups, stats = _text_groups(bench, texts, kind, samples, fallback)
    ids = list(groups)
    lazy = encoder or Lazy(lambda: OpenClipEncoder(cfg))
    for shard in run_.pending(len(ids), shard_size):  # sharded over ids, so a mean never spans two shards
        t0 = time.perf_counter()
        shard_ids = ids[shard.start:shard.stop]
        flat = [(i, n, text) for i in shard_ids for n, text in groups[i]]
        emb = lazy.get().encode_texts([t for _, _, t in flat], progress=progress)
        run_.commit(shard, _reduce(flat, emb, samples), seconds=time.perf_counter() - t0)
    return run_.finish(stats=stats | {"ids": len(ids)}, timings=_per_item(run_, len(ids)))


def _text_groups(bench: Artifact, texts: Artifact | None, kind: str, samples: str, fallback: str):
    """{id: [(sample, text), ...]} in a stable order, plus counts of what was substituted or left out."""
    rows = [] if texts is None else texts.read(columns=["id", "sample", "text", "status"]).to_pylist()
    ok: dict[str, list[tuple[int, str]]] = {}
    bad: dict[str, str] = {}
    for r in rows:
        if r["status"] == "ok" and r["text"] and r["text"].strip():
            ok.setdefault(r["id"], []).append((r["sample"], r["text"]))
        else:
            bad.setdefault(r["id"], r["status"])
    for v in ok.values():
        v.sort()
    if kind == "image":
        order = [i for i in bench.read("images", columns=["image_id"]).column("image_id").to_pylist() if i in ok]
        groups = {i: ok[i][:1] if samples == "first" else ok[i] for i in order}
        missing = sorted(set(bad) - set(ok))
        return groups, {"texts": len(rows), "left_out": len(missing), "left_out_ids": missing[:20]}
    queries = bench.read("queries", columns=["query_id", "modification"])
    groups, fallbacks = {}, []
    for qid, mod in zip(queries.column("query_id").to_pylist(), queries.column("modification").to_pylist()):
        if texts is None:
            groups[qid] = [(0, mod)]
        elif qid in ok:
            groups[qid] = ok[qid][:1] if samples == "first" else ok[qid]
        elif fallback == "fail":
            raise CirflowError(f"embed_texts: query {qid} has no usable text ({bad.get(qid, 'missing')}); "
                               "set compose.fallback: modification to embed the raw modification instead")
        else:
            groups[qid] = [(0, mod)]
            fallbacks.append(qid)
    return groups, {"texts": len(rows), "fallbacks": len(fallbacks), "fallback_ids": fallbacks[:20]}


def _reduce(flat: list[tuple[str, int, str]], emb: np.ndarray, samples: str) -> pa.Table:
    if samples == "each":
        t = embeddings_table([i for i, _, _ in flat], emb)
        return t.append_column("sample", pa.array([n for _, n, _ in flat], pa.int32()))
    return _mean_by_id(flat, emb, normalize=True)


def _per_item(run_, n: int) -> dict:
    secs = run_.shard_seconds("data")
    return {"model_seconds_per_item": round(secs / n, 6) if n else 0.0}


def embed_generated(store: ArtifactStore, generated: Artifact, cfg: EncoderConfig, *,
                    reduce: Literal["mean", "normalized_mean", "each"] = "normalized_mean",
                    max_samples: int | None = None, shard_size: int = 1024,
                    encoder: Lazy[OpenClipEncoder] | None = None, progress: bool = True) -> Artifact:
    """Features of generated images (PEFUSE I→I / I→T queries, IP-CIR proxies), keyed by the query they were
    generated for. N images per query are combined by `reduce`: "normalized_mean" for retrieval, "mean" (not
    re-normalised) for IP-CIR's proxy feature f_p, "each" keeps one row per image with a `sample` column.
    `max_samples` uses only samples 0..max_samples-1 (IP-CIR's number-of-proxies ablation, from stored images)."""
    params = {"encoder": cfg.key_fields(), "reduce": reduce, "max_samples": max_samples}
    run_ = begin(store, "embed_generated", VERSION, params, inputs={"images": generated},
                 runtime={"shard_size": shard_size, "batch_size": cfg.batch_size, "device": cfg.device})
    if run_.cached:
        return run_.artifact
    rows = [r for r in generated.read(columns=["id", "sample", "file", "status"]).to_pylist()
            if r["status"] == "ok" and (max_samples is None or r["sample"] < max_samples)]
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    ids = list(by_id)
    lazy = encoder or Lazy(lambda: OpenClipEncoder(cfg))
    failed_total = 0
    for shard in run_.pending(len(ids), shard_size):
        t0 = time.perf_counter()
        items = [r for i in ids[shard.start:shard.stop] for r in sorted(by_id[i], key=lambda r: r["sample"])]
        emb, failures = lazy.get().encode_images_safe([generated.file_path(r["file"]) for r in items], None,
                                                      progress=progress)
        bad = {i for i, _ in failures}
        failed_total += len(bad)
        flat = [(r["id"], r["sample"], "") for k, r in enumerate(items) if k not in bad]
        emb = emb[[k for k in range(len(items)) if k not in bad]]
        if reduce == "each":
            table = _reduce(flat, emb, "each")
        else:
            table = _mean_by_id(flat, emb, normalize=reduce == "normalized_mean")
        run_.commit(shard, table, seconds=time.perf_counter() - t0)
    all_ids = generated.read(columns=["id"]).column("id").to_pylist()
    without = sorted(set(all_ids) - set(ids))
    return run_.finish(stats={"images": len(rows), "ids": len(ids), "unreadable_images": failed_total,
                              "ids_without_images": len(without), "ids_without_images_examples": without[:20]},
                       timings=_per_item(run_, len(rows)))


def _mean_by_id(flat, emb: np.ndarray, normalize: bool) -> pa.Table:
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
