"""release: export a finished build as a folder others can load:

    <out_dir>/data/<table>.parquet       one file per training table (only rows with status "ok")
    <out_dir>/README.md                  dataset card: YAML header (license, configs, counts, models, params,
                                         prompt texts, source artifact keys) and a short body

`datasets.load_dataset("parquet", data_files={"train": "<out_dir>/data/<table>.parquet"})` loads a table; the
card's `configs` section lets `load_dataset(<out_dir>, "<table>")` find them too. Images are referenced by
path (and sha256), never copied.

Tables per build:
  mtcir:       triplets (reference_id/path, target_id/path, direction, category, modification, pair_id)
  instructcir: triplets (reference_id/path, target_id/path, modification, pair_id)
  mvft:        triplets (reference_id/path, modification, target_text) and captions (image_id, path, caption)
The folder is written to a temporary sibling and renamed into place, so a half-written release never exists.
"""

from __future__ import annotations

import io
import json
import posixpath
import uuid
from typing import Literal

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from cirflow.schemas.builds import ReleaseConfig
from cirflow.storage import Artifact

Build = Literal["mtcir", "instructcir", "mvft"]


def _images(collection: Artifact) -> dict[str, dict]:
    return {r["image_id"]: r for r in collection.read("images", columns=["image_id", "path", "sha256"]).to_pylist()}


def release_tables(build: Build, artifacts: dict[str, Artifact]) -> dict[str, pa.Table]:
    img = _images(artifacts["collection"])
    if build == "mtcir":
        t = artifacts["texts"].read().to_pylist()
        rows = [{"pair_id": r["pair_id"], "reference_id": r["ref_id"], "reference_path": img[r["ref_id"]]["path"],
                 "target_id": r["tgt_id"], "target_path": img[r["tgt_id"]]["path"], "direction": r["direction"],
                 "category": r["category"], "modification": r["text"]} for r in t if r["status"] == "ok"]
        return {"triplets": _table(rows, ["pair_id", "reference_id", "reference_path", "target_id", "target_path",
                                          "direction", "category", "modification"])}
    if build == "instructcir":
        t = artifacts["texts"].read().to_pylist()
        rows = [{"pair_id": r["pair_id"], "reference_id": r["ref_id"], "reference_path": img[r["ref_id"]]["path"],
                 "target_id": r["tgt_id"], "target_path": img[r["tgt_id"]]["path"], "modification": r["text"]}
                for r in t if r["status"] == "ok"]
        return {"triplets": _table(rows, ["pair_id", "reference_id", "reference_path", "target_id", "target_path",
                                          "modification"])}
    if build == "mvft":
        t = artifacts["texts"].read().to_pylist()
        trip = [{"reference_id": r["image_id"], "reference_path": img[r["image_id"]]["path"],
                 "modification": r["modification"], "target_text": r["target_text"]} for r in t if r["status"] == "ok"]
        c = artifacts["captions"].read(columns=["id", "text", "status"]).to_pylist()
        caps = [{"image_id": r["id"], "path": img[r["id"]]["path"], "caption": r["text"]} for r in c if r["status"] == "ok"]
        return {"triplets": _table(trip, ["reference_id", "reference_path", "modification", "target_text"]),
                "captions": _table(caps, ["image_id", "path", "caption"])}
    raise ValueError(f"unknown build {build!r}")


def _table(rows: list[dict], columns: list[str]) -> pa.Table:
    schema = pa.schema([(c, pa.string()) for c in columns])
    return pa.Table.from_pylist(rows, schema=schema)


def run(build: Build, artifacts: dict[str, Artifact], cfg: ReleaseConfig, *, models: dict | None = None,
        params: dict | None = None) -> str:
    """Write the release folder; returns its path. `artifacts` needs "collection" and "texts" (+ "captions"
    for mvft); every artifact given is listed in the card with its key, stats and params."""
    tables = release_tables(build, artifacts)
    fs, out = fsspec.core.url_to_fs(cfg.out_dir)
    out = out.rstrip("/")
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    fs.makedirs(posixpath.join(tmp, "data"), exist_ok=True)
    for name, t in tables.items():
        buf = io.BytesIO()
        pq.write_table(t, buf, compression="zstd")
        fs.pipe_file(posixpath.join(tmp, "data", f"{name}.parquet"), buf.getvalue())
    fs.pipe_file(posixpath.join(tmp, "README.md"), dataset_card(build, tables, artifacts, cfg, models, params).encode())
    if fs.exists(out):
        fs.rm(out, recursive=True)
    fs.mv(tmp, out, recursive=True)
    return cfg.out_dir.rstrip("/")


def dataset_card(build: Build, tables: dict[str, pa.Table], artifacts: dict[str, Artifact], cfg: ReleaseConfig,
                 models: dict | None, params: dict | None) -> str:
    prompts = {}
    for stage_name, art in artifacts.items():
        p = art.manifest.params
        for k, v in p.items():
            if ("template" in k or k == "system") and isinstance(v, str):
                prompts[f"{art.stage}.{k}"] = v
    header = {
        "license": cfg.license,
        "license_details": cfg.license_details,
        "pretty_name": cfg.name,
        "task_categories": ["image-to-image", "text-to-image"],
        "tags": ["composed-image-retrieval", "synthetic", f"cirflow-{build}"],
        "configs": [{"config_name": name, "data_files": [{"split": "train", "path": f"data/{name}.parquet"}]}
                    for name in tables],
        "cirflow": {
            "build": build,
            "counts": {name: t.num_rows for name, t in tables.items()},
            "models": models or {},
            "params": params or {},
            "prompts": prompts,
            "artifacts": {name: {"stage": a.stage, "key": a.key, "stats": _small(a.manifest.stats)}
                          for name, a in artifacts.items()},
        },
    }
    counts = "\n".join(f"- `{n}`: {t.num_rows:,} rows ({', '.join(t.column_names)})" for n, t in tables.items())
    body = (f"# {cfg.name}\n\nA synthetic composed-image-retrieval training set built with cirflow "
            f"(`{build}` build) from an unlabeled image collection.\n\n## Tables\n{counts}\n\n"
            "Load one with `datasets.load_dataset(\"parquet\", data_files=...)`. Images are referenced by path; "
            "they are not part of this folder.\n\n## Licence\n"
            f"{cfg.license}: {cfg.license_details}\n\n## Prompts\n"
            + "".join(f"\n### {k}\n\n```text\n{v.strip()}\n```\n" for k, v in prompts.items()))
    return "---\n" + yaml.safe_dump(json.loads(json.dumps(header, default=str)), sort_keys=False, allow_unicode=True,
                                    width=120) + "---\n\n" + body


def _small(stats: dict) -> dict:
    """Counts only: lists of failures stay in the store."""
    return {k: v for k, v in stats.items() if not isinstance(v, list)}
