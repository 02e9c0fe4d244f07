"""Config and table schemas of the refined-benchmark build (CoLLM §4.2, supplementary §8.2).

    validate(original text) ─► regenerate(failures, coarse→fine) ─► validate(level 1) ─► … ─► validate(level L)
                                                                                              └─► refine_benchmark

A triplet passes a validation round when the MLLM, shown the reference image, the modification text and the
shuffled candidates (target + the `hard_negatives` gallery images most similar to the target), picks the
target in at least `min_correct` of `votes` tries, each with another candidate order and seed.
"""

from __future__ import annotations



import pyarrow as pa
from pydantic import Field, model_validator

from cirflow.schemas.base import Strict
from cirflow.schemas.mllm import SamplingParams
from cirflow.schemas.paths import LocalPath, TemplatePath
from cirflow.schemas.tables import STR_LIST

# What an MLLM refusal starts with (CoLLM: "responses beginning with 'I apologize...'"), lower-cased.
DEFAULT_REFUSALS = ("i apologize", "i'm sorry", "i am sorry", "sorry, i", "i cannot", "i can't", "i can not",
                    "i'm unable", "i am unable", "i won't")


class RefineOptions(Strict):
    hard_negatives: int = Field(3, ge=1, le=8)  # CoLLM: top-3 most similar gallery images to the target
    votes: int = Field(3, ge=1, le=24)  # validation tries per text, each with a different candidate order
    min_correct: int = Field(2, ge=1)  # CoLLM: pass when >= 2 of 3 tries pick the target
    levels: int = Field(3, ge=1, le=6)  # regenerated texts per failed triplet, coarse -> fine
    good_examples: int = Field(3, ge=0)  # passing original texts shown to the regenerator as [GOOD SAMPLES]
    seed: int = 0
    validate_prompt: TemplatePath | None = None  # template files; default cirflow/prompts/refine_*.<benchmark>.txt
    regenerate_prompt: TemplatePath | None = None
    validate_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(temperature=0.0, max_tokens=16))
    regenerate_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(
        temperature=0.7, top_p=0.95, max_tokens=256))
    refusal_prefixes: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSALS))
    shard_size: int = Field(64, ge=1)  # triplets per committed shard (one batched MLLM call each)
    # Where the refined benchmark (official layout), the report and decisions.parquet go; default
    # <output_dir>/<name>. Images are linked (symlinks to the original image folders) when local.
    out_dir: LocalPath | None = None
    link_images: bool = True
    # validation: each candidate fitted into a cell x cell square of the one candidate strip (supp. 8.2 shows
    # the candidates concatenated horizontally; the paper gives no size: 336 is CLIP-L/14-336's input)
    candidate_cell: int = Field(336, ge=32, le=1024)

    @model_validator(mode="after")
    def _votes(self) -> "RefineOptions":
        if self.min_correct > self.votes:
            raise ValueError(f"min_correct={self.min_correct} exceeds votes={self.votes}")
        return self


# ------------------------------------------------------------------------------------------------ tables

# refine_candidates: the candidates each validation shows (target + hard negatives), one row per query.
CANDIDATES = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("reference_id", pa.string(), nullable=False),
    pa.field("target_id", pa.string()),  # null when the query has no target or no features
    pa.field("negatives", STR_LIST),  # most similar first
    pa.field("similarities", pa.list_(pa.float32())),
    pa.field("status", pa.string(), nullable=False),  # "ok" | "failed"
    pa.field("error", pa.string()),
])

# refine_validate: one row per (query, vote) of one validation round (level 0 = the original text).
VOTES = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("level", pa.int32(), nullable=False),
    pa.field("vote", pa.int32(), nullable=False),
    pa.field("text", pa.string()),  # the modification text under test
    pa.field("order", STR_LIST),  # candidate image ids as shown (position 1 first)
    pa.field("target_position", pa.int32()),  # 1-based
    pa.field("choice", pa.int32()),  # 1-based answer, -1 = none of them (CoLLM table 24); null unless status == "ok"
    pa.field("correct", pa.bool_(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # "ok" | "refused" | "unparsable" | "failed"
    pa.field("error", pa.string()),
    pa.field("raw", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("seconds", pa.float32()),
])

# refine_validate "state": where every query stands after this round (cumulative over earlier rounds).
STATE = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("state", pa.string(), nullable=False),  # "passed" | "pending" | "refused" | "error"
    pa.field("level", pa.int32()),  # the level whose text passed
    pa.field("text", pa.string()),  # the passing text
    pa.field("correct", pa.list_(pa.int32())),  # correct votes per tested level (-1: not tested)
])

# refine_benchmark "data": the decision per triplet.
DECISIONS = pa.schema([
    pa.field("query_id", pa.string(), nullable=False),
    pa.field("reference_id", pa.string(), nullable=False),
    pa.field("target_id", pa.string()),
    pa.field("decision", pa.string(), nullable=False),  # "kept" | "revised" | "removed"
    pa.field("reason", pa.string()),  # removed: "refused" | "unresolved" | "regeneration_failed" | "no_candidates"
    pa.field("level", pa.int32()),  # 0 = original text passed, k = k-th regenerated text (coarse=1)
    pa.field("original_text", pa.string(), nullable=False),
    pa.field("final_text", pa.string()),  # null when removed
    pa.field("regenerated", STR_LIST),  # coarse -> fine; empty when not regenerated
    pa.field("negatives", STR_LIST),
    pa.field("correct", pa.list_(pa.int32())),  # correct votes per level (-1: not tested)
    pa.field("refusals", pa.int32(), nullable=False),
    pa.field("unparsable", pa.int32(), nullable=False),
    pa.field("failed", pa.int32(), nullable=False),  # transport / server errors
    pa.field("new_index", pa.int32()),  # Fashion-IQ: the triplet's index in the refined caption file
])
