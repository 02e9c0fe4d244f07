"""CoLLM learns: a short training of a tiny random CoLLM (open_clip ViT + Qwen2-shaped decoder) beats its untrained
self at held-out retrieval, measured with the project's top-k and CIRR Recall@K code (tests/cir_heldout.py).

Data with a learnable structure (tests/test_collm_shapes.py): one coloured shape per image, captions and
modification texts that say what is drawn. Held out: new drawings of the 48 scenes (other sizes and positions) as
the gallery, and new (reference, modification, target) triplets over them.

* pre-training on synthesized triplets (train_collm, §3.2): text queries (eq. 4, the caption alone) find their
  drawing — Recall@5 over the 48-image gallery rises from chance (~10 %) to well above it;
* training on MTCIR-shaped triplets (train_collm_triplets, §3.3): composed queries (reference drawing + "change
  the red circle to a blue star") find their target — Recall@5 rises likewise.
The untrained model is the training's own starting point (the factory under the training seed). Margins were
checked over training seeds 0, 1, 2 (values in the constants' comments).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import cir_heldout  # noqa: E402
import test_collm_shapes as shapes  # noqa: E402

from cirflow.models.collm import CoLLMModel  # noqa: E402
from cirflow.models.collm.tiny import build_tiny_llm  # noqa: E402
from cirflow.storage import ArtifactStore  # noqa: E402
from cirflow.tasks.stage import execute  # noqa: E402
from cirflow.tasks.training import TrainRuntime, resolve_model_ref  # noqa: E402
from cirflow.tasks.training.train_collm import (TrainCoLLM, TrainCoLLMTriplets, collm_params,  # noqa: E402
                                                collm_train_config)
from cirflow.training.refs import build_model  # noqa: E402

SEED = 0
# Recall@5 points over the untrained model (48 held-out queries: 2.1 points a query). Training seeds 0 / 1 / 2 gave
# text +29.2 / +25.0 / +31.3 after pre-training and composed +29.2 / +14.6 / +22.9 after triplet training.
TEXT_MARGIN, COMPOSED_MARGIN = 15.0, 10.0


@pytest.fixture(scope="module")
def base(tiny_models, tmp_path_factory):
    return {"vision_model": f"local-dir:{tiny_models['encoder']}",
            "llm": str(build_tiny_llm(tmp_path_factory.mktemp("collm-learn") / "llm")), "lora_rank": 8}


class HeldOut(cir_heldout.HeldOutScenes):
    """New drawings of every scene (the gallery) and triplets over them."""

    @torch.no_grad()
    def text_recall(self, model: CoLLMModel) -> dict:
        model.eval()
        return cir_heldout.recall(model.encode_query(None, [r["caption"] for r in self.rows]),
                                  model.encode_image(self.pixels), self.ids, self.ids)

    @torch.no_grad()
    def composed_recall(self, model: CoLLMModel) -> dict:
        model.eval()
        at = {i: k for k, i in enumerate(self.ids)}
        h = model.encode_image(self.pixels[[at[t["ref_id"]] for t in self.triplets]])
        return cir_heldout.recall(model.encode_query(h, [t["text"] for t in self.triplets]),
                                  model.encode_image(self.pixels), self.ids, [t["tgt_id"] for t in self.triplets])


def _train(seed: int, **kw):
    return collm_train_config(**{"epochs": 3, "lr": 3e-3, "effective_batch_size": 16, "per_device_batch_size": 16,
                                 "checkpoint_every": 1000, "progress": False, "seed": seed, **kw})


def learn(root: Path, base: dict, seed: int = SEED) -> dict[str, dict]:
    """Train both stages on the drawings; held-out Recall@K of the trained and untrained models."""
    store = ArtifactStore(str(root / "store"))
    rows = shapes.make_images(root / "img", copies=2)  # 96 drawings
    coll = shapes.ingest(store, root / "img", rows)
    held = HeldOut(root / "held")
    out = {}

    pre = collm_params(base, _train(seed))  # 18 steps of 16
    art = execute(TrainCoLLM, store, {"collection": coll, "captions": None}, pre, TrainRuntime(progress=False))
    assert art.report.status == "computed"
    out["pretrain_untrained"] = held.text_recall(build_model(pre.model, seed))
    out["pretrain_trained"] = held.text_recall(CoLLMModel.from_trained(resolve_model_ref(store, f"key:{art.key}")))

    texts = shapes.texts_artifact(store, shapes.triplet_rows(rows, 192, seed=1))
    tri = collm_params(base, _train(seed), triplets=True)  # 36 steps of 16, from the base models
    ft = execute(TrainCoLLMTriplets, store, {"texts": texts, "collection": coll, "init": None}, tri,
                 TrainRuntime(progress=False))
    out["triplets_untrained"] = held.composed_recall(build_model(tri.model, seed))
    out["triplets_trained"] = held.composed_recall(CoLLMModel.from_trained(resolve_model_ref(store, f"key:{ft.key}")))
    return out


def test_training_beats_the_untrained_model_on_held_out_retrieval(tmp_path, base):
    r = learn(tmp_path, base)
    print("\n" + "\n".join(f"{k:20s} R@1 {v['recall@1']:5.1f}  R@5 {v['recall@5']:5.1f}" for k, v in r.items()))
    assert r["pretrain_trained"]["recall@5"] >= r["pretrain_untrained"]["recall@5"] + TEXT_MARGIN, r
    assert r["triplets_trained"]["recall@5"] >= r["triplets_untrained"]["recall@5"] + COMPOSED_MARGIN, r
    # Recall@1 is not asserted: over 48 queries it moves by one or two queries at this scale (too noisy a margin)
