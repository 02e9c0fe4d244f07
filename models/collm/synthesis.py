"""CoLLM's on-the-fly triplet synthesis from image–caption pairs (collm.txt §3.2, fig. 3, supp. 7.1–7.3).

    j = neighbours(h_aug, mode="nearest")          # eq. 1: in-batch nearest neighbour by cosine similarity (j ≠ i)
    h_star = slerp(h_aug, h_aug[j], alpha=0.5)       # eq. 2: the synthesized reference image embedding
    w_star = synthesize_texts(w, j, ratio=0.75)      # supp. 7.1 templates for 75 % of samples, else w_i (fig. 7)

Randomness (augmentation, random neighbours, which samples get a template and which template) draws from torch's
global generator, which the training engine seeds per process and restores on resume, so a resumed run
synthesizes what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from cirflow.schemas.collm import paper_data  # torch-free: CoLLMSettings' default instruction reads it

_EPS = 1e-6


def templates() -> list[str]:
    return list(paper_data()["templates"])


def neighbours(h: torch.Tensor, mode: Literal["nearest", "random"] = "nearest") -> torch.Tensor:
    """Index j(i) ≠ i for every row of h [B, d]: eq. 1's argmax of cosine similarity, or a uniformly random other
    sample (table 6c's "random in-batch sample")."""
    b = h.shape[0]
    if b < 2:
        raise ValueError("triplet synthesis needs at least 2 samples per batch (an in-batch neighbour)")
    if mode == "random":
        # uniform over the b − 1 others: draw from [0, b − 1) and skip i
        r = torch.randint(0, b - 1, (b,), device=h.device)
        return r + (r >= torch.arange(b, device=h.device)).long()
    if mode != "nearest":
        raise ValueError(f"neighbour mode must be 'nearest' or 'random', got {mode!r}")
    with torch.no_grad():  # an index: no gradient
        u = F.normalize(h.float(), dim=-1)
        sim = u @ u.T
        sim.fill_diagonal_(float("-inf"))
        return sim.argmax(dim=1)


def slerp(h_i: torch.Tensor, h_j: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 2 on unit vectors: θ = arccos(h_i·h_j), h* = sin(αθ)/sinθ · h_i + sin((1−α)θ)/sinθ · h_j.

    As printed, the weight sin(αθ) sits on h_i, so α = 1 gives h_i and a larger α keeps h* closer to h_i (the
    paper's reading of α). Inputs are L2-normalised first (θ is only an angle for unit vectors); nearly parallel
    pairs (sinθ ≈ 0) fall back to the linear interpolation the formula tends to."""
    a, b = F.normalize(h_i, dim=-1), F.normalize(h_j, dim=-1)
    cos = (a * b).sum(-1, keepdim=True).clamp(-1 + _EPS, 1 - _EPS)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    w_i, w_j = torch.sin(alpha * theta) / sin, torch.sin((1 - alpha) * theta) / sin
    near = sin < 1e-4
    w_i = torch.where(near, torch.full_like(w_i, alpha), w_i)
    w_j = torch.where(near, torch.full_like(w_j, 1 - alpha), w_j)
    return w_i * a + w_j * b


def fill_template(template: str, w_i: str, w_j: str) -> str:
    return template.format(w_i=_clause(w_i), w_j=_clause(w_j))


def synthesize_texts(captions: Sequence[str], j: torch.Tensor, ratio: float,
                     template_set: Sequence[str] | None = None) -> list[str]:
    """w*_i: with probability `ratio` a random template over (w_i, w_j(i)), else w_i itself (supp. 7.3: "when
    synthesis does not occur, w*_i = w_i")."""
    tpl = list(template_set) if template_set is not None else templates()
    b = len(captions)
    use = torch.rand(b) < ratio
    pick = torch.randint(0, len(tpl), (b,))
    jj = j.tolist()
    return [fill_template(tpl[int(pick[i])], captions[i], captions[jj[i]]) if bool(use[i]) else captions[i]
            for i in range(b)]


def augment(pixels: torch.Tensor, scale: tuple[float, float] = (0.5, 1.0), flip: float = 0.5) -> torch.Tensor:
    """t ~ T on a preprocessed batch [B, 3, H, W]: a random resized crop (area fraction in `scale`, aspect kept) and
    a horizontal flip. The paper does not name its augmentation family T (an assumption; SimCLR-style crops)."""
    b, _, hgt, wid = pixels.shape
    out = []
    for k in range(b):
        s = float(torch.empty(()).uniform_(*scale))
        ch, cw = max(1, round(hgt * s ** 0.5)), max(1, round(wid * s ** 0.5))
        top = int(torch.randint(0, hgt - ch + 1, ()))
        left = int(torch.randint(0, wid - cw + 1, ()))
        crop = pixels[k:k + 1, :, top:top + ch, left:left + cw]
        img = F.interpolate(crop, size=(hgt, wid), mode="bilinear", align_corners=False)
        if float(torch.rand(())) < flip:
            img = img.flip(-1)
        out.append(img)
    return torch.cat(out)


def _clause(caption: str) -> str:
    # captions end in a full stop; inside a template they are a clause ("show a dog instead of a cat")
    return str(caption).strip().rstrip(".").strip()
