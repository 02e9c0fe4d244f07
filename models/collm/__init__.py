"""CoLLM (collm.txt): an LLM embedder for composed image retrieval, trained on triplets synthesized on the fly from
image–caption pairs (§3.2) and fine-tuned on real triplets such as the stored MTCIR build (§3.3, supp. 9.2).

    model = build_collm(vision_model=..., vision_pretrained=..., llm=..., lora_rank=64)   # or CoLLMModel.from_trained
    out = pretrain_loss(model, batch, alpha=0.5, text_ratio=0.75)    # {"loss", "L_composed", "L_image_query", ...}
    out = triplet_loss(model, batch)                                   # {"loss", "L_composed"}
    CaptionPairs(tables, preprocess) / Triplets(tables, preprocess)    # the training data
    slerp, neighbours, synthesize_texts, templates                     # the triplet synthesis (eqs. 1-2, supp. 7.1)
"""

from cirflow.models.collm.data import CaptionPairs, Triplets, caption_pairs, triplets
from cirflow.models.collm.losses import (ContrastiveSettings, PretrainSettings, contrastive, hn_nce, pretrain_loss,
                                         similarity, triplet_loss)
from cirflow.models.collm.model import CoLLMModel, CoLLMSettings, build_collm
from cirflow.models.collm.synthesis import augment, neighbours, paper_data, slerp, synthesize_texts, templates

__all__ = ["CaptionPairs", "CoLLMModel", "CoLLMSettings", "ContrastiveSettings", "PretrainSettings", "Triplets",
           "augment", "build_collm", "caption_pairs", "contrastive", "hn_nce", "neighbours", "paper_data",
           "pretrain_loss", "similarity", "slerp", "synthesize_texts", "templates", "triplet_loss", "triplets"]
