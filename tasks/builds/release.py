"""release: export a finished build as a folder the Hugging Face `datasets` library loads as it is:

    <out_dir>/data/<table>.parquet       one file per training table (only rows with status "ok")
    <out_dir>/README.md                  dataset card (huggingface_hub DatasetCard): license, configs (the first
                                         table is the default config), declared features, counts, models,
                                         params, prompt texts, source artifact keys

`datasets.load_dataset(<out_dir>)` loads the default table (`triplets`), `load_dataset(<out_dir>, "captions")`
another. Every image column is a `datasets.Image` feature with the image bytes embedded (checked against the
collection's sha256): paths would only resolve on the machine that built the release, and `datasets` opens a
relative path against the working directory, not the release folder. The source path and id stay as string
columns for provenance (and for `cirflow.models.mvft.data`, which reads `reference_path`).

Tables per build (`*_image` columns are the images of the `*_path` beside them):
  mtcir:       triplets (pair_id, reference_id/path/image, target_id/path/image, direction, category, modification)
  instructcir: triplets (pair_id, reference_id/path/image, target_id/path/image, modification)
  mvft:        triplets (reference_id/path/image, modification, target_text) and captions (image_id, path, image,
               caption)
A build with no ok row in a table is refused (an empty Parquet file cannot be loaded). The folder is written to a
temporary sibling and renamed into place, so a half-written release never exists.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import uuid
from typing import Literal

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from cirflow.schemas.builds import ReleaseConfig
from cirflow.schemas.errors import CirflowError
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


IMAGE_BATCH = 256  # rows whose image bytes are held in memory at once while a table is written


def image_column(path_column: str) -> str:
    """reference_path -> reference_image, path -> image."""
    return "image" if path_column == "path" else path_column[: -len("_path")] + "_image"


def features(table: pa.Table) -> "datasets.Features":
    """The declared features of a released table: strings, plus an Image after every path column."""
    import datasets  # imported here: every flow imports this module, few write a release

    out = {}
    for c in table.column_names:
        out[c] = datasets.Value("string")
        if c == "path" or c.endswith("_path"):
            out[image_column(c)] = datasets.Image()
    return datasets.Features(out)


def _require_rows(tables: dict[str, pa.Table], artifacts: dict[str, Artifact]) -> None:
    for name, t in tables.items():
        if t.num_rows == 0:
            src = artifacts["captions" if name == "captions" else "texts"]
            failed = (src.manifest.stats or {}).get("failed", 0)
            raise CirflowError(f"release: table {name!r} has no ok rows ({failed} failed in {src.stage} "
                               f"{src.key[:12]}); nothing to release — see `cirflow store show {src.key[:12]}`")


def _image_bytes(path: str, sha256: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CirflowError(f"release: cannot read image {path}: {e}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CirflowError(f"release: image {path} changed since the collection was ingested (sha256 differs); "
                           "rerun the build")
    return data


def _write_table(fs, path: str, table: pa.Table, feats: "datasets.Features", sha: dict[str, str]) -> None:
    """Stream `table` into Parquet with the images embedded, IMAGE_BATCH rows at a time. The schema carries the
    features in its `huggingface` metadata, which `datasets` reads back."""
    schema = feats.arrow_schema
    with fs.open(path, "wb") as f, pq.ParquetWriter(f, schema, compression="zstd") as w:
        for batch in table.to_batches(max_chunksize=IMAGE_BATCH):
            rows = batch.to_pylist()
            for r in rows:
                for c in [c for c in r if c == "path" or c.endswith("_path")]:
                    r[image_column(c)] = {"bytes": _image_bytes(r[c], sha[r[c]]), "path": posixpath.basename(r[c])}
            w.write_table(pa.Table.from_pylist(rows, schema=schema))


def run(build: Build, artifacts: dict[str, Artifact], cfg: ReleaseConfig, *, models: dict | None = None,
        params: dict | None = None) -> str:
    """Write the release folder; returns its path. `artifacts` needs "collection" and "texts" (+ "captions"
    for mvft); every artifact given is listed in the card with its key, stats and params."""
    tables = release_tables(build, artifacts)
    _require_rows(tables, artifacts)
    sha = {r["path"]: r["sha256"] for r in _images(artifacts["collection"]).values()}
    feats = {name: features(t) for name, t in tables.items()}
    fs, out = fsspec.core.url_to_fs(cfg.out_dir)
    out = out.rstrip("/")
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:8]}"
    fs.makedirs(posixpath.join(tmp, "data"), exist_ok=True)
    try:
        for name, t in tables.items():
            _write_table(fs, posixpath.join(tmp, "data", f"{name}.parquet"), t, feats[name], sha)
        card = dataset_card(build, tables, feats, artifacts, cfg, models, params)
        fs.pipe_file(posixpath.join(tmp, "README.md"), str(card).encode())
    except BaseException:
        fs.rm(tmp, recursive=True)
        raise
    if fs.exists(out):
        fs.rm(out, recursive=True)
    fs.mv(tmp, out, recursive=True)
    return cfg.out_dir.rstrip("/")


def dataset_card(build: Build, tables: dict[str, pa.Table], feats: dict[str, "datasets.Features"],
                 artifacts: dict[str, Artifact], cfg: ReleaseConfig, models: dict | None,
                 params: dict | None) -> "DatasetCard":
    """The card through huggingface_hub's classes, so the header is the metadata the Hub and `datasets` read:
    `configs` (first table = default) and `dataset_info` (the declared features per config)."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    prompts = {}
    for art in artifacts.values():
        for k, v in art.manifest.params.items():
            if ("template" in k or k == "system") and isinstance(v, str):
                prompts[f"{art.stage}.{k}"] = v
    cirflow = {
        "build": build,
        "counts": {name: t.num_rows for name, t in tables.items()},
        "models": models or {},
        "params": params or {},
        "prompts": prompts,
        "artifacts": {name: {"stage": a.stage, "key": a.key, "stats": _small(a.manifest.stats)}
                      for name, a in artifacts.items()},
    }
    data = DatasetCardData(
        license=cfg.license,
        license_details=cfg.license_details,
        pretty_name=cfg.name,
        task_categories=["image-to-image", "text-to-image"],
        tags=["composed-image-retrieval", "synthetic", f"cirflow-{build}"],
        configs=[{"config_name": name, **({"default": True} if i == 0 else {}),
                  "data_files": [{"split": "train", "path": f"data/{name}.parquet"}]}
                 for i, name in enumerate(tables)],
        cirflow=json.loads(json.dumps(cirflow, default=str)),
    )
    DatasetInfosDict({name: DatasetInfo(features=f, config_name=name) for name, f in feats.items()}
                     ).to_dataset_card_data(data)
    counts = "\n".join(f"- `{n}`: {t.num_rows:,} rows ({', '.join(feats[n])})" for n, t in tables.items())
    first = next(iter(tables))
    body = (f"# {cfg.name}\n\nA synthetic composed-image-retrieval training set built with cirflow "
            f"(`{build}` build) from an unlabeled image collection.\n\n## Tables\n{counts}\n\n"
            f"`datasets.load_dataset(\"<this folder>\")` loads `{first}` (the default config); name another "
            "config to load it. Image columns hold the image bytes (PIL images when loaded); the `*_path` "
            "columns name where each image came from.\n\n## Licence\n"
            f"{cfg.license}: {cfg.license_details}\n\n{_biometric_section(artifacts)}## Prompts\n"
            + "".join(f"\n### {k}\n\n```text\n{v.strip()}\n```\n" for k, v in prompts.items()))
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _biometric_section(artifacts: dict[str, Artifact]) -> str:
    """What the biometric filter removed (collm.txt §4.1), where the build has one (mtcir_texts)."""
    st = artifacts["texts"].manifest.stats if "texts" in artifacts else {}
    if "filtered_biometric" not in st:
        return ""
    return ("## Biometric filtering\n\n"
            f"- texts removed for human-attribute words: {st['filtered_biometric']:,}\n"
            f"- images whose caption mentions a person or face: {st.get('filtered_biometric_images', 0):,}, "
            f"removed with their {st.get('pairs_removed_biometric_images', 0):,} pairs\n\n")


def _small(stats: dict) -> dict:
    """Counts only: lists of failures stay in the store."""
    return {k: v for k, v in stats.items() if not isinstance(v, list)}
