"""Scene layouts an LLM plans for IP-CIR (Imagine and Seek, Li et al. CVPR 2025) and the configuration of the
layout-to-image models that draw proxy images from them.

A layout is a scene description plus 1..30 object instances, each with a normalised [x1, y1, x2, y2] box
(top-left / bottom-right, 0..1) and whether the object comes from the reference *image* or only from the
*text*. The authors' LLM writes a line format (`[## Label: ... ##] ...`, docs/metrics-and-methods.md B.1);
here the same fields are asked for as JSON, so a server with structured outputs can constrain decoding with
`Layout.model_json_schema()`.

Only structure goes into that schema (types, required keys, four numbers in [0, 1] per box). Everything a
layout must satisfy is checked by `parse_layout`, which is deliberately tolerant: one bad instance (inverted
box, missing field, unknown reference) is dropped *with the reason recorded*, the rest is kept, and the layout
as a whole is rejected only when fewer than `min_instances` instances survive. The authors' code retries
until at least 2 instances parse *counting the full-image scene entry*; since the scene is a separate field
here, `min_instances=1` is the equivalent default.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema

from cirflow.schemas.paths import ModelPath

MAX_INSTANCES = 30  # GLIGEN's hard cap (max_objs) on grounded boxes per image

_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL)
Coordinate = Annotated[float, Field(ge=0.0, le=1.0)]


class Instance(BaseModel):
    """One object of the imagined target image."""

    # populate_by_name: stored layouts are dumped by field name (from_reference), answers use the alias "from"
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True, populate_by_name=True)

    label: str = Field(min_length=1, description="short name of this object, e.g. 'dog'")
    category: str = Field(min_length=1, description="object class, e.g. a COCO category such as 'dog'")
    description: str = Field(min_length=1, description="a short phrase describing the object as it should look")
    box: list[Coordinate] = Field(min_length=4, max_length=4,
                                  description="[x1, y1, x2, y2], normalised 0..1, top-left then bottom-right")
    reference: Literal["image", "text"] = Field(
        description="'image' if the object is the one shown in the reference image, 'text' if it only comes "
                    "from the modification text")
    # IP-CIR's [## Size: 1-5 ##] and [## From: 0|1 ##] fields (metrics-and-methods B.1): how large the object
    # appears, and whether it is in the reference image. Optional, as in the authors' parser (which needs only
    # label, category, description, box and reference). `from` decides which instances the image-grounded
    # GLIGEN draws with the reference's appearance (models.gligen.from_reference_image); `size` is recorded only.
    size: int | None = Field(None, ge=1, le=5, description="how large the object appears: 1 (tiny) .. 5 (most of the image)")
    from_reference: int | None = Field(None, ge=0, le=1, alias="from",
                                       description="1 if the object is present in the reference image, 0 if it is new")
    # Written by enrich_layout: the box as the LLM planned it. Never asked of the LLM, hence not in the schema.
    obox: SkipJsonSchema[list[float] | None] = None

    @field_validator("box")
    @classmethod
    def _ordered(cls, box: list[float]) -> list[float]:
        x1, y1, x2, y2 = box
        if not x1 < x2:
            raise ValueError(f"x1={x1} must be < x2={x2}")
        if not y1 < y2:
            raise ValueError(f"y1={y1} must be < y2={y2}")
        return box


class Layout(BaseModel):
    """A planned target image: a global scene description and its grounded object instances."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    scene: str = Field(min_length=1, description="one sentence describing the whole target image")
    instances: list[Instance] = Field(min_length=1, max_length=MAX_INSTANCES)


@dataclass
class LayoutParse:
    """Outcome of reading one LLM answer: the layout (None if invalid), the dropped instances with reasons,
    and why the layout as a whole was rejected."""

    layout: Layout | None
    dropped: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.layout is not None


