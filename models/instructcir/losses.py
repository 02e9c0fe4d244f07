"""InstructCIR's batch contrastive loss (instructcir.txt eq. 2), for both training stages.

L_contr = 1/B Σ_i −log( exp(τ·κ(e_r^i, e_t^i)) / Σ_j exp(τ·κ(e_r^i, e_t^j)) ),  κ = cosine similarity.

As printed, τ MULTIPLIES the cosine ("a temperature parameter that controls the range of the logits"): a logit
scale. The paper does not print its value; the default 100 is CLIP's learned logit scale (exp 4.6052), the
backbone the paper starts from (an assumption), kept fixed. Stage two (λ combiner) uses the same loss with e_f in
place of e_r (the model's forward returns it as "query"). Features are gathered over processes first
(`all_gather_with_grad`): the negatives are the whole micro-batch (batch 32 in §IV-A).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cirflow.training.dist import all_gather_with_grad


def contrastive(e_r: torch.Tensor, e_t: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 2 on a batch: rows are queries, row i's positive is target i."""
    logits = tau * (F.normalize(e_r.float(), dim=-1) @ F.normalize(e_t.float(), dim=-1).T)
    return F.cross_entropy(logits, torch.arange(len(e_r), device=e_r.device))


def loss(model, batch: dict, tau: float = 100.0, gather: bool = True) -> dict[str, torch.Tensor]:
    """`Ref(target="cirflow.models.instructcir:loss", kwargs={"tau": ...})`: {"loss", "L_contr"} (+ λ for stage
    two, logged)."""
    feats = model(**batch)
    q, t = feats["query"], feats["target"]
    if gather:
        q, t = all_gather_with_grad(q), all_gather_with_grad(t)
    term = contrastive(q, t, tau)
    out = {"loss": term, "L_contr": term}
    lam = getattr(getattr(model, "module", model), "lam", None)  # a DDP wrapper holds the model as .module
    if lam is not None:
        out["lambda"] = lam.detach()
    return out
