"""CoLLM training under kill -9 and on two processes (tiny random open_clip ViT + Qwen2-shaped decoder, the
procedural drawings of test_collm_shapes.py), each run a separate process as a user's run starts it.

* train_collm (pre-training on synthesized triplets): kill -9 after the first checkpoint, rerun → it resumes and
  the stored model.safetensors is byte-identical to an uninterrupted run's. The synthesis draws (augmentation,
  which samples get a template, which template) and LoRA dropout come from torch's global RNG, which the
  checkpoint restores, so the resumed run synthesizes exactly what the uninterrupted one did.
* 1 process vs 2 processes (torchrun, gloo) at half the per-process batch reach the same weights up to float noise
  on real triplets (train_collm_triplets): the loss gathers every process's features, so the HN-NCE negatives are
  the whole micro-batch either way. Pre-training is NOT compared this way: its synthesis is per process by design
  (eq. 1's nearest neighbour is searched within each process's own batch, as in the paper's per-GPU LLaVA
  training, and each process draws its own augmentations from its seed + rank stream), so 2 processes train on
  other synthesized triplets than 1 — equal only in distribution. LoRA dropout is 0 here for the same reason
  (each rank draws its own masks).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
import cir_training_runs as runs  # noqa: E402

from cirflow.models.collm.tiny import build_tiny_llm  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("collm-resume")
    settings = {"vision_model": f"local-dir:{tiny_models['encoder']}", "llm": str(build_tiny_llm(root / "llm")),
                "lora_rank": 4}
    return settings, runs.write_inputs(root / "data", copies=1, triplets=64)


def _spec(settings: dict, stage: str, processes: int = 1, checkpoint_every: int = 2, **settings_kw) -> dict:
    return {"stage": stage, "settings": {**settings, **settings_kw},
            "train": {"epochs": 1, "lr": 3e-3, "effective_batch_size": 8, "per_device_batch_size": 8 // processes,
                      "checkpoint_every": checkpoint_every, "progress": False, "launcher": runs.launcher(processes)}}


def test_pretraining_kill_9_then_rerun_equals_uninterrupted(tmp_path, setup):
    settings, data = setup
    spec = _spec(settings, "collm")  # 48 drawings, batch 8: 6 steps, checkpoints at 2 and 4
    killed = tmp_path / "killed"
    runs.kill_after_first_checkpoint(runs.start(killed, data, spec), killed, "train_collm")
    resumed = runs.finish(runs.start(killed, data, spec))
    plain = runs.finish(runs.start(tmp_path / "plain", data, spec))
    assert resumed["key"] == plain["key"] and resumed["status"] == plain["status"] == "computed"
    assert 0 < resumed["stats"]["resumed_from"] < 6 and plain["stats"]["resumed_from"] == 0
    a, b = runs.sha256(resumed["model"]), runs.sha256(plain["model"])
    print(f"\nsha256 killed+resumed  {a}\nsha256 uninterrupted   {b}")
    assert a == b


def test_two_gloo_processes_equal_one_on_triplets(tmp_path, setup):
    settings, data = setup
    one = runs.finish(runs.start(tmp_path / "one", data, _spec(settings, "collm_triplets", 1, 100, lora_dropout=0.0)))
    two = runs.finish(runs.start(tmp_path / "two", data, _spec(settings, "collm_triplets", 2, 100, lora_dropout=0.0)))
    assert one["key"] == two["key"]  # the launcher and per-process batch are not in the key: the same model
    assert two["stats"]["world_size"] == 2
    w1, w2 = (load_file(str(Path(d["model"]) / "model.safetensors")) for d in (one, two))
    assert w1.keys() == w2.keys()
    lora = [k for k in w1 if "lora_B" in k]
    assert lora and max(w1[k].abs().max().item() for k in lora) > 1e-3  # it trained (LoRA B starts at 0)
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    print(f"\nmax |w(1 process) - w(2 processes)| = {worst:.2e} over {len(w1)} tensors")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), (k, (w1[k] - w2[k]).abs().max().item())
