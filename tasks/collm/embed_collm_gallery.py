"""embed_collm_gallery (collm.txt §3.1): f(v) of every benchmark image (gallery, references, GeneCIS crops) with a
trained CoLLM's vision tower, L2-normalised — the target side of retrieval, keyed by image_id."""

from __future__ import annotations

from cirflow.tasks.collm.trained_encoder import TrainedEmbedStage, TrainedModelRuntime, device_of, run_embed


class CoLLMStage(TrainedEmbedStage):
    models = ("collm",)

    def load(self, runtime: TrainedModelRuntime):
        from cirflow.models.collm import CoLLMModel

        return CoLLMModel.from_trained(runtime.model_dir, device=device_of(runtime.device))

    def preprocess(self, model_dir: str) -> dict:
        from cirflow.models.collm.vision import preprocess_config

        return preprocess_config(f"local-dir:{model_dir}/vision")  # the trained folder carries its tower's config


class EmbedCoLLMGallery(CoLLMStage):
    name, version = "embed_collm_gallery", "1"
    side = "gallery"

    def encode(self, ctx, model, rows, pixels):
        return model.encode_image(pixels)


def run(store, bench, model: dict, model_dir: str, **kw):
    return run_embed(EmbedCoLLMGallery, store, bench, model, model_dir, **kw)
