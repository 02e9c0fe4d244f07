"""MVFT-JI (mvft-ji.txt): the BLIP-2 Q-Former model, its token-level similarity and losses, and its training data.

    model = MVFTModel.from_pretrained(dir)            # or build_tiny_mvft(dir) first, for tests and demos
    feats = model.encode_composed(px, ids, mask)      # [B, k, d], L2-normalised (also encode_image / encode_text)
    out = loss_fn(model, batch)                       # {"loss", "L_t", "L_c"} on a MVFTDataset / collate batch
"""

# Names load on first access (PEP 562): importing any cirflow.models.mvft module runs this file, and the stage keys
# of `cirflow run --plan` need only identity.py, not torch.
_LAZY = {"MVFTDataset": "data", "collate": "data", "MVFTLoss": "losses", "info_nce": "losses", "loss_fn": "losses",
         "token_similarity": "losses", "MVFTModel": "model", "MVFTSettings": "model", "weights_sha256": "identity",
         "build_tiny_mvft": "tiny"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"cirflow.models.mvft.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MVFTDataset", "MVFTLoss", "MVFTModel", "MVFTSettings", "build_tiny_mvft", "collate", "info_nce",
           "loss_fn", "token_similarity", "weights_sha256"]
