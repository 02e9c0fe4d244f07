"""MVFT-JI (mvft-ji.txt): the BLIP-2 Q-Former model, its token-level similarity and losses, and its training data.

    model = MVFTModel.from_pretrained(dir)            # or build_tiny_mvft(dir) first, for tests and demos
    feats = model.encode_composed(px, ids, mask)      # [B, k, d], L2-normalised (also encode_image / encode_text)
    out = loss_fn(model, batch)                       # {"loss", "L_t", "L_c"} on a MVFTDataset / collate batch
"""

from cirflow.models.mvft.data import MVFTDataset, collate
from cirflow.models.mvft.losses import MVFTLoss, info_nce, loss_fn, token_similarity
from cirflow.models.mvft.model import MVFTModel, MVFTSettings, weights_sha256
from cirflow.models.mvft.tiny import build_tiny_mvft

__all__ = ["MVFTDataset", "MVFTLoss", "MVFTModel", "MVFTSettings", "build_tiny_mvft", "collate", "info_nce",
           "loss_fn", "token_similarity", "weights_sha256"]
