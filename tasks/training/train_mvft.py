"""train_mvft (mvft-ji.txt §3.3, §4.1.3): fine-tune the BLIP-2 Q-Former VLM on MVFT training rows with
L = L_t + L_c (in-batch InfoNCE over token-level similarities), AdamW, lr ×0.1 every 10 epochs, batch 128.

Input: `triplets`, an `mvft_training_data` artifact (its "data" table: image_id, sample, path, modification,
target_text, caption). Output: a trained model folder (`model/`: a complete MVFT folder that
`MVFTModel.from_pretrained` reads, + factory.json), the `log` table and `loss.png` (tasks/training/train.py).

Key: the base model's identity (sha256 of its weights and of its tokenizer / preprocessor files, its k and d)
+ the training-data artifact's key + every
hyper-parameter (TrainConfig.key_fields(), temperature, use_Lt / use_Lc) + seed + code version. The base folder's
path is not in the key (moving it recomputes nothing); its weights are.
"""

from __future__ import annotations

from pathlib import Path

from cirflow.schemas.errors import ConfigError
from cirflow.schemas.mvft import MVFTTrainSection
from cirflow.schemas.training import Ref
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.stage import execute, key_params
from cirflow.tasks.training.train import TrainParams, TrainRuntime, TrainStage

TRAINING = "cirflow.models.mvft.training"
_INPUT_FILES = {"vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "preprocessor_config.json"}


class MVFTTrainParams(TrainParams):
    """TrainParams whose key leaves out where the base folder is (the refs' `base` kwarg): `base` already holds
    its identity (weights sha256), so a moved folder recomputes nothing and changed weights recompute all."""

    def key_fields(self) -> dict:
        out = {k: key_params(getattr(self, k)) for k in type(self).model_fields}
        for ref in ("model", "dataset"):
            out[ref]["kwargs"] = {k: v for k, v in out[ref]["kwargs"].items() if k != "base"}
        return out


class TrainMVFT(TrainStage):
    name = "train_mvft"
    inputs = ("triplets",)
    Params = MVFTTrainParams


def base_identity(base: str | Path) -> dict:
    """The untrained VLM as a key: weights sha256 + its config's k and d (no path)."""
    import json

    from cirflow.models.mvft.identity import SETTINGS_FILE, weights_sha256  # not model.py: no torch at `--plan`
    from cirflow.models.weights import file_sha256

    p = Path(base)
    cfg = json.loads((p / "config.json").read_text())
    settings = json.loads((p / SETTINGS_FILE).read_text()) if (p / SETTINGS_FILE).is_file() else {}
    # the tokenizer and the image preprocessing decide the inputs, so they are part of the encoder's identity
    inputs = {f.name: file_sha256(f) for f in sorted(p.iterdir()) if f.name in _INPUT_FILES}
    return {"model": "blip2-qformer", "weights": weights_sha256(p), "num_query_tokens": cfg.get("num_query_tokens"),
            "dim": cfg.get("image_text_hidden_size"), "settings": settings, "inputs": inputs}


def params(base: str | Path, section: MVFTTrainSection, seed: int) -> MVFTTrainParams:
    ident = base_identity(base)
    if ident["num_query_tokens"] != section.num_query_tokens:
        raise ConfigError(f"train.num_query_tokens is {section.num_query_tokens} but the base model {base} has "
                          f"{ident['num_query_tokens']} query tokens (k is fixed by the checkpoint)")
    loss = section.loss
    if not (loss.use_Lt or loss.use_Lc):
        raise ConfigError("train.loss: use_Lt and use_Lc are both false: nothing to train")
    base = str(Path(base).resolve())
    return MVFTTrainParams(
        base=ident,
        model=Ref(target=f"{TRAINING}:build", kwargs={"base": base}),
        dataset=Ref(target=f"{TRAINING}:dataset", kwargs={"base": base}),
        loss=Ref(target=f"{TRAINING}:loss", kwargs=loss.model_dump()),
        collate=Ref(target=f"{TRAINING}:collate"),
        train=section.train.model_copy(update={"seed": seed}),
        code_version=section.code_version,
    )


def run(store: ArtifactStore, triplets: Artifact, base: str | Path, section: MVFTTrainSection, *, seed: int = 0,
        progress: bool = True) -> Artifact:
    return execute(TrainMVFT, store, {"triplets": triplets}, params(base, section, seed),
                   TrainRuntime(progress=progress))
