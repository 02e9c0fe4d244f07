"""embed_instructcir_gallery (instructcir.txt §II-B): e_t = g_θ([z_t; φ_t(∅)]) of every benchmark image — the
target encoder with the null-text token (its EMA weights when trained with EMA) — keyed by image_id. The same
for a stage-one model and a stage-two combiner (whose target side is its frozen backbone's)."""

from __future__ import annotations

from pathlib import Path

from cirflow.tasks.collm.trained_encoder import TrainedEmbedStage, TrainedModelRuntime, device_of, run_embed


class InstructCIRStage(TrainedEmbedStage):
    models = ("instructcir",)

    def load(self, runtime: TrainedModelRuntime):
        from cirflow.models.instructcir import load_trained

        return load_trained(runtime.model_dir, device=device_of(runtime.device)).eval()

    def preprocess(self, model_dir: str) -> dict:
        """The CLIP tower's eval preprocessing, from either stage's folder (a combiner keeps it under backbone/)."""
        from cirflow.models.collm.vision import preprocess_config

        folder = Path(model_dir)
        clip = folder / "clip" if (folder / "clip").is_dir() else folder / "backbone" / "clip"
        return preprocess_config(f"local-dir:{clip}")


class EmbedInstructCIRGallery(InstructCIRStage):
    name, version = "embed_instructcir_gallery", "1"
    side = "gallery"

    def encode(self, ctx, model, rows, pixels):
        return model.encode_target(pixels)


def run(store, bench, model: dict, model_dir: str, **kw):
    return run_embed(EmbedInstructCIRGallery, store, bench, model, model_dir, **kw)
