"""train_mvft stores a trained MVFT model: cached on a rerun, a new key for a hyper-parameter, the seed or a loss
switch (table 4's w/o L_c is another training), never for a moved base folder; the stored folder loads as an MVFT
model with trained weights, through its stage reference."""

from __future__ import annotations

import shutil

import pytest
import torch

from cirflow.demo.mvft import training_rows
from cirflow.models.mvft import MVFTModel, build_tiny_mvft
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.mvft import MVFTTrainSection
from cirflow.storage import ArtifactStore
from cirflow.storage.keys import canonical, stage_key
from cirflow.tasks.mvft.mvft_training_data import from_rows
from cirflow.tasks.stage import key_params
from cirflow.tasks.training import resolve_model_ref
from cirflow.tasks.training.train_mvft import TrainMVFT, params, run


def _section(**loss) -> MVFTTrainSection:
    return MVFTTrainSection.model_validate({
        "num_query_tokens": 4, "loss": loss,
        "train": {"epochs": 2, "lr": 1e-3, "effective_batch_size": 16, "per_device_batch_size": 8,
                  "checkpoint_every": 100, "progress": False}})


def test_train_mvft_cached_keyed_and_loadable(tmp_path, mini_bench):
    import pyarrow.parquet as pq

    base = build_tiny_mvft(tmp_path / "tiny-mvft")
    rows = tmp_path / "rows.parquet"
    pq.write_table(training_rows(mini_bench, per_image=1).slice(0, 48), rows)
    store = ArtifactStore(str(tmp_path / "store"))
    data = from_rows(store, str(rows), progress=False)
    assert data.read("data").num_rows == 48

    art = run(store, data, base, _section(), seed=0, progress=False)
    assert art.report.status == "computed"
    log = art.read("log")
    assert log.num_rows == 2 * (48 // 16) and {"L_t", "L_c", "lr"} <= set(log.column_names)
    again = run(store, data, base, _section(), seed=0, progress=False)
    assert again.report.status == "cached" and again.key == art.key

    # the stored folder is a plain MVFT model folder with the trained weights
    folder = resolve_model_ref(store, "stage:train_mvft")
    trained, untrained = MVFTModel.from_pretrained(folder), MVFTModel.from_pretrained(base)
    assert trained.num_tokens == 4
    t, u = trained.blip.state_dict(), untrained.blip.state_dict()
    assert not torch.equal(t["query_tokens"], u["query_tokens"])
    assert torch.equal(t["vision_model.embeddings.patch_embedding.weight"],
                       u["vision_model.embeddings.patch_embedding.weight"])  # the ViT is frozen

    def key(section, seed=0, b=base):
        return stage_key(TrainMVFT.name, TrainMVFT.version, canonical(key_params(params(b, section, seed))),
                         {"triplets": data.key})

    assert key(_section()) == art.key
    moved = shutil.copytree(base, tmp_path / "moved-base")
    assert key(_section(), b=moved) == art.key  # identity is the weights, not the path
    variants = [key(_section(), seed=1), key(_section(use_Lc=False)), key(_section(temperature=0.05)),
                key(MVFTTrainSection.model_validate({**_section().model_dump(), "train": {
                    **_section().train.model_dump(), "lr": 2e-3}}))]
    assert len({art.key, *variants}) == 1 + len(variants)
    with pytest.raises(ConfigError, match="num_query_tokens"):
        params(base, MVFTTrainSection(), 0)  # the default k = 32 is not the tiny model's 4
