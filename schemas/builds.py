"""Configs and Arrow tables of the training-data builds (MTCIR-, InstructCIR- and MVFT-JI-style) made from an
unlabeled image collection.

Every config forbids unknown keys. What changes a build's content goes into stage keys through the stages
(model key fields, sampling, prompt text, pairing params); paths, shard sizes and cache location do not.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field

from cirflow.schemas.base import Strict
from cirflow.schemas.config import CaptionConfig as _CaptionConfig
from cirflow.schemas.mllm import SamplingParams
from cirflow.schemas.paths import LocalPath, TemplatePath
from cirflow.schemas.names import Name

STR_LIST = pa.list_(pa.string())

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# The six modification-text categories of CoLLM (collm.txt, supplementary table 9), in the paper's order.
MTCIR_CATEGORIES: dict[str, tuple[str, str]] = {
    "attribute_change": ("Attribute Changed", "The same object is in both images, but some of its attributes "
                         "(colour, material, shape, state...) differ; a change in count is not an attribute."),
    "added_object": ("Object Added", "Something appears in the second image that is absent from the first."),
    "removed_object": ("Object Removed", "Something in the first image is absent from the second."),
    "relationship_change": ("Relationship Changed", "The same objects are in both images, but how they relate "
                            "to each other (position, interaction, arrangement) differs."),
    "viewpoint_change": ("Viewpoint Changed", "The scene is shot from another angle, distance or framing."),
    "number_change": ("Number Changed", "The same kind of object is in both images, but how many there are differs."),
}

# Human-attribute keywords (collm.txt §4.1: texts mentioning e.g. skin, hair, gender, age, race are removed).
DEFAULT_BIOMETRIC_WORDS = (
    "skin", "skinned", "hair", "haired", "hairstyle", "gender", "age", "aged", "race", "racial", "ethnic",
    "ethnicity", "complexion", "beard", "bearded", "mustache", "moustache", "bald", "freckles", "wrinkles",
)  # fmt: skip

# Images (collm.txt §4.1: "For images, we apply face blurring to all instances"; the paper names no detector).
# Our stand-in: an image whose detailed caption mentions a person or a face is removed with every pair it is
# in (stricter than blurring, and needs no face detector); see README "Paper defaults and deliberate deviations".
DEFAULT_BIOMETRIC_IMAGE_WORDS = (
    "person", "persons", "people", "man", "men", "woman", "women", "boy", "boys", "girl", "girls", "child",
    "children", "kid", "kids", "baby", "babies", "toddler", "face", "faces", "portrait", "selfie", "human",
    "humans", "guy", "lady", "ladies", "teenager", "crowd",
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ tables

# One row per listed file, written shard by shard while files are checked (resumable).
COLLECTION_CHECKED = pa.schema([
    pa.field("image_id", pa.string()),
    pa.field("path", pa.string(), nullable=False),
    pa.field("relpath", pa.string(), nullable=False),
    pa.field("sha256", pa.string()),
    pa.field("bytes", pa.int64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("meta_class", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # "ok" | "failed"
    pa.field("error", pa.string()),
])  # fmt: skip

# The usable images. Column-compatible with IMAGES where embed_images reads it (image_id, path, crop_box).
COLLECTION_IMAGES = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("sha256", pa.string(), nullable=False),
    pa.field("bytes", pa.int64()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("meta_class", pa.string()),  # null when the source gives none
    pa.field("caption", pa.string()),  # a caption that came with the collection (Parquet source), else null
    pa.field("crop_box", pa.list_(pa.float64())),  # always null: collections are whole images
])  # fmt: skip

COLLECTION_FAILURES = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
])  # fmt: skip

PAIRS = pa.schema([
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("ref_id", pa.string(), nullable=False),  # image 1 (the reference of the forward direction)
    pa.field("tgt_id", pa.string(), nullable=False),  # image 2
    pa.field("group_id", pa.string()),  # MTCIR: the CIRR-style group; InstructCIR: the meta-class
    pa.field("kind", pa.string(), nullable=False),  # "consecutive" | "first" | "random"
    pa.field("similarity", pa.float32()),  # cosine similarity of the two images (MTCIR), else null
])  # fmt: skip

GROUPS = pa.schema([
    pa.field("group_id", pa.string(), nullable=False),
    pa.field("members", STR_LIST, nullable=False),  # six image ids, the first is the anchor
    pa.field("similarities", pa.list_(pa.float32()), nullable=False),  # of each member to the anchor
])  # fmt: skip

# One row per LLM request of a pair build (MTCIR, InstructCIR): what was asked and how it ended.
PAIR_REQUESTS = pa.schema([
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("ref_id", pa.string(), nullable=False),
    pa.field("tgt_id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # ok | malformed | refused | too_long | failed
    pa.field("error", pa.string()),
    pa.field("raw", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("seconds", pa.float32()),
])  # fmt: skip

# MTCIR: one row per short modification text.
MTCIR_TEXTS = pa.schema([
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("direction", pa.string(), nullable=False),  # "forward" (ref→tgt) | "backward" (tgt→ref)
    pa.field("ref_id", pa.string(), nullable=False),  # reference of THIS direction
    pa.field("tgt_id", pa.string(), nullable=False),
    pa.field("index", pa.int32(), nullable=False),  # position in the model's list for this direction
    pa.field("category", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("words", pa.int32(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # ok | biometric | too_long
])  # fmt: skip

# InstructCIR: one reformulation text per pair.
REFORMULATIONS = pa.schema([
    pa.field("pair_id", pa.string(), nullable=False),
    pa.field("ref_id", pa.string(), nullable=False),
    pa.field("tgt_id", pa.string(), nullable=False),
    pa.field("text", pa.string()),  # null unless status == "ok"
    pa.field("words", pa.int32()),
    pa.field("raw", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # ok | too_long | failed
    pa.field("error", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("seconds", pa.float32()),
])  # fmt: skip

# MVFT-JI: per image a modification text and the target text it leads to.
MVFT_TRIPLETS = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("modification", pa.string()),
    pa.field("target_text", pa.string()),
    pa.field("raw_modification", pa.string()),
    pa.field("raw_target", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # ok | failed
    pa.field("error", pa.string()),
    pa.field("failed_step", pa.string()),  # "modification" | "target" | null
    pa.field("seed_modification", pa.int64()),
    pa.field("seed_target", pa.int64()),
    pa.field("seconds", pa.float32()),
])  # fmt: skip


# ------------------------------------------------------------------------------------------------ configs


class CollectionSource(Strict):
    """Where the unlabeled images are.

    folder: every file under `uri` (recursive) whose extension is in `extensions`; meta_class = the first folder
      below `uri` when `meta_class_from: top_dir` (images directly in `uri` get none).
    list: a text file, one path or URI per line (blank lines and `#` comments skipped); relative paths are
      relative to the list file's folder.
    parquet: a table with `path_column` (+ optional `caption_column`, `meta_class_column`); relative paths are
      relative to the table's folder.

    image_id: "relpath" = the path relative to the collection root (as written in a list or table), stable as
      long as files are not moved; "sha256" = the content hash, stable across moves and renames, and identical
      files collapse into one image (the others are recorded as duplicates).
    """

    kind: Literal["folder", "list", "parquet"]
    uri: LocalPath  # a folder, list file or table; an fsspec URL is left as is
    storage_options: dict = Field(default_factory=dict)
    extensions: list[str] = Field(default_factory=lambda: list(IMAGE_EXTENSIONS))
    meta_class_from: Literal["none", "top_dir"] = "top_dir"  # folder sources only
    path_column: str = "path"
    caption_column: str | None = "caption"  # used when present in the table
    meta_class_column: str | None = "meta_class"
    id_scheme: Literal["relpath", "sha256"] = "relpath"
    thumbnail: int = Field(64, ge=8)  # decode check: decode to at most this many pixels per side


class PairingConfig(Strict):
    """CIRR-style groups of six (collm.txt supp. 8.1): members join a group when their similarity to the first
    image lies in [min_similarity, max_similarity] and is at least `spacing` below the previous member's."""

    group_size: int = Field(6, ge=2)
    min_similarity: float = 0.5
    max_similarity: float = 0.95
    spacing: float = Field(0.03, ge=0.0)
    neighbours: int = Field(256, ge=1)  # candidates examined per anchor (its nearest neighbours)
    # false (collm.txt supp. 8.1, MTCIR's ~8 pairs per image): every image anchors a group and may join others';
    # true: CIRR's rule, an image belongs to at most one group (~1.5 pairs per image)
    exclusive: bool = False
    max_groups: int | None = Field(None, ge=1)
    seed: int = 0  # the order in which anchors are tried


