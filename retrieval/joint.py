"""MVFT-JI joint inference (mvft-ji.txt §3.4) and the BLIP-2 baselines of its appendix C, on token features.

    score(q, i) = ŝ(q -> i) + λ · s̃(t -> i)

ŝ: token-level similarity (eq. 11) of the fine-tuned VLM's composed-query tokens to the candidate image's tokens
(eqs. 15-16); s̃: the same similarity (eq. 12) of the VLM's tokens of the MLLM-written target text t (eqs. 17-18,
the compose stage's text) to the image's tokens. The fusion formula itself (eq. 19) is missing from the paper's
text: this weighted sum with λ = 1 by default is our reading of "we fuse the two similarity scores", not a
formula copied from the paper. λ only enters here, so a λ change recomputes fusion and scoring, never features.

Modes (features each needs, all [Q, k, d] float32 rows aligned with the queries, tokens L2-normalised):
- "joint":       ŝ + λ·s̃                     composed, target_text     (MVFT-JI)
- "composed":    ŝ only                      composed                  (table 4 "w/o s̃")
- "target_text": s̃ only                      target_text               (table 4 "w/o ŝ"; appendix C "Target Text"
                                                                        with the untrained BLIP-2)
- "image_only":  reference image -> image    reference                 (appendix C "Image-only")
- "text_only":   modification text -> image  modification              (appendix C "Text-only")
- "image_text":  the average of the reference image's and the modification's features -> image
                                             reference, modification   (appendix C "Image + Text")
For "image_text" the features are averaged token by token (a single [CLS] text token, BLIP-2's own text feature,
is broadcast over the image's k tokens) and re-normalised: the paper averages single vectors; this is the
token-level reading of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from typing import TYPE_CHECKING

import pyarrow as pa

from cirflow.schemas.errors import ConfigError

if TYPE_CHECKING:  # torch and the token scorer load where scores are computed: `--plan` imports this module
    import torch

MODES = {
    "joint": ("composed", "target_text"),
    "composed": ("composed",),
    "target_text": ("target_text",),
    "image_only": ("reference",),
    "text_only": ("modification",),
    "image_text": ("reference", "modification"),
}


def required_features(mode: str) -> tuple[str, ...]:
    if mode not in MODES:
        raise ConfigError(f"unknown MVFT-JI mode {mode!r}: expected one of {sorted(MODES)}")
    return MODES[mode]


def mode_terms(mode: str, feats: dict[str, np.ndarray], lam: float = 1.0) -> tuple[list[np.ndarray], list[float]]:
    """(query feature sets, weights) whose weighted token-level scores make the mode's score."""
    need = required_features(mode)
    missing = [n for n in need if feats.get(n) is None]
    if missing:
        raise ConfigError(f"MVFT-JI mode {mode!r} needs the features {list(need)}; missing {missing}")
    if mode == "joint":
        return [feats["composed"], feats["target_text"]], [1.0, float(lam)]
    if mode == "image_text":
        return [average_features(feats["reference"], feats["modification"])], [1.0]
    return [feats[need[0]]], [1.0]


def average_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Token-wise mean of two [Q, k, d] feature sets (a [Q, 1, d] side is broadcast), re-normalised per token."""
    m = (np.asarray(a, np.float32) + np.asarray(b, np.float32)) / 2
    return (m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def fuse(s_hat: np.ndarray, s_tilde: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """ŝ + λ·s̃ on stored [Q, G] score matrices (the same float32 arithmetic as the "joint" mode)."""
    return (np.asarray(s_hat, np.float32) + np.float32(lam) * np.asarray(s_tilde, np.float32)).astype(np.float32)


def joint_scores(mode: str, feats: dict[str, np.ndarray], image_feats: np.ndarray, *, lam: float = 1.0,
                 device: str | torch.device | None = None) -> np.ndarray:
    """The mode's full [Q, G] score matrix."""
    terms, weights = mode_terms(mode, feats, lam)
    from cirflow.retrieval.token_topk import TokenScorer

    return TokenScorer(terms, image_feats, weights=weights, device=device).matrix()


def joint_topk(mode: str, feats: dict[str, np.ndarray], image_feats: np.ndarray, k: int, *, lam: float = 1.0,
               exclude: np.ndarray | None = None, device: str | torch.device | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of the mode's scores (chunked, memory bounded; tie rule of retrieval/topk.py)."""
    terms, weights = mode_terms(mode, feats, lam)
    from cirflow.retrieval.token_topk import TokenScorer

    return TokenScorer(terms, image_feats, weights=weights, device=device).topk(k, exclude=exclude)


def rank_joint(benchmark: str, queries: pa.Table, mode: str, feats: dict[str, np.ndarray], image_ids: Sequence[str],
               image_feats: np.ndarray, in_gallery: np.ndarray, *, lam: float = 1.0, k: int = 50,
               circo_exclude_reference: bool = False, device: str | torch.device | None = None) -> pa.Table:
    """RANKINGS table of the mode under the benchmark's rules (reference removal, CIRR subsets, GeneCIS)."""
    terms, weights = mode_terms(mode, feats, lam)
    from cirflow.retrieval.token_topk import rank_token_queries

    return rank_token_queries(benchmark, queries, terms, image_ids, image_feats, in_gallery, weights=weights, k=k,
                              circo_exclude_reference=circo_exclude_reference, device=device)
