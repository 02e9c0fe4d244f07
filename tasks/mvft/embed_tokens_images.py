"""embed_tokens_images (mvft-ji.txt eqs. 10 / 16): k×d token features of every image of a benchmark (gallery,
references, GeneCIS crops), with the MVFT VLM (trained or base)."""

from __future__ import annotations

from cirflow.tasks.mvft.tokens import TokenRuntime, load_encoder, schema_of, to_table
from cirflow.tasks.stage import Context, Params, Stage


class EmbedTokensParams(Params):
    model: dict  # the encoder's identity: weights sha256, k, d, settings (train_mvft.base_identity)
    precision: str = "fp32"


class EmbedTokensImages(Stage):
    name, version = "embed_tokens_images", "1"
    Params, Runtime = EmbedTokensParams, TokenRuntime
    inputs = ("bench",)
    outputs = {"data": schema_of}
    models = ("mvft",)

    def items(self, ctx: Context):
        return ctx.inputs["bench"].read("images", columns=["image_id", "path", "crop_box"]).to_pylist()

    def compute(self, ctx: Context, items):
        from cirflow.models.mvft.encode import encode_images  # torch when a model runs, not at `--plan`

        feats = encode_images(ctx.model("mvft"), [r["path"] for r in items], [r["crop_box"] for r in items],
                              batch_size=ctx.runtime.batch_size, precision=ctx.params.precision)
        return to_table([r["image_id"] for r in items], feats)

    def model_factory(self, slot: str, ctx: Context):
        return load_encoder(ctx.runtime)


def run(store, bench, model_dir: str, model: dict, *, precision: str = "fp32", device: str = "auto",
        batch_size: int = 64, shard_size: int = 1024, encoder=None, progress: bool = True):
    from cirflow.tasks.stage import execute

    return execute(EmbedTokensImages, store, {"bench": bench}, EmbedTokensParams(model=model, precision=precision),
                   TokenRuntime(model_dir=model_dir, device=device, batch_size=batch_size, shard_size=shard_size,
                                progress=progress), {"mvft": encoder})
