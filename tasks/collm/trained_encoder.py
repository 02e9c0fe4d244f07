"""What the embed stages of the trained CIR models (CoLLM, InstructCIR) share: the model's identity in the key, its
folder in the runtime, the eval-time preprocessing of its vision tower, and L2-normalised features as the
embeddings table `retrieve` reads.

The key holds the training artifact (stage + key), never the folder: a store fetched to another machine (another
folder) recomputes nothing, and two trainings never share features. A stage writes only `side` (gallery images by
image_id, or queries by query_id), how its model loads, its preprocessing and `encode`.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, Sequence

import numpy as np

from cirflow.tasks.embeddings import embeddings_output, embeddings_table
from cirflow.tasks.stage import Context, Params, Runtime, Stage, execute


class TrainedModelParams(Params):
    model: dict  # {"stage": "train_collm_triplets", "key": "<artifact key>"}: which stored training
    precision: str = "fp32"


class TrainedModelRuntime(Runtime):
    shard_size: int = 1024
    model_dir: str = ""  # the trained model's local folder (resolve_model_ref): found at run time, not keyed
    device: str = "auto"
    batch_size: int = 32


def device_of(name: str) -> str:
    import torch

    return name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def model_identity(art) -> dict:
    """The key form of a stored trained model."""
    return {"stage": art.stage, "key": art.key}


def load_pixels(paths: Sequence[str], boxes: Sequence, pre: dict):
    """[B, 3, H, W] with the tower's eval transform (GeneCIS crop boxes applied first)."""
    import torch

    from cirflow.models.collm.vision import image_transform
    from cirflow.models.images import load_image

    tf = image_transform(pre)
    return torch.stack([tf(load_image(p, b)) for p, b in zip(paths, boxes)])


def query_items(bench) -> list[dict]:
    """Benchmark queries with their reference image's path and crop."""
    images = {r["image_id"]: r for r in bench.read("images", columns=["image_id", "path", "crop_box"]).to_pylist()}
    queries = bench.read("queries", columns=["query_id", "reference_id", "modification"]).to_pylist()
    return [{**q, "path": images[q["reference_id"]]["path"], "crop_box": images[q["reference_id"]]["crop_box"]}
            for q in queries]


def _autocast(device: str, precision: str):
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


class TrainedEmbedStage(Stage):
    Params, Runtime = TrainedModelParams, TrainedModelRuntime
    inputs = ("bench",)
    outputs = {"data": embeddings_output}
    side: ClassVar[str] = "gallery"  # "gallery": every benchmark image; "queries": every query

    def load(self, runtime: TrainedModelRuntime):
        raise NotImplementedError

    def preprocess(self, model_dir: str) -> dict:
        raise NotImplementedError

    def encode(self, ctx: Context, model, rows: list[dict], pixels):
        """Features [B, D] of one batch (`pixels` None when `needs_pixels` says so)."""
        raise NotImplementedError

    def needs_pixels(self, ctx: Context) -> bool:
        return True

    def items(self, ctx: Context):
        bench = ctx.inputs["bench"]
        if self.side == "queries":
            return query_items(bench)
        return bench.read("images", columns=["image_id", "path", "crop_box"]).to_pylist()

    def compute(self, ctx: Context, items):
        import torch

        model, rt = ctx.model(self.models[0]), ctx.runtime
        pre = self.preprocess(rt.model_dir) if self.needs_pixels(ctx) else None
        device = str(next(model.parameters()).device)
        out = []
        with torch.no_grad():
            for start in range(0, len(items), rt.batch_size):
                rows = items[start:start + rt.batch_size]
                px = (load_pixels([r["path"] for r in rows], [r["crop_box"] for r in rows], pre)
                      if pre is not None else None)
                with _autocast(device, ctx.params.precision):
                    out.append(self.encode(ctx, model, rows, px))
        # cosine retrieval (both papers): rows L2-normalised, float32
        feats = torch.nn.functional.normalize(torch.cat(out).float(), dim=-1).cpu().numpy().astype(np.float32)
        return embeddings_table([r["query_id" if self.side == "queries" else "image_id"] for r in items], feats)

    def model_factory(self, slot: str, ctx: Context):
        return self.load(ctx.runtime)


def run_embed(stage: type[TrainedEmbedStage], store, bench, model: dict, model_dir: str, *, precision: str = "fp32",
              device: str = "auto", batch_size: int = 32, shard_size: int = 1024, encoder=None, progress: bool = True,
              params: type[TrainedModelParams] = TrainedModelParams, **extra):
    """Run one of the trained-model embed stages (`extra`: its own params fields, e.g. CoLLM's `query`)."""
    return execute(stage, store, {"bench": bench}, params(model=model, precision=precision, **extra),
                   TrainedModelRuntime(model_dir=model_dir, device=device, batch_size=batch_size,
                                       shard_size=shard_size, progress=progress), {stage.models[0]: encoder})
