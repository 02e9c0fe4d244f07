"""CoLLM's training objective (collm.txt §3.2 eq. 6, §3.3).

    pretrain_loss(model, batch, **kwargs)   # image–caption pairs: (L(c^v, z) + L(c^w, z) + L(c, z)) / 3   (eq. 6)
    triplet_loss(model, batch, **kwargs)    # real triplets (MTCIR fine-tuning): L(c, z) only              (§3.3)

L_cl is "a contrastive loss [44], consistent with previous works [56, 59]": [44] is DiHT, which introduced HN-NCE,
and [59] (CoVR) trains with HN-NCE. Default `kind="hnnce"` with CoVR's values temperature 0.07, alpha 1, beta 0.5
(assumption: CoLLM prints none of them); `kind="infonce"` is the plain one-directional query → target InfoNCE.
HN-NCE (DiHT eq. 5, CoVR's implementation): both directions, negatives re-weighted by
w_ij = (B − 1)·exp(β s_ij/τ) / Σ_{k≠i} exp(β s_ik/τ), the positive scaled by α; the two directions are summed.
With α = 1, β = 0 it is the symmetric InfoNCE sum.

Features are gathered over processes (`all_gather_with_grad`) before the loss, so the negatives are the global
micro-batch. The in-batch neighbour of the synthesis (eq. 1) is searched within each process's own batch (the
per-GPU batch of the paper's LLaVA-codebase training); with N processes the neighbour pool is per_device_batch_size.

Table 6 ablations are loss settings (each a different training key): 6a image interpolation off = `alpha=1`
(h* = h'_i), text interpolation off = `text_ratio=0`; 6b `image_query=False` / `text_query=False`; 6c
`neighbour="random"`; fig. 7 sweeps `alpha` and `text_ratio`.
"""

from __future__ import annotations

import torch

from cirflow.models.mvft.losses import info_nce
from cirflow.training.dist import all_gather_with_grad
from cirflow.schemas.collm import ContrastiveSettings, PretrainSettings  # torch-free, for `--plan`


def similarity(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cosine similarities [Nq, Nt]."""
    return torch.nn.functional.normalize(q.float(), dim=-1) @ torch.nn.functional.normalize(t.float(), dim=-1).T


def hn_nce(scores: torch.Tensor, temperature: float, alpha: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """HN-NCE over a square score matrix (row i's positive is column i), summed over both directions."""
    b = scores.shape[0]
    s = scores / temperature
    eye = torch.eye(b, dtype=torch.bool, device=s.device)
    total = s.new_zeros(())
    for m in (s, s.T):  # query → target rows, then target → query
        e = torch.exp(beta * m).masked_fill(eye, 0.0)
        w = (b - 1) * e / e.sum(dim=1, keepdim=True)
        w = w.masked_fill(eye, alpha)
        total = total + (torch.log((torch.exp(m) * w).sum(dim=1)) - m.diagonal()).mean()
    return total


def contrastive(q: torch.Tensor, t: torch.Tensor, cfg: ContrastiveSettings) -> torch.Tensor:
    if cfg.gather:
        q, t = all_gather_with_grad(q), all_gather_with_grad(t)
    scores = similarity(q, t)
    if cfg.kind == "infonce":
        return info_nce(scores, cfg.temperature)
    return hn_nce(scores, cfg.temperature, cfg.hn_alpha, cfg.hn_beta)


def pretrain_loss(model, batch: dict, **kwargs) -> dict[str, torch.Tensor]:
    cfg = PretrainSettings(**kwargs)
    need = ("composed",) + (("image_query",) if cfg.image_query else ()) + (("text_query",) if cfg.text_query else ())
    feats = model(**batch, need=need, synthesize={"alpha": cfg.alpha, "text_ratio": cfg.text_ratio,
                                                  "neighbour": cfg.neighbour})
    terms = {f"L_{k}": contrastive(feats[k], feats["target"], cfg) for k in need}
    return {"loss": sum(terms.values()) / len(terms), **terms}


def triplet_loss(model, batch: dict, **kwargs) -> dict[str, torch.Tensor]:
    cfg = ContrastiveSettings(**kwargs)
    feats = model(**batch)
    term = contrastive(feats["composed"], feats["target"], cfg)
    return {"loss": term, "L_composed": term}
