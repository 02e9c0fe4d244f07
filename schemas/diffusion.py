"""Config of the image-editing diffusion backend (cirflow.models.diffusion) and the part of it in a stage key.

PEFUSE's diffusion branch edits the reference image with InstructPix2Pix, SDXL-InstructPix2Pix or SDXL-Turbo
(img2img), conditioned either on the raw modification text or on the MLLM-composed target description.
Paper defaults: guidance 7.5, image guidance 3.0, 30 steps, 768 x 768, conditioned on the composed description;
SDXL-Turbo 60 steps x strength 0.5 (= 30 effective steps), guidance 0.

`key_fields()` answers "which weights and which sampler produced these images?". For a local checkpoint folder
the revision is a sha256 over every weight/config/tokenizer file in it (cached by path, size and mtime through
cirflow.schemas.encoder.file_sha256), so overwriting a checkpoint in place changes the key. For a hub id it is
the requested revision plus the snapshot commit found in the local HF cache. Device and batch size are left
out: they change speed, not the images (generators are per image and on the CPU).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cirflow.models.weights import file_sha256, pipeline_revision, tree_digest  # noqa: F401  (weight identity)
from cirflow.schemas.paths import ModelPath

Pipeline = Literal["instruct_pix2pix", "sdxl_instruct_pix2pix", "sdxl_turbo_img2img"]

# The paper's denoising steps per pipeline when the config does not set them (pefuse.txt §4.1, §5).
DEFAULT_STEPS = {"instruct_pix2pix": 30, "sdxl_instruct_pix2pix": 30, "sdxl_turbo_img2img": 60}


class DiffusionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: Pipeline
    model: ModelPath  # HF id ("timbrooks/instruct-pix2pix", "stabilityai/sdxl-turbo") or a local save_pretrained dir
    revision: str | None = None  # hub branch/tag/commit; ignored for local dirs (their files are hashed)
    variant: str | None = None  # weight file variant, e.g. "fp16"
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # diffusers scheduler class name replacing the checkpoint's (built from its config), e.g.
    # "EulerAncestralDiscreteScheduler"; scheduler_config overrides single entries (e.g. timestep_spacing).
    scheduler: str | None = None
    scheduler_config: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(4, ge=1)
    resolution: int = Field(768, ge=8, multiple_of=8)  # inputs are resized to resolution x resolution
    guidance_scale: float = Field(7.5, ge=0.0)
    image_guidance_scale: float = Field(3.0, ge=0.0)  # InstructPix2Pix variants only
    # Unset: the paper's per pipeline (DEFAULT_STEPS): 30, and 60 for SDXL-Turbo, whose img2img runs
    # int(steps * strength) = 60 * 0.5 = 30 effective steps (pefuse.txt §5, figure 5).
    num_inference_steps: int = Field(30, ge=1)
    strength: float = Field(0.5, gt=0.0, le=1.0)  # sdxl_turbo_img2img only
    num_images: int = Field(1, ge=1)  # images generated per query
    seed: int = 0
    # PEFUSE §3: I_g = g(I_ref, T_f), the edit is conditioned on the MLLM-composed description T_f;
    # "modification" (the raw text) is the ablation of §4.5.2 / table 5.
    conditioning: Literal["modification", "composed"] = "composed"
    negative_prompt: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _steps_per_pipeline(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("num_inference_steps") is None and "pipeline" in data:
            data = {**data, "num_inference_steps": DEFAULT_STEPS.get(data["pipeline"], 30)}
        if isinstance(data, dict) and data.get("guidance_scale") is None and data.get("pipeline") == "sdxl_turbo_img2img":
            data = {**data, "guidance_scale": 0.0}  # SDXL-Turbo runs without classifier-free guidance (figure 5)
        return data

    @model_validator(mode="after")
    def _check(self) -> "DiffusionConfig":
        if self.pipeline == "sdxl_turbo_img2img" and int(self.num_inference_steps * self.strength) < 1:
            # diffusers runs int(steps * strength) denoising steps; 0 would return the (re-encoded) input
            raise ValueError(f"sdxl_turbo_img2img runs int(num_inference_steps * strength) steps: "
                             f"{self.num_inference_steps} * {self.strength} < 1; raise one of them")
        return self

    def sampler_fields(self) -> dict:
        """Only the sampler parameters the chosen pipeline actually reads (others do not change the images)."""
        fields: dict[str, Any] = {"num_inference_steps": self.num_inference_steps}
        if self.pipeline == "sdxl_turbo_img2img":
            fields["strength"] = self.strength
            fields["guidance_scale"] = self.guidance_scale  # SDXL-Turbo: 0.0 (no classifier-free guidance)
        else:
            fields["guidance_scale"] = self.guidance_scale
            fields["image_guidance_scale"] = self.image_guidance_scale
        return fields

    def key_fields(self) -> dict:
        return {
            "pipeline": self.pipeline,
            "model": self.model,
            "revision": pipeline_revision(self.model, self.revision),
            "variant": self.variant,
            "dtype": self.dtype,
            "scheduler": self.scheduler,
            "scheduler_config": dict(sorted(self.scheduler_config.items())),
            "resolution": self.resolution,
            "sampler": self.sampler_fields(),
            "num_images": self.num_images,
            "seed": self.seed,
            "conditioning": self.conditioning,
            "negative_prompt": self.negative_prompt,
        }


# with the config, not the backend: a model pool keys its slot by it at `--plan` time, before (and without) torch
def load_fields(cfg: DiffusionConfig) -> dict:
    """The config fields that decide what `load_pipeline` loads (the rest only parameterise `edit`)."""
    return cfg.model_dump(include={"pipeline", "model", "revision", "variant", "dtype", "device", "scheduler",
                                   "scheduler_config"})