def _reason(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
    return "; ".join(parts)


def layout_from_value(value: Any, *, min_instances: int = 1, max_instances: int = MAX_INSTANCES) -> LayoutParse:
    """Validate an already parsed JSON value (see module doc for the rules)."""
    if not isinstance(value, dict):
        return LayoutParse(None, error=f"expected a JSON object, got {type(value).__name__}")
    scene = value.get("scene")
    if not isinstance(scene, str) or not scene.strip():
        return LayoutParse(None, error="missing or empty 'scene'")
    items = value.get("instances")
    if not isinstance(items, list):
        return LayoutParse(None, error=f"'instances' must be a list, got {type(items).__name__}")
    kept: list[Instance] = []
    dropped: list[str] = []
    for i, item in enumerate(items):
        try:
            inst = Instance.model_validate(item)
        except ValidationError as e:
            dropped.append(f"instances[{i}]: {_reason(e)}")
            continue
        kept.append(inst.model_copy(update={"obox": None}))  # obox is ours to write, never the LLM's
    if len(kept) < max(1, min_instances):
        return LayoutParse(None, dropped, f"{len(kept)} valid instance(s) of {len(items)}, need at least "
                                          f"{max(1, min_instances)}")
    if len(kept) > max_instances:
        return LayoutParse(None, dropped, f"{len(kept)} valid instances, more than the {max_instances} allowed")
    return LayoutParse(Layout(scene=scene.strip(), instances=kept), dropped)


def parse_layout(text: str | None, *, min_instances: int = 1, max_instances: int = MAX_INSTANCES) -> LayoutParse:
    """Read an LLM answer (JSON, optionally inside one markdown code fence) as a Layout."""
    if text is None:
        return LayoutParse(None, error="no text to parse")
    s = text.strip()
    m = _FENCE.match(s)  # the same tolerance as cirflow.models.mllm.protocol.parse_json_output
    if m:
        s = m.group(1).strip()
    try:
        value = json.loads(s)
    except json.JSONDecodeError as e:
        return LayoutParse(None, error=f"invalid JSON: {e}")
    return layout_from_value(value, min_instances=min_instances, max_instances=max_instances)


def load_layout(layout_json: str) -> Layout:
    """A layout as stored by plan_layout (layout_json column), enrichment (obox) included."""
    layout = Layout.model_validate_json(layout_json)
    return layout


class ProxyConfig(BaseModel):
    """Layout-to-image proxy generation (IP-CIR's MIGC stand-in: diffusers' GLIGEN pipelines).

    pipeline "gligen_by_source" (default, IP-CIR §3.2 / §4.1: MIGC + ELITE draws the instances that come from
    the query image with that image's appearance): a layout with an instance from the reference image (`from`
    = 1, or `reference` "image" when the answer has no From field: `models.gligen.from_reference_image`) is
    drawn by the text-image pipeline (`image_model`), grounding those instances by their description *and* a
    crop of the reference, the other instances by text only; a layout of text-only instances is drawn by the
    text-box pipeline (`model`).
    pipeline "gligen_text_box": StableDiffusionGLIGENPipeline only, every instance grounded by its description
    (never sees the reference image).
    pipeline "gligen_text_image": StableDiffusionGLIGENTextImagePipeline (from `model`) for every layout.
    `image_grounding`: the reference cropped to the instance's planned box (default; the stand-in for the
    authors' GroundingDINO + SAM crop of the object) or the whole reference image.
    """

    model_config = ConfigDict(extra="forbid")

    pipeline: Literal["gligen_by_source", "gligen_text_box", "gligen_text_image"] = "gligen_by_source"
    model: ModelPath = "masterful/gligen-1-4-generation-text-box"  # HF id or local dir
    # gligen_by_source only: its text-image pipeline (gligen_text_image reads its checkpoint from `model`)
    image_model: ModelPath = "anhnct/Gligen_Text_Image"
    revision: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"  # "auto": cuda if available, else cpu
    steps: int = Field(50, ge=1)
    guidance: float = Field(7.5, ge=0.0)
    beta: float = Field(0.3, ge=0.0, le=1.0)  # gligen_scheduled_sampling_beta (ignored by the text-image pipeline)
    resolution: int = Field(512, ge=8)
    num_proxies: int = Field(5, ge=1)  # N proxies per query (paper: 5; authors' script: 3)
    seed: int = 0
    negative_prompt: str | None = None
    image_grounding: Literal["reference", "box_crop"] = "box_crop"

    def key_fields(self) -> dict:
        """Everything that changes the images, not where they are computed (no device); a checkpoint the
        pipeline never loads is left out."""
        unused = {"gligen_text_box": {"image_model", "image_grounding"}, "gligen_text_image": {"image_model"}}
        return self.model_dump(exclude={"device", *unused.get(self.pipeline, set())})
