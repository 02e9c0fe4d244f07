"""LDRE's ensemble settings (metrics-and-methods B.2): the params of the ldre_query stage, also used by methods
that run LDRE as their baseline (IP-CIR)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cirflow.schemas.base import Strict
from cirflow.schemas.mllm import SamplingParams


class LDREConfig(Strict):
    """LDRE (metrics-and-methods B.2): n sampled reference captions, one edit each, a weighted ensemble."""

    n_captions: int = Field(15, ge=1)
    # divergent captions come from nucleus sampling (BLIP-2 in the paper)
    caption_sampling: SamplingParams = Field(default_factory=lambda: SamplingParams(
        temperature=1.0, top_p=0.9, max_tokens=64, seed=0))
    # Unset (None) = the paper's value for where LDRE runs, filled in by `resolved`: weighting "mean" on CIRR
    # (LDRE's CIRR path, a plain average) and "ensemble" elsewhere; k / temperature 5 / 0.04 for LDRE itself,
    # 50 / 0.01 as the baseline inside IP-CIR (the IP-CIR authors' code, metrics-and-methods B.1).
    weighting: Literal["ensemble", "mean"] | None = None
    k: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, gt=0)
    per_query: bool = False  # public code: weights per caption slot shared by all queries

    def resolved(self, method: str, benchmark: str) -> "LDREConfig":
        """A copy with every unset field at its paper value on `benchmark`: LDRE's own k / temperature (5 / 0.04).
        A method that runs LDRE with other values (IP-CIR: 50 / 0.01) sets them in its own config's validator;
        `method` is kept for the callers' signature."""
        k, temperature = 5, 0.04
        return self.model_copy(update={
            "weighting": self.weighting or ("mean" if benchmark == "cirr" else "ensemble"),
            "k": self.k if self.k is not None else k,
            "temperature": self.temperature if self.temperature is not None else temperature})
