"""InstructCIR (instructcir.txt): the cross-attention embedding reformulation network with an EMA target encoder
(§II-B, §II-C), trained on the stored InstructCIR build, and the λ combiner of eq. 3 as a second stage.

    model = build_instructcir(clip_model=..., clip_pretrained=...)    # or InstructCIRModel.from_trained(folder)
    e_r = model.encode_query(ref_pixels, texts); e_t = model.encode_target(pixels)
    out = loss(model, batch, tau=100.0)                                # {"loss", "L_contr"}  (eq. 2)
    comb = build_instructcir_combiner(backbone_dir)                    # stage two: e_f = λ·e_r + (1 − λ)·φ_t(t)
    load_trained(folder)                                               # either stage's trained folder
Training data: `cirflow.models.collm.data.Triplets` (a build's texts + its collection).
"""

from cirflow.models.instructcir.losses import contrastive, loss
from cirflow.models.instructcir.model import (InstructCIRCombiner, InstructCIRModel, InstructCIRSettings,
                                              ReformulationBlock, build_instructcir, build_instructcir_combiner,
                                              combine, load_trained)

__all__ = ["InstructCIRCombiner", "InstructCIRModel", "InstructCIRSettings", "ReformulationBlock",
           "build_instructcir", "build_instructcir_combiner", "combine", "contrastive", "load_trained", "loss"]
