"""embed_tokens_queries: k×d token features of each benchmark query, one kind per artifact (mvft-ji.txt §3.4,
appendix C):

- "composed"     reference image + modification through the Q-Former (eqs. 8 / 15)
- "target_text"  the MLLM's target text for the query (input `texts`, a compose_target_text artifact; eqs. 17-18)
- "modification" the modification text alone (appendix C "Text-only", "Image + Text")
- "reference"    the reference image alone (appendix C "Image-only", "Image + Text")

Text kinds use `tokens` "query" (the k query tokens, eq. 9) or "cls" (BLIP-2's own [CLS] text feature, [1, d]).
A query whose target text failed gets its modification instead when `fallback` is "modification" (counted in the
stats), or fails the stage with "fail".
"""

from __future__ import annotations

from typing import Literal

from cirflow.schemas.errors import CirflowError
from cirflow.tasks.mvft.tokens import TokenRuntime, load_encoder, schema_of, to_table
from cirflow.tasks.stage import Context, Params, Stage

KINDS = ("composed", "target_text", "modification", "reference")


class EmbedQueriesParams(Params):
    model: dict  # encoder identity (train_mvft.base_identity)
    kind: Literal["composed", "target_text", "modification", "reference"]
    tokens: Literal["query", "cls"] = "query"  # text kinds only
    precision: str = "fp32"
    fallback: Literal["modification", "fail"] | None = None  # target_text only


class EmbedTokensQueries(Stage):
    name, version = "embed_tokens_queries", "1"
    Params, Runtime = EmbedQueriesParams, TokenRuntime
    inputs = ("bench",)  # + "texts" for kind target_text
    outputs = {"data": schema_of}
    models = ("mvft",)

    def items(self, ctx: Context):
        bench = ctx.inputs["bench"]
        images = {r["image_id"]: r for r in bench.read("images", columns=["image_id", "path", "crop_box"]).to_pylist()}
        queries = bench.read("queries", columns=["query_id", "reference_id", "modification"]).to_pylist()
        texts, fallbacks = {}, 0
        if ctx.params.kind == "target_text":
            if "texts" not in ctx.inputs:
                raise CirflowError("embed_tokens_queries: kind target_text needs the `texts` input")
            rows = ctx.inputs["texts"].read("data", columns=["id", "sample", "text", "status"]).to_pylist()
            got = {r["id"]: r["text"] for r in rows if r["sample"] == 0 and r["status"] == "ok" and r["text"]}
            for q in queries:
                if q["query_id"] not in got:
                    if ctx.params.fallback != "modification":
                        raise CirflowError(f"embed_tokens_queries: query {q['query_id']} has no target text "
                                           "(compose.fallback: fail)")
                    fallbacks += 1
                texts[q["query_id"]] = got.get(q["query_id"], q["modification"])
        ctx.scratch["fallbacks"] = fallbacks
        return [{**q, "path": images[q["reference_id"]]["path"], "crop_box": images[q["reference_id"]]["crop_box"],
                 "text": texts.get(q["query_id"], q["modification"])} for q in queries]

    def compute(self, ctx: Context, items):
        from cirflow.models.mvft.encode import encode_composed, encode_images, encode_texts  # torch: not at `--plan`

        p, m, bs = ctx.params, ctx.model("mvft"), ctx.runtime.batch_size
        paths, boxes, texts = [r["path"] for r in items], [r["crop_box"] for r in items], [r["text"] for r in items]
        if p.kind == "composed":
            feats = encode_composed(m, paths, texts, boxes, batch_size=bs, precision=p.precision)
        elif p.kind == "reference":
            feats = encode_images(m, paths, boxes, batch_size=bs, precision=p.precision)
        else:
            feats = encode_texts(m, texts, tokens=p.tokens, batch_size=bs, precision=p.precision)
        return to_table([r["query_id"] for r in items], feats)

    def model_factory(self, slot: str, ctx: Context):
        return load_encoder(ctx.runtime)

    def stats(self, ctx: Context) -> dict:
        return {"target_text_fallbacks": ctx.scratch.get("fallbacks", 0)} if ctx.params.kind == "target_text" else {}


def run(store, bench, model_dir: str, model: dict, kind: str, *, texts=None, tokens: str = "query",
        precision: str = "fp32", fallback: str | None = None, device: str = "auto", batch_size: int = 64,
        shard_size: int = 1024, encoder=None, progress: bool = True):
    from cirflow.tasks.stage import execute

    params = EmbedQueriesParams(model=model, kind=kind, precision=precision,
                                tokens=tokens if kind in ("target_text", "modification") else "query",
                                fallback=fallback if kind == "target_text" else None)
    inputs = {"bench": bench} | ({"texts": texts} if kind == "target_text" else {})
    return execute(EmbedTokensQueries, store, inputs, params,
                   TokenRuntime(model_dir=model_dir, device=device, batch_size=batch_size, shard_size=shard_size,
                                progress=progress), {"mvft": encoder})
