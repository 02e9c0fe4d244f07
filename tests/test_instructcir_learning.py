"""InstructCIR learns: a short stage-one training of a tiny random reformulation network (open_clip ViT with text
cross-attention, EMA target encoder) beats its untrained self at held-out composed retrieval, and the λ combiner
stage trained on top (eq. 3) does not make it worse — measured with the project's top-k and CIRR Recall@K code
(tests/cir_heldout.py).

Data with a learnable structure (tests/test_collm_shapes.py): one coloured shape per image, and modification
texts that name the target fully ("change the red circle to a blue star on a black background"). Held out: new
drawings of the 48 scenes (other sizes and positions) as the gallery, and new triplets over them. The untrained
model is the training's own starting point (the factory under the training seed). Margins were checked over
training seeds 0, 1, 2 (values in the constants' comments); Recall@1 is not asserted (over 48 queries it moves by
a query or two at this scale).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import cir_heldout  # noqa: E402
import test_collm_shapes as shapes  # noqa: E402

from cirflow.models.instructcir import load_trained  # noqa: E402
from cirflow.storage import ArtifactStore  # noqa: E402
from cirflow.tasks.stage import execute  # noqa: E402
from cirflow.tasks.training import TrainRuntime, resolve_model_ref  # noqa: E402
from cirflow.tasks.training.train_instructcir import (TrainInstructCIR, instructcir_params,  # noqa: E402
                                                      instructcir_train_config)
from cirflow.tasks.training.train_instructcir_combiner import (TrainInstructCIRCombiner,  # noqa: E402
                                                              combiner_params, combiner_train_config)
from cirflow.training.refs import build_model  # noqa: E402

SEED = 0
# Recall@5 over 48 held-out queries (2.1 points a query). Training seeds 0 / 1 / 2 gave: stage one over the untrained
# model +22.9 / +27.1 / +8.4; the combiner (λ 0.5 → 0.85) against stage one's e_r alone −2.1 / +10.4 / −2.1.
MARGIN = 6.0  # stage one over the untrained model
ONE_QUERY = 100 / 48  # the combiner may lose at most one held-out query to stage one


@pytest.fixture(scope="module")
def clip(tiny_models):
    return f"local-dir:{tiny_models['encoder']}"


class HeldOut(cir_heldout.HeldOutScenes):
    """New drawings of every scene (the gallery) and triplets over them."""

    @torch.no_grad()
    def composed_recall(self, model) -> dict:
        model.eval()
        at = {i: k for k, i in enumerate(self.ids)}
        refs = self.pixels[[at[t["ref_id"]] for t in self.triplets]]
        q = model.encode_query(refs, [t["text"] for t in self.triplets])
        return cir_heldout.recall(q, model.encode_target(self.pixels), self.ids, [t["tgt_id"] for t in self.triplets])


def learn(root: Path, clip: str, seed: int = SEED) -> dict[str, dict]:
    store = ArtifactStore(str(root / "store"))
    rows = shapes.make_images(root / "img", copies=2)  # 96 drawings
    coll = shapes.ingest(store, root / "img", rows)
    inputs = {"texts": shapes.texts_artifact(store, shapes.triplet_rows(rows, 256, seed=1)), "collection": coll}
    held = HeldOut(root / "held")

    train = instructcir_train_config(epochs=4, lr=1e-3, effective_batch_size=16, per_device_batch_size=16,
                                     checkpoint_every=1000, progress=False, seed=seed)  # 64 steps of 16
    params = instructcir_params({"clip_model": clip}, train, tau=30.0)
    art = execute(TrainInstructCIR, store, inputs, params, TrainRuntime(progress=False))
    comb = execute(TrainInstructCIRCombiner, store, {**inputs, "backbone": art},
                   combiner_params(art, combiner_train_config(epochs=1, lr=5e-2, progress=False, seed=seed)),
                   TrainRuntime(progress=False))
    combiner = load_trained(resolve_model_ref(store, f"key:{comb.key}"))
    return {"untrained": held.composed_recall(build_model(params.model, seed)),
            "stage_one": held.composed_recall(load_trained(resolve_model_ref(store, f"key:{art.key}"))),
            "combiner": held.composed_recall(combiner), "lambda": float(combiner.lam.detach())}


def test_training_beats_the_untrained_model_and_the_combiner_keeps_it(tmp_path, clip):
    r = learn(tmp_path, clip)
    print("\n" + "\n".join(f"{k:10s} R@1 {v['recall@1']:5.1f}  R@5 {v['recall@5']:5.1f}" for k, v in r.items()
                           if isinstance(v, dict)) + f"\nλ = {r['lambda']:.3f}")
    assert r["stage_one"]["recall@5"] >= r["untrained"]["recall@5"] + MARGIN, r
    assert r["lambda"] != pytest.approx(0.5)  # λ moved
    # eq. 3 on top does not make it worse: mixing in φ_t(t) keeps the held-out recall of e_r alone (up to one query)
    assert r["combiner"]["recall@5"] >= r["stage_one"]["recall@5"] - ONE_QUERY - 1e-9, r
