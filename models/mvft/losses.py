"""MVFT-JI token-level similarity and training losses (mvft-ji.txt §3.3, eqs. 11-14).

s(A, B) = 1/|A| * sum over tokens a of A of max over tokens b of B of cos(a, b)      (eqs. 11-12)

The losses are in-batch InfoNCE with temperature tau (eq. 13), one-directional as the paper derives them: the
softmax of s(q, t) over the batch's target texts estimates p(t | q_r, q_m), the softmax of s(c, i) over the
batch's images estimates p(i | c) (§3.3 "Softmax-based Probability Estimation"); eqs. 13-14 themselves are lost
from the text. L = L_t + L_c (eq. 14); `use_Lt` / `use_Lc` switch a term off (table 4: w/o L_t, w/o L_c).

tau is a config field: the paper's value is lost; the default 0.07 is BLIP-2's initial ITC temperature (an
assumption, kept fixed rather than learned). Under torch.distributed the features of every process are gathered
(with gradients) before the loss, so the in-batch negatives are the global batch and N processes at batch B/N
compute the same loss as one process at batch B.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict


def token_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """s(A_i, B_j) for all pairs: a [Na, ka, d], b [Nb, kb, d] (L2-normalised tokens) -> [Na, Nb]."""
    na, ka, d = a.shape
    nb, kb, _ = b.shape
    cos = (a.reshape(na * ka, d) @ b.reshape(nb * kb, d).T).view(na, ka, nb, kb)
    return cos.amax(dim=3).mean(dim=1)


def info_nce(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch InfoNCE, anchors are rows and row i's positive is column i: mean_i -log softmax_j(s_ij / tau)[i]."""
    labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores / temperature, labels)


class MVFTLoss(BaseModel):
    """`loss(model, batch) -> {"loss", "L_t", "L_c"}` (a disabled term is reported as 0 and not computed).
    Every field goes into the training stage key (`key_fields()`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = 0.07
    use_Lt: bool = True
    use_Lc: bool = True
    gather: bool = True  # under torch.distributed: negatives from every process (see the module docstring)

    def key_fields(self) -> dict:
        return self.model_dump()

    def needs(self) -> tuple[str, ...]:
        """The features model.forward must compute for this loss."""
        return (("composed", "target") if self.use_Lt else ()) + (("caption", "image") if self.use_Lc else ())

    def __call__(self, model, batch: dict) -> dict[str, torch.Tensor]:
        if not (self.use_Lt or self.use_Lc):
            raise ValueError("MVFT loss: use_Lt and use_Lc are both off: nothing to train")
        feats = model(**batch, need=self.needs())
        if self.gather:
            feats = {k: _gather(v) for k, v in feats.items()}
        zero = next(iter(feats.values())).new_zeros(())
        l_t = info_nce(token_similarity(feats["composed"], feats["target"]), self.temperature) if self.use_Lt else zero
        l_c = info_nce(token_similarity(feats["caption"], feats["image"]), self.temperature) if self.use_Lc else zero
        return {"loss": l_t + l_c, "L_t": l_t, "L_c": l_c}


loss_fn = MVFTLoss()  # the paper's full objective, L = L_t + L_c


def _gather(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather  # differentiable: gradients flow back to each rank

    return torch.cat(all_gather(x.contiguous()), dim=0)
