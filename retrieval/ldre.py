"""LDRE's divergent-caption ensemble (metrics-and-methods.md B.2; yzy-bupt/LDRE, src/divergent_caption_ensemble.py).

Given n caption slots per query — f_o[i] the normalised text features of the i-th reference caption, f_t[i] those
of its LLM edit — and the normalised gallery features G:

    d_i    = f_t[i]·Gᵀ − f_o[i]·Gᵀ                                # [nQ, nG]; = (f_t[i] − f_o[i])·Gᵀ
    drop_i = Σ_queries Σ top-k over the gallery of max(0, −d_i)     # k = 5 (LDRE default)
    w      = softmax((drop / max(drop)) / T)  over the n slots       # T = 0.04 (LDRE default)
    q      = Σ_i w_i · f_t[i]                                       # not re-normalised; S = q·Gᵀ

* Public-code variant (`per_query=False`): one weight per slot, shared by all queries (the sum runs over the
  queries), as in the released code. Note that the released file hard-codes k = 50 in one code path; LDRE's
  documented default is 5, which is ours.
* Per-query variant (`per_query=True`, B.2 marks the paper's intent as UNVERIFIED): the same formula without
  the sum over queries, normalised by each query's own max → weights [nQ, n].
* `ldre_mean_query`: LDRE's CIRR path, a plain average of the n edited-caption features (then L2-normalised, as the
  released code normalises the mean).

Deviation, documented: when every drop is 0 (no slot lowers any similarity), the released code divides by 0 and
yields NaN weights; here the weights are then uniform.

Memory: d_i is computed one slot and one block of queries at a time (`chunk` queries × nG floats), so CIRCO's
test scale (nG = 123k, n = 15, nQ = 800) never materialises [n, nQ, nG].

Inputs may be numpy arrays or torch tensors (any device); the output has the type of `f_t`.
"""

from __future__ import annotations

# Queries per block so that one block of d_i is about 32 Mi floats (128 MiB in float32; CIRCO: 272 queries).
_BLOCK_FLOATS = 1 << 25


def ldre_weights(f_t, f_o, gallery, *, k: int = 5, temperature: float = 0.04, per_query: bool = False,
                 chunk: int | None = None):
    """Slot weights of B.2. f_t, f_o: [n, nQ, D]; gallery: [nG, D]. Returns [n] (shared) or [nQ, n] (per_query).

    `chunk`: queries per block when computing d_i (None = sized from nG); it changes memory, never the result.
    """
    import torch

    as_numpy = not isinstance(f_t, torch.Tensor)
    t_t, t_o, g = (torch.as_tensor(x) for x in (f_t, f_o, gallery))
    if t_t.ndim != 3 or t_t.shape != t_o.shape:
        raise ValueError(f"f_t and f_o must both be [n, nQ, D]; got {tuple(t_t.shape)} and {tuple(t_o.shape)}")
    if g.ndim != 2 or g.shape[1] != t_t.shape[2]:
        raise ValueError(f"gallery must be [nG, {t_t.shape[2]}]; got {tuple(g.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n, nq, _ = t_t.shape
    ng = g.shape[0]
    if n == 0 or nq == 0 or ng == 0:
        raise ValueError("ldre_weights needs at least one slot, one query and one gallery item")
    kk = max(1, min(int(k), ng))
    dtype = torch.promote_types(t_t.dtype, g.dtype) if t_t.is_floating_point() else torch.float32
    g = g.to(dtype)
    block = max(1, int(chunk) if chunk else _BLOCK_FLOATS // ng)
    drop = torch.zeros(n, nq, dtype=torch.float64, device=g.device)  # per slot and query
    for i in range(n):
        delta = (t_t[i].to(g.device, dtype) - t_o[i].to(g.device, dtype))  # [nQ, D]
        for s in range(0, nq, block):
            neg = (delta[s:s + block] @ g.T).neg_().clamp_(min=0)  # max(0, −d_i) for a block of queries, in place
            drop[i, s:s + block] = torch.topk(neg, kk, dim=1).values.sum(dim=1, dtype=torch.float64)
    if per_query:
        w = _softmax_scaled(drop.T, temperature)  # [nQ, n]
    else:
        w = _softmax_scaled(drop.sum(dim=1), temperature)  # [n]
    return w.cpu().numpy() if as_numpy else w


def _softmax_scaled(drop, temperature: float):
    """softmax((drop / max(drop)) / T) over the last axis; uniform where max(drop) is 0."""
    import torch

    top = drop.max(dim=-1, keepdim=True).values
    safe = torch.where(top > 0, top, torch.ones_like(top))
    return torch.softmax((drop / safe) / temperature, dim=-1)


def ldre_query(f_t, weights):
    """q = Σ_i w_i f_t[i] (B.2), not re-normalised. f_t: [n, nQ, D]; weights: [n] (shared) or [nQ, n]
    (per-query). Returns [nQ, D] of f_t's type."""
    import torch

    as_numpy = not isinstance(f_t, torch.Tensor)
    t = torch.as_tensor(f_t)
    out_dtype = t.dtype if t.is_floating_point() else torch.float32
    w = torch.as_tensor(weights, device=t.device)
    dtype = torch.promote_types(t.dtype, w.dtype) if t.is_floating_point() else torch.float32
    t, w = t.to(dtype), w.to(dtype)
    n, nq, _ = t.shape
    if w.shape == (n,):
        q = torch.einsum("i,iqd->qd", w, t)
    elif w.shape == (nq, n):
        q = torch.einsum("qi,iqd->qd", w, t)
    else:
        raise ValueError(f"weights must be [{n}] or [{nq}, {n}]; got {tuple(w.shape)}")
    q = q.to(out_dtype)
    return q.cpu().numpy() if as_numpy else q


def ldre_mean_query(f_t, *, normalize: bool = True):
    """LDRE's CIRR path (B.2): the plain mean of the n slot features, L2-normalised by default. [n, nQ, D] → [nQ, D]."""
    import torch

    as_numpy = not isinstance(f_t, torch.Tensor)
    t = torch.as_tensor(f_t)
    q = t.mean(dim=0)
    if normalize:
        q = torch.nn.functional.normalize(q, dim=-1)
    return q.cpu().numpy() if as_numpy else q


__all__ = ["ldre_mean_query", "ldre_query", "ldre_weights"]
