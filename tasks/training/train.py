"""The shape of every `train_*` stage: a trained model stored like any artifact.

    class TrainMVFT(TrainStage):
        name = "train_mvft"
        inputs = ("triplets",)                 # training-data artifacts; their "data" tables feed the dataset
    art = execute(TrainMVFT, store, {"triplets": build_art}, TrainParams(base=..., model=Ref(...), ...))

Artifact: `model/` (model.safetensors, factory.json = the model Ref that rebuilds the architecture, and whatever
the model's `export_extras` writes: configs, tokenizer files), the `log` table (step, epoch, every loss term, lr,
samples_per_s, seconds) and `loss.png`. Key: the base model identity (weights sha256 / revision, given by the
caller) + the input artifacts' keys + model/dataset/loss refs with their kwargs + TrainConfig.key_fields()
(every hyper-parameter and the seed, not the launcher or checkpoint cadence) + the engine and model code
versions.

Checkpoints: on a local store they live in the artifact folder, `<store>/<stage>/<key>/_checkpoints/`, so a
killed run resumes from there; they are removed once the manifest is written. On an object store they go to a
local scratch folder keyed the same way (`TrainRuntime.scratch`, default ~/.cache/cirflow/train) and only the
final files are uploaded — a resume then needs the same machine. Two identical trainings started at once on one
store would share that folder: the stage takes a whole-stage lease first (tasks/training/lease.py), so the second
one waits and returns the first one's artifact (status "cached"), or resumes from its checkpoints if it died.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from cirflow.schemas.training import Ref, TrainConfig, TrainSpec
from cirflow.storage import Artifact, ArtifactStore
from cirflow.storage.manifest import STORE_FORMAT
from cirflow.tasks.stage import Context, Params, Runtime, Stage
from cirflow.tasks.training.lease import TrainingLease

ENGINE_VERSION = "1"  # bump when cirflow.training changes what a run computes
MODEL_DIR = "model"
CHECKPOINTS = "_checkpoints"
_NOT_MODEL = {"log.parquet", "loss.png", "result.json"}


class TrainParams(Params):
    """The whole identity of a trained model."""

    base: dict[str, Any]  # base model identity: name + revision / weights sha256 (e.g. EncoderConfig.key_fields())
    model: Ref  # target(**kwargs) -> nn.Module
    dataset: Ref  # target(tables={input: [parquet paths]}, **kwargs) -> map-style dataset
    loss: Ref  # target(model, batch, **kwargs) -> {"loss": ..., terms...}
    collate: Ref | None = None
    train: TrainConfig  # contributes key_fields() only
    code_version: str = "1"  # the model/loss code's own version (bump when it changes what it computes)
    tables: dict[str, str] = {}  # input name -> table fed to the dataset (default "data")


class TrainRuntime(Runtime):
    scratch: str | None = None  # checkpoint folder root for object stores
    keep_checkpoints: bool = False  # leave _checkpoints/ after success (debugging)


class TrainStage(Stage):
    """Subclasses set `name` ("train_<method>") and `inputs`."""

    Params: ClassVar[type[Params]] = TrainParams
    Runtime: ClassVar[type[Runtime]] = TrainRuntime
    version: ClassVar[str] = ENGINE_VERSION

    def produce(self, ctx: Context) -> None:
        lease = TrainingLease(ctx.store, ctx.run.dir)
        if not lease.take(lambda: _committed(ctx), on_wait=_show_wait):
            ctx.run.report.status = "cached"  # an identical training committed it meanwhile: execute() returns it
            return
        try:
            self._train(ctx)
        except BaseException:
            lease.release()  # a failed training frees the key at once (its checkpoints stay for the rerun)
            raise
        ctx.scratch["lease"] = lease  # released by execute() after the manifest, once the checkpoints are removed

    def _train(self, ctx: Context) -> None:
        p: TrainParams = ctx.params
        ckpt_dir = checkpoint_dir(ctx.store, self.name, ctx.run.key, ctx.runtime.scratch)
        tables = {name: input_parquet_paths(art, p.tables.get(name, "data"), ckpt_dir / "inputs" / name)
                  for name, art in sorted(ctx.inputs.items())}
        dataset = Ref(target=p.dataset.target, kwargs={**p.dataset.kwargs, "tables": tables})
        train = p.train.model_copy(update={"progress": p.train.progress and ctx.runtime.progress})
        spec = TrainSpec(model=p.model, dataset=dataset, loss=p.loss, collate=p.collate, train=train,
                         ckpt_dir=str(ckpt_dir))
        # cirflow.training (torch) only when a model trains: `--plan` imports this module and must not pay for torch
        from cirflow.training.export import FACTORY, factory_json
        from cirflow.training.launch import launch

        final = launch(spec)
        for path in sorted(f for f in final.rglob("*") if f.is_file()):
            rel = path.relative_to(final).as_posix()
            if rel not in _NOT_MODEL:
                ctx.run.write_file(f"{MODEL_DIR}/{rel}", path.read_bytes())
        ctx.run.write_file(f"{MODEL_DIR}/{FACTORY}", factory_json(p.model))
        ctx.run.write_table("log", pq.read_table(final / "log.parquet"))
        ctx.run.write_file("loss.png", (final / "loss.png").read_bytes())
        ctx.scratch["result"] = json.loads((final / "result.json").read_text())
        ctx.scratch["checkpoints"] = _Cleanup(ckpt_dir, keep=ctx.runtime.keep_checkpoints)

    def stats(self, ctx: Context) -> dict:
        return dict(ctx.scratch.get("result") or {})


def _committed(ctx: Context) -> bool:
    """Another writer committed this artifact (a valid manifest): `execute()`'s finish() then keeps theirs."""
    manifest, _ = ctx.store.load_manifest(ctx.run.stage, ctx.run.key)
    return (manifest is not None and manifest.store_format >= STORE_FORMAT
            and not Artifact(ctx.store, manifest).problems())


def _show_wait(holder: dict) -> None:
    from cirflow.schemas.progress import current

    line = current()
    if line is not None:
        line.detail(f"waiting: pid {holder.get('pid')} on {holder.get('host')} is training this model")


class _Cleanup:
    """Removes the checkpoints when the stage run ends (execute() calls cleanup() after the manifest)."""

    def __init__(self, path: Path, keep: bool):
        self.path, self.keep = path, keep

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def is_local(store: ArtifactStore) -> bool:
    return isinstance(store.fs, LocalFileSystem)


def checkpoint_dir(store: ArtifactStore, stage: str, key: str, scratch: str | None = None) -> Path:
    if is_local(store):
        return Path(store.artifact_dir(stage, key)) / CHECKPOINTS
    root = Path(scratch or os.environ.get("CIRFLOW_TRAIN_SCRATCH") or Path.home() / ".cache/cirflow/train")
    return root / stage / key / CHECKPOINTS


def input_parquet_paths(art: Artifact, table: str, scratch: Path) -> list[str]:
    """Local Parquet files of an input table: the shard files themselves on a local store, else one verified
    download into `scratch`."""
    if is_local(art.store):
        return [art.file_path(s.name) for s in art.manifest.shards if s.table == table]
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / f"{table}.parquet"
    if not path.is_file():
        tmp = path.with_suffix(".tmp")
        pq.write_table(art.read(table), tmp)  # read() checks every shard's sha256
        os.replace(tmp, path)
    return [str(path)]
