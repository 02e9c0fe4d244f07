"""Image editing with diffusers pipelines (PEFUSE's diffusion branch): reference image + text -> edited image.

    backend = load_pipeline(DiffusionConfig(pipeline="instruct_pix2pix", model="timbrooks/instruct-pix2pix"))
    images = backend.edit([ref_a, ref_b], ["make it red", "add snow"], seeds=[11, 12])

| cfg.pipeline            | diffusers class                                  | sampler arguments                            |
|-------------------------|--------------------------------------------------|----------------------------------------------|
| instruct_pix2pix        | StableDiffusionInstructPix2PixPipeline           | steps, guidance_scale, image_guidance_scale  |
| sdxl_instruct_pix2pix   | StableDiffusionXLInstructPix2PixPipeline         | same, height = width = resolution            |
| sdxl_turbo_img2img      | AutoPipelineForImage2Image (SDXL img2img)        | steps, strength, guidance_scale (0 for Turbo)|

Reproducibility: each image gets its own CPU `torch.Generator` seeded with its own seed, passed as a list, so
an image does not depend on which other images share its batch or on the device (diffusers draws the noise on
the CPU generator and moves it). Prompts are padded to the tokenizer's fixed length, so batch composition does
not change the text features either.

Choices, documented:
- Inputs are resized (LANCZOS, aspect not kept) to resolution x resolution, as in PEFUSE (768 x 768).
- The Stable Diffusion safety checker is not loaded (`safety_checker=None`): the edits are retrieval queries,
  never shown to users, and a checker would replace flagged edits with black images (silently corrupting
  queries). SDXL's invisible watermark is off (`add_watermarker=False`): it alters pixels and needs an extra
  package. Code from the hub is never executed (no trust_remote_code / custom pipelines).
- `dtype` is passed to `from_pretrained(dtype=...)` (diffusers 0.42 name; `torch_dtype` is deprecated).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from cirflow.schemas.diffusion import DiffusionConfig, load_fields
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.progress import step_progress

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class DiffusionBackend:
    """A loaded pipeline plus the call that edits a batch of images with per-image seeds."""

    def __init__(self, cfg: DiffusionConfig):
        import diffusers

        from cirflow.schemas.progress import quiet_libraries

        quiet_libraries()  # diffusers' "Loading pipeline components" bar ignores HF_HUB_DISABLE_PROGRESS_BARS
        self.cfg = cfg
        self.device = _resolve_device(cfg.device)
        self.dtype = _DTYPES[cfg.dtype]
        local = Path(cfg.model).is_dir()
        kwargs = dict(dtype=self.dtype, variant=cfg.variant, revision=None if local else cfg.revision)
        t0 = time.perf_counter()
        if cfg.pipeline == "instruct_pix2pix":
            pipe = diffusers.StableDiffusionInstructPix2PixPipeline.from_pretrained(
                cfg.model, safety_checker=None, requires_safety_checker=False, **kwargs)
        elif cfg.pipeline == "sdxl_instruct_pix2pix":
            pipe = diffusers.StableDiffusionXLInstructPix2PixPipeline.from_pretrained(
                cfg.model, add_watermarker=False, **kwargs)
        elif cfg.pipeline == "sdxl_turbo_img2img":
            pipe = diffusers.AutoPipelineForImage2Image.from_pretrained(cfg.model, add_watermarker=False, **kwargs)
            if not type(pipe).__name__.startswith("StableDiffusionXL"):
                raise CirflowError(f"{cfg.model} loads as {type(pipe).__name__}, not an SDXL img2img pipeline")
        else:  # pragma: no cover - the Literal in DiffusionConfig rules this out
            raise CirflowError(f"unknown diffusion pipeline {cfg.pipeline!r}")
        if cfg.scheduler or cfg.scheduler_config:
            pipe.scheduler = _scheduler(diffusers, cfg, pipe.scheduler)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.load_seconds = time.perf_counter() - t0
        self._diffusers_version = diffusers.__version__

    # ---- public API ---------------------------------------------------------------------------------------

    def edit(self, images: Sequence[Image.Image], prompts: Sequence[str], seeds: Sequence[int],
             sampler: DiffusionConfig | None = None) -> list[Image.Image]:
        """One batched pipeline call; image i is generated from images[i], prompts[i] and its own seed seeds[i].
        `sampler`: another config for the same loaded weights (one backend shared by several stages that differ
        in steps, guidance, resolution, ...); its load fields must match (see `load_fields`)."""
        if not (len(images) == len(prompts) == len(seeds)):
            raise ValueError(f"edit: {len(images)} images, {len(prompts)} prompts, {len(seeds)} seeds")
        cfg = self.cfg
        if sampler is not None:
            if load_fields(sampler) != load_fields(self.cfg):
                raise CirflowError(f"this backend was loaded for {load_fields(self.cfg)}, "
                                   f"not {load_fields(sampler)}")
            cfg = sampler
        if not images:
            return []
        size = cfg.resolution
        inputs = [prepare_image(im, size) for im in images]
        call = dict(prompt=[str(p) for p in prompts], image=inputs, num_inference_steps=cfg.num_inference_steps,
                    guidance_scale=cfg.guidance_scale, output_type="pil",
                    generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds])
        if cfg.negative_prompt is not None:
            call["negative_prompt"] = [cfg.negative_prompt] * len(prompts)
        if cfg.pipeline == "sdxl_turbo_img2img":
            call["strength"] = cfg.strength
        else:
            call["image_guidance_scale"] = cfg.image_guidance_scale
        if cfg.pipeline == "sdxl_instruct_pix2pix":
            call.update(height=size, width=size)  # defaults to the UNet's sample size otherwise
        # denoising steps advance the running stage's line ("step 12/50"); img2img at `strength` runs fewer
        steps_total = None if cfg.pipeline == "sdxl_turbo_img2img" else cfg.num_inference_steps
        with torch.inference_mode(), step_progress(steps_total, "step") as steps:
            if cfg.pipeline == "sdxl_instruct_pix2pix":  # this pipeline still has only the older callback
                call.update(callback=lambda _i, _t, _latents: steps.update(1), callback_steps=1)
            else:
                call["callback_on_step_end"] = lambda _pipe, _i, _t, kwargs: (steps.update(1), kwargs)[1]
            out = self.pipe(**call).images
        if len(out) != len(images):
            raise RuntimeError(f"pipeline returned {len(out)} images for {len(images)} inputs")
        return [im.convert("RGB") for im in out]

    @property
    def peak_memory_bytes(self) -> int | None:
        """Peak CUDA memory allocated since loading (weights included); None on CPU."""
        if self.device.type != "cuda":
            return None
        return int(torch.cuda.max_memory_allocated(self.device))

    def describe(self) -> dict:
        return {
            "pipeline": self.cfg.pipeline,
            "pipeline_class": type(self.pipe).__name__,
            "scheduler": type(self.pipe.scheduler).__name__,
            "model": self.cfg.model,
            "diffusers": self._diffusers_version,
            "torch": torch.__version__,
            "dtype": self.cfg.dtype,
            "device": str(self.device),
            "load_seconds": round(self.load_seconds, 3),
            "peak_gpu_memory_bytes": self.peak_memory_bytes,
        }

    def close(self) -> None:
        self.pipe = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def load_pipeline(cfg: DiffusionConfig) -> DiffusionBackend:
    return DiffusionBackend(cfg)



def prepare_image(image: Image.Image, resolution: int) -> Image.Image:
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image


def _scheduler(diffusers, cfg: DiffusionConfig, current):
    name = cfg.scheduler or type(current).__name__
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise CirflowError(f"diffusion.scheduler: {name!r} is not a diffusers scheduler class "
                           "(e.g. EulerAncestralDiscreteScheduler, DDIMScheduler)")
    return cls.from_config(current.config, **cfg.scheduler_config)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
