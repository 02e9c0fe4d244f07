"""Arrow schemas of every table a stage writes.

One place so that stages, loaders and evaluation agree on column names and types. Ids are always strings
(CIRCO's integer COCO ids and Fashion-IQ's ASINs alike) so that a ranking column has one type across
benchmarks; writers of submission files convert back where a server wants integers.
"""

from __future__ import annotations

import pyarrow as pa

STR_LIST = pa.list_(pa.string())

# One row per query. Field meanings per benchmark are documented in cirflow.tasks.benchmarks.
QUERIES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),  # CIRR pairid, CIRCO id, FIQ caption-file index, GeneCIS sample index
        pa.field("reference_id", pa.string(), nullable=False),  # an image_id of the images table
        pa.field("modification", pa.string(), nullable=False),  # the text a method reads (FIQ: joined by the ingest policy)
        pa.field("captions", STR_LIST),  # raw relative captions as annotated (FIQ: the two; others: one)
        pa.field("target_ids", STR_LIST),  # ground truth; CIRCO: gt_img_ids (first = target_img_id); empty on test splits
        pa.field("members", STR_LIST),  # CIRR img_set.members (6, reference included); empty elsewhere
        pa.field("candidate_ids", STR_LIST),  # GeneCIS per-sample gallery: [target] + gallery, index 0 = target
        pa.field("shared_concept", pa.string()),  # CIRCO only
        pa.field("semantic_aspects", STR_LIST),  # CIRCO val only
    ]
)

# Every image a benchmark needs (references, gallery, GeneCIS candidates), once per image_id.
IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # fsspec path or URL of the file
        pa.field("crop_box", pa.list_(pa.float64())),  # GeneCIS attribute items: [x, y, w, h] in pixels; null = whole image
        pa.field("in_gallery", pa.bool_(), nullable=False),  # member of the split's retrieval gallery
    ]
)

# MLLM / LLM text outputs, one row per (query or image, sample).
TEXTS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # query_id or image_id the text belongs to
        pa.field("sample", pa.int32(), nullable=False),  # 0..n-1 when several texts are sampled per item
        pa.field("text", pa.string()),  # the parsed text; null when status != "ok"
        pa.field("raw", pa.string()),  # the model's whole answer, kept for audits
        pa.field("status", pa.string(), nullable=False),  # "ok" | "failed"
        pa.field("error", pa.string()),  # why it failed
        pa.field("seed", pa.int64()),
        pa.field("seconds", pa.float32()),  # wall time of the request
    ]
)


# Images a model generated (diffusion edits, layout proxies), stored as files beside the table that indexes them.
GENERATED_IMAGES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # query_id (or image_id) the image was generated for
        pa.field("sample", pa.int32(), nullable=False),  # 0..N-1 images per item
        pa.field("file", pa.string()),  # path relative to the artifact folder; null when status != "ok"
        pa.field("sha256", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("seed", pa.int64(), nullable=False),  # the generator seed of this one image
        pa.field("prompt", pa.string()),  # the conditioning text actually used
        pa.field("status", pa.string(), nullable=False),  # "ok" | "failed"
        pa.field("error", pa.string()),
        pa.field("seconds", pa.float32()),
    ]
)


def embeddings_schema(dim: int) -> pa.Schema:
    """One float32 vector per id, as `fixed_size_binary(4 * dim)`: the raw little-endian bytes of the vector.
    Measured (bench/embeddings_read.py, issue 14) it reads several times faster than `fixed_size_list<float32>`
    (which Parquet stores as a repeated column with per-value levels); the field metadata says how to view it.
    Artifacts written before hold `fixed_size_list<float32>[dim]`; `Artifact.embeddings()` reads both."""
    meta = {"cirflow.dtype": "float32", "cirflow.dim": str(dim)}
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("embedding", pa.binary(4 * dim), nullable=False, metadata=meta),
        ]
    )


# Top-K retrieval result per query. GeneCIS ranks its per-sample candidates: ids are then positions ("0" = target).
RANKINGS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("ranked_ids", STR_LIST, nullable=False),  # best first; CIRR: reference already removed
        pa.field("scores", pa.list_(pa.float32()), nullable=False),
        pa.field("subset_ids", STR_LIST),  # CIRR: the 5 non-reference members, best first; empty elsewhere
    ]
)

METRICS = pa.schema(
    [
        pa.field("group", pa.string(), nullable=False),  # "all", a Fashion-IQ category, a GeneCIS task, a CIRCO aspect
        pa.field("metric", pa.string(), nullable=False),  # "recall@10", "map@5", "recall_subset@1", ...
        pa.field("value", pa.float64(), nullable=False),  # percent
    ]
)

# MVFT-JI training rows (mvft-ji.txt §3.2): one per (image, modification), read by models/mvft/training.py
MVFT_TRAINING_ROWS = pa.schema([
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("sample", pa.int32(), nullable=False),  # 0.. per image: several modifications of one image
    pa.field("path", pa.string(), nullable=False),
    pa.field("modification", pa.string(), nullable=False),
    pa.field("target_text", pa.string(), nullable=False),
    pa.field("caption", pa.string(), nullable=False),
])
