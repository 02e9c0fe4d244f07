"""mvft_training_data: the MVFT-JI training rows (cirflow.models.mvft.training.TRAINING_ROWS) as one artifact,
the `triplets` input of train_mvft.

- from the MVFT build (inputs `collection`, `texts` = mvft_texts, `captions` = caption_collection): per image its
  ok triplet (modification, target text) joined with its ok caption (§3.2; the triplet's reference image is the
  caption's image); images without both are dropped and counted;
- or from a Parquet file of rows (`rows_sha256` = the file's content, the key): e.g. the demo's rows written
  from the mini benchmark's labels.
"""

from __future__ import annotations

from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from cirflow.schemas.errors import CirflowError
from cirflow.schemas.tables import MVFT_TRAINING_ROWS as TRAINING_ROWS
from cirflow.tasks.stage import Context, Params, Runtime, Stage


class TrainingDataParams(Params):
    source: Literal["build", "rows"]
    rows_sha256: str | None = None  # source "rows": the file's content


class TrainingDataRuntime(Runtime):
    rows_path: str | None = None  # source "rows": where the file is (not in the key)


class MVFTTrainingData(Stage):
    name, version = "mvft_training_data", "1"
    Params, Runtime = TrainingDataParams, TrainingDataRuntime
    inputs = ()  # source "build": collection, texts, captions
    outputs = {"data": TRAINING_ROWS}

    def produce(self, ctx: Context) -> None:
        if ctx.params.source == "rows":
            t = pq.read_table(ctx.runtime.rows_path)
            missing = [c for c in TRAINING_ROWS.names if c not in t.column_names]
            if missing:
                raise CirflowError(f"{ctx.runtime.rows_path}: MVFT training rows lack columns {missing}")
            table, stats = t.select(TRAINING_ROWS.names).cast(TRAINING_ROWS), {}
        else:
            from cirflow.tasks.builds.release import release_tables

            tables = release_tables("mvft", {k: ctx.inputs[k] for k in ("collection", "texts", "captions")})
            from cirflow.models.mvft.data import join_rows  # torch: only when the rows are built, not at `--plan`

            rows, stats = join_rows(tables["triplets"], tables["captions"])
            table = pa.Table.from_pylist([{**r, "sample": 0} for r in rows], schema=TRAINING_ROWS)
        if table.num_rows == 0:
            raise CirflowError("MVFT training data is empty: no image has both a target-text triplet and a caption")
        ctx.write_table("data", table)
        ctx.scratch["stats"] = {**stats, "rows": table.num_rows,
                                "images": len(set(table.column("image_id").to_pylist()))}

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch.get("stats") or {}


def from_build(store, collection, texts, captions, *, progress: bool = True):
    from cirflow.tasks.stage import execute

    return execute(MVFTTrainingData, store, {"collection": collection, "texts": texts, "captions": captions},
                   TrainingDataParams(source="build"), TrainingDataRuntime(progress=progress))


def from_rows(store, path: str, *, progress: bool = True):
    from cirflow.models.weights import file_sha256
    from cirflow.tasks.stage import execute

    return execute(MVFTTrainingData, store, {}, TrainingDataParams(source="rows", rows_sha256=file_sha256(path)),
                   TrainingDataRuntime(rows_path=str(path), progress=progress))
