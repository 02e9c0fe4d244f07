"""embed_texts: texts (composed queries, rewritten captions, gallery captions) or the raw modifications →
encoder features keyed by the id the texts belong to.

Text queries are embedded once per (text artifact, encoder).

The encoder's weights hash is part of the key (EncoderConfig.key_fields), so two fine-tuned checkpoints in the
same folder never share features. Shared helpers: tasks/embeddings.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.errors import CirflowError
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.embeddings import EncoderRuntime, EncoderStage, embeddings_output, encoder_runtime, reduce_samples
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.stage import Context, Params, execute

if TYPE_CHECKING:  # torch: the encoder is only an annotation here, and `--plan` imports this module
    from cirflow.models.encoder import OpenClipEncoder


class EmbedTextsParams(Params):
    encoder: EncoderConfig
    kind: Literal["query", "image"]
    samples: Literal["first", "mean", "each"]
    source: Literal["texts", "modification"]
    fallback: str | None


class EmbedTexts(EncoderStage):
    name, version = "embed_texts", "1"
    Params, Runtime = EmbedTextsParams, EncoderRuntime
    inputs = ("bench", "texts")
    outputs = {"data": embeddings_output}

    def items(self, ctx: Context):
        p = ctx.params
        groups, stats = _text_groups(ctx.inputs["bench"], ctx.inputs.get("texts"), p.kind, p.samples,
                                     p.fallback or "modification")
        ctx.scratch.update(groups=groups, text_stats=stats, n_items=len(groups))
        return list(groups)  # sharded over ids, so a mean never spans two shards

    def compute(self, ctx: Context, ids):
        flat = [(i, n, text) for i in ids for n, text in ctx.scratch["groups"][i]]
        emb = ctx.model("encoder").encode_texts([t for _, _, t in flat], progress=ctx.runtime.progress)
        return reduce_samples(flat, emb, ctx.params.samples)

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch["text_stats"] | {"ids": ctx.scratch["n_items"]}


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
    params = EmbedTextsParams(encoder=cfg, kind=kind, samples=samples,
                              source="texts" if texts is not None else "modification",
                              fallback=fallback if texts is not None and kind == "query" else None)
    return execute(EmbedTexts, store, {"bench": bench, "texts": texts}, params,
                   EncoderRuntime(**encoder_runtime(cfg, shard_size, progress)), {"encoder": encoder})


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
