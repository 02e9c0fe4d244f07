"""Layout-to-image with diffusers' GLIGEN pipelines: IP-CIR's proxy images (docs/metrics-and-methods.md B.1,
"Diffusers stand-ins"; the authors use MIGC(+ELITE) on SD-1.5, which diffusers does not ship).

* "gligen_text_box": StableDiffusionGLIGENPipeline. prompt = the layout's scene, gligen_phrases = the
  instance descriptions, gligen_boxes = their normalised xyxy boxes, gligen_scheduled_sampling_beta = beta.
* "gligen_text_image": StableDiffusionGLIGENTextImagePipeline. Every instance is grounded by its description;
  an instance from the reference image (`from_reference_image`) is also grounded by a picture of the reference
  (the reference cropped to the instance's box, or the whole image: `ProxyConfig.image_grounding`). The pipeline's
  masks say which grounding each box uses: input_phrases_mask = 1 for every box, input_images_mask = 1 only
  for image-referenced boxes. (This pipeline ignores gligen_scheduled_sampling_beta: the fuser is on for all
  steps in diffusers 0.42.)
* "gligen_by_source" (the default, closest to the authors' MIGC + ELITE): per layout, the text-image pipeline
  when an instance comes from the reference image, the text-box pipeline when all come from the text. Both
  are loaded on first need (`GligenBySource`).

Both pipelines sit under `diffusers.pipelines.deprecated` (frozen since 0.33.1), accept at most 30 boxes
(`MAX_INSTANCES`) and take ONE layout per call (boxes are broadcast over the batch): a call batches the N
images of one layout through `num_images_per_prompt`, with one CPU `torch.Generator` per image so an image
depends only on its own seed, never on how many images share the call.
"""

from __future__ import annotations

from typing import Any, Sequence

from cirflow.schemas.layout import MAX_INSTANCES, Layout, ProxyConfig

PIPELINE_CLASSES = {"gligen_text_box": "StableDiffusionGLIGENPipeline",
                    "gligen_text_image": "StableDiffusionGLIGENTextImagePipeline"}


def from_reference_image(inst) -> bool:
    """Whether an instance is the object shown in the reference image: IP-CIR's From field (1) when the
    answer has it, else its reference modality ("image")."""
    if inst.from_reference is not None:
        return inst.from_reference == 1
    return inst.reference == "image"


def needs_reference(layout: Layout) -> bool:
    return any(from_reference_image(i) for i in layout.instances)


class GligenBySource:
    """The two pipelines of "gligen_by_source", each loaded on first use (a run whose layouts are all text-only
    never loads the text-image one)."""

    def __init__(self, cfg: ProxyConfig):
        from cirflow.tasks.lazy import Lazy

        self._pipes = {"gligen_text_box": Lazy(lambda: _load("gligen_text_box", cfg.model, cfg)),
                       "gligen_text_image": Lazy(lambda: _load("gligen_text_image", cfg.image_model, cfg))}

    def pipeline(self, kind: str):
        return self._pipes[kind].get()

    def loaded(self, kind: str) -> bool:
        return self._pipes[kind].loaded

    def close(self) -> None:
        for p in self._pipes.values():
            p.close()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_gligen(cfg: ProxyConfig):
    """The pipeline `cfg.pipeline` names, from `cfg.model` (HF id or a local folder), on `cfg.device`;
    for "gligen_by_source" a GligenBySource (text-box from `cfg.model`, text-image from `cfg.image_model`)."""
    if cfg.pipeline == "gligen_by_source":
        return GligenBySource(cfg)
    return _load(cfg.pipeline, cfg.model, cfg)


def _load(kind: str, model: str, cfg: ProxyConfig):
    import diffusers
    import torch

    from cirflow.schemas.progress import quiet_libraries

    quiet_libraries()  # diffusers' "Loading pipeline components" bar ignores HF_HUB_DISABLE_PROGRESS_BARS
    cls = getattr(diffusers, PIPELINE_CLASSES[kind])
    device = resolve_device(cfg.device)
    if device == "cpu" and cfg.dtype == "float16":
        raise ValueError("dtype float16 cannot run on cpu; use float32 or bfloat16")
    pipe = cls.from_pretrained(model, revision=cfg.revision, dtype=getattr(torch, cfg.dtype))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def call_kwargs(kind: str, layout: Layout, reference_image=None, image_grounding: str = "reference") -> dict[str, Any]:
    """The grounding arguments for one layout: gligen_phrases and gligen_boxes, plus (text-image pipeline)
    gligen_images, input_phrases_mask and input_images_mask."""
    inst = layout.instances
    if len(inst) > MAX_INSTANCES:
        raise ValueError(f"{len(inst)} instances: GLIGEN grounds at most {MAX_INSTANCES} boxes")
    out: dict[str, Any] = {"gligen_phrases": [i.description for i in inst],
                           "gligen_boxes": [[float(v) for v in i.box] for i in inst]}
    if kind == "gligen_text_box":
        return out
    if kind != "gligen_text_image":
        raise ValueError(f"unknown GLIGEN pipeline kind {kind!r}")
    images = []
    for i in inst:
        if not from_reference_image(i):
            images.append(None)
        elif reference_image is None:
            raise ValueError("an instance refers to the reference image but none was given")
        elif image_grounding == "box_crop":
            images.append(crop_to_box(reference_image, i.box))
        else:
            images.append(reference_image)
    out["gligen_images"] = images
    out["input_phrases_mask"] = [1] * len(inst)
    out["input_images_mask"] = [0 if im is None else 1 for im in images]
    return out


def crop_to_box(image, box: Sequence[float]):
    """`image` cropped to a normalised xyxy box (at least 1 pixel each way)."""
    w, h = image.size
    x1, y1 = int(box[0] * w), int(box[1] * h)
    x2, y2 = max(x1 + 1, round(box[2] * w)), max(y1 + 1, round(box[3] * h))
    return image.crop((x1, y1, min(x2, w), min(y2, h)))


def generate(pipe, cfg: ProxyConfig, layout: Layout, seeds: Sequence[int], reference_image=None) -> list:
    """len(seeds) images (PIL) of one layout, image n drawn from a CPU generator seeded with seeds[n]."""
    import torch

    if not seeds:
        return []
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    kind = cfg.pipeline
    if kind == "gligen_by_source":
        kind = "gligen_text_image" if needs_reference(layout) else "gligen_text_box"
        pipe = pipe.pipeline(kind)
    kwargs = call_kwargs(kind, layout, reference_image, cfg.image_grounding)
    if kind == "gligen_text_box":
        kwargs["gligen_scheduled_sampling_beta"] = cfg.beta
    out = pipe(prompt=layout.scene, negative_prompt=cfg.negative_prompt, num_images_per_prompt=len(seeds),
               generator=generators, height=cfg.resolution, width=cfg.resolution,
               num_inference_steps=cfg.steps, guidance_scale=cfg.guidance, output_type="pil", **kwargs)
    return list(out.images)