class RandomPairingConfig(Strict):
    """InstructCIR (instructcir.txt §II-A, §III-A): random pairs within a meta-class, or over the whole collection."""

    within: Literal["meta_class", "collection"] = "meta_class"
    pairs_per_image: int = Field(1, ge=1)
    seed: int = 0


class CollectionCaptionConfig(_CaptionConfig):
    """caption_collection: the run configs' CaptionConfig, plus where captions come from, with build defaults."""

    source: Literal["mllm", "collection"] = "mllm"  # "collection": use the collection's own caption column
    # prompt: template file; default prompts/caption_collection.<build>.txt
    sampling: SamplingParams = SamplingParams(max_tokens=256)
    shard_size: int = Field(64, ge=1)


CaptionConfig = CollectionCaptionConfig  # the old name (tasks/builds/caption_collection.py, tests)


class MTCIRTextConfig(Strict):
    prompt: TemplatePath | None = None  # default prompts/mtcir_texts.modification.txt
    sampling: SamplingParams = SamplingParams(max_tokens=768)
    # inclusive maximum: "one short sentence less than 20 words" (collm.txt table 22) allows 19, rejects 20
    max_words: int = Field(19, ge=1)
    biometric_filter: bool = True
    biometric_words: list[str] = Field(default_factory=lambda: list(DEFAULT_BIOMETRIC_WORDS))
    # image level: pairs with an image whose caption mentions a person or face are removed (and counted)
    biometric_images: bool = True
    biometric_image_words: list[str] = Field(default_factory=lambda: list(DEFAULT_BIOMETRIC_IMAGE_WORDS))
    shard_size: int = Field(64, ge=1)


class InstructCIRTextConfig(Strict):
    prompt: TemplatePath | None = None  # default prompts/instructcir_texts.reformulation.txt
    sampling: SamplingParams = SamplingParams(max_tokens=48)
    max_words: int = Field(12, ge=1)  # inclusive maximum: instructcir.txt table I, "within 12 words"
    shard_size: int = Field(64, ge=1)


class MVFTTextConfig(Strict):
    modification_prompt: TemplatePath | None = None  # default prompts/mvft_texts.modification.txt
    target_prompt: TemplatePath | None = None  # default prompts/mvft_texts.target.txt
    sampling: SamplingParams = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=96)
    target_sampling: SamplingParams = SamplingParams(max_tokens=160)
    shard_size: int = Field(64, ge=1)


class ReleaseConfig(Strict):
    out_dir: LocalPath
    name: Name = "cirflow-build"
    license: str = "other"  # an SPDX-style id or "other"; the images keep their own licences
    license_details: str = "Texts generated by the listed models; images are referenced by path and keep the " \
                           "licence of their source collection."
