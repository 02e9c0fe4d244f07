"""The training engine in one process: it learns, its data order and schedule are what the docs say, its
checkpoint format restores optimizer state exactly without pickle, and configs that cannot add up are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cirflow.schemas.training import TrainConfig
from cirflow.training import fit, seeds_summary
from cirflow.training.checkpoint import _read_state, _write_state, flatten_state, unflatten_state
from cirflow.training.data import epoch_permutation, rank_batches
from cirflow.training.schedule import lr_at

sys.path.insert(0, str(Path(__file__).parent))
import training_toy as toy  # noqa: E402


def test_training_beats_untrained_on_held_out(tmp_path):
    train = toy.write_vectors(tmp_path / "train.parquet", 512, seed=1)
    held_out = toy.vectors(256, seed=99)
    model = toy.build()
    before = toy.recall_at_1(model, held_out)
    cfg = TrainConfig(epochs=15, per_device_batch_size=32, effective_batch_size=64, lr=3e-3, checkpoint_every=50,
                      progress=False)
    result = fit(model, toy.infonce, toy.dataset([train]), cfg, tmp_path / "ckpt")
    after = toy.recall_at_1(result.model, held_out)
    assert before < 0.05 and after > 0.6, (before, after)
    log = result.log
    assert log.num_rows == result.stats["steps"] == 15 * (512 // 64)
    assert {"step", "epoch", "loss", "loss_q2t", "loss_t2q", "lr", "samples_per_s", "seconds"} <= set(log.column_names)
    losses = log.column("loss").to_pylist()
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])
    final = result.final_dir
    assert (final / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a finished run is returned as is, with the same weights, by a second call
    again = fit(toy.build(), toy.infonce, toy.dataset([train]), cfg, tmp_path / "ckpt")
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                   result.model.state_dict().values()))


def test_data_order_is_seeded_per_epoch_and_ranks_split_one_process_batches():
    perm = epoch_permutation(40, seed=3, epoch=1)
    assert sorted(perm.tolist()) == list(range(40))
    assert np.array_equal(perm, epoch_permutation(40, seed=3, epoch=1))
    assert not np.array_equal(perm, epoch_permutation(40, seed=3, epoch=2))
    # one process at batch 8 with 2 micro-steps of 4 == 2 processes at 2 each, per micro-step
    one = rank_batches(perm, 2, effective=8, per_device=4, world=1, rank=0)
    two = [rank_batches(perm, 2, effective=8, per_device=2, world=2, rank=r) for r in (0, 1)]
    assert len(one) == len(two[0]) == 2
    for m in range(2):
        assert one[m] == two[0][m] + two[1][m]
    assert sum(one, []) == perm[16:24].tolist()


def test_schedule_step_cosine_warmup():
    step = TrainConfig(lr=1.0, effective_batch_size=8, per_device_batch_size=8,
                       schedule={"kind": "step", "gamma": 0.1, "step_epochs": 10})
    assert lr_at(0, step, 5, 500) == 1.0 and lr_at(49, step, 5, 500) == 1.0
    assert lr_at(50, step, 5, 500) == pytest.approx(0.1) and lr_at(100, step, 5, 500) == pytest.approx(0.01)
    cos = TrainConfig(lr=2.0, effective_batch_size=8, per_device_batch_size=8,
                      schedule={"kind": "cosine", "warmup_steps": 10})
    assert lr_at(0, cos, 5, 110) == pytest.approx(0.2) and lr_at(9, cos, 5, 110) == pytest.approx(2.0)
    assert lr_at(60, cos, 5, 110) == pytest.approx(1.0) and lr_at(110, cos, 5, 110) == pytest.approx(0.0)


def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path):
    model = toy.build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    for _ in range(3):
        model(torch.randn(4, toy.DIM), torch.randn(4, toy.DIM))[0].sum().backward()
        opt.step()
    _write_state(tmp_path, "optimizer", opt.state_dict())
    restored = _read_state(tmp_path, "optimizer")
    want = opt.state_dict()
    assert restored["param_groups"] == want["param_groups"]  # int keys and the betas tuple keep their types
    assert restored["state"].keys() == want["state"].keys()
    for i, s in want["state"].items():
        for k, v in s.items():
            assert torch.equal(restored["state"][i][k], v), (i, k)
    doc, tensors = flatten_state({1: (2, torch.ones(2))})
    assert unflatten_state(doc, tensors)[1][0] == 2
    with pytest.raises(TypeError, match="without pickle"):
        flatten_state({"f": lambda: 0})
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


def test_config_refuses_batches_that_do_not_add_up():
    with pytest.raises(ValidationError, match="not a multiple"):
        TrainConfig(effective_batch_size=128, per_device_batch_size=48)
    with pytest.raises(ValidationError, match="not a multiple"):
        TrainConfig(effective_batch_size=64, per_device_batch_size=32,
                    launcher={"kind": "torchrun", "num_processes": 3})
    with pytest.raises(ValidationError):
        TrainConfig(unknown_knob=1)
    cfg = TrainConfig(effective_batch_size=1024, per_device_batch_size=64, launcher={"kind": "accelerate",
                                                                                     "num_processes": 4})
    assert cfg.grad_accumulation_steps == 4 and cfg.key_fields()["micro_batch_size"] == 256
    assert "launcher" not in cfg.key_fields() and "checkpoint_every" not in cfg.key_fields()


def test_seeds_summary_mean_and_sample_std():
    s = seeds_summary({0: {"recall@1": 10.0}, 1: {"recall@1": 12.0}, 2: {"recall@1": 14.0, "extra": 1.0}})
    assert s["recall@1"]["mean"] == pytest.approx(12.0) and s["recall@1"]["std"] == pytest.approx(2.0)
    assert s["recall@1"]["n"] == 3 and s["extra"] == {"mean": 1.0, "std": 0.0, "n": 1, "values": {2: 1.0}}


def test_too_few_samples_for_one_batch_is_a_user_error(tmp_path):
    from cirflow.schemas.errors import ConfigError

    train = toy.write_vectors(tmp_path / "train.parquet", 10, seed=1)
    cfg = TrainConfig(per_device_batch_size=16, effective_batch_size=16, progress=False)
    with pytest.raises(ConfigError, match="fewer than one effective batch"):
        fit(toy.build(), toy.infonce, toy.dataset([train]), cfg, tmp_path / "ckpt")
