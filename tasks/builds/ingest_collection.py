"""ingest_collection: an unlabeled image collection (folder tree, list file or Parquet table; any fsspec path)
→ tables `images` (usable images) and `failures` (path, reason) in the store.

image_id (CollectionSource.id_scheme): "relpath" = the path relative to the collection root (folder sources)
or as written in the list/table; "sha256" = the hex sha256 of the file's bytes. Either way an image keeps its id
when other images are added, so per-image work downstream (captions, LLM answers in the request cache) is
found again after the collection grows.

The key covers the source options and the *listing* (every path with its size and modification time, plus the
captions/meta-classes of a table), so an unchanged collection is never re-read, and an added, removed or
rewritten file gives a new key. Files are then checked in shards (resumable, with progress): read, hashed,
`PIL.Image.verify()`, and decoded to a thumbnail. An unreadable or corrupt file becomes a `failures` row with
its reason; it never stops the build. Files whose extension is not an image extension are skipped (counted).
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from cirflow.schemas.builds import COLLECTION_CHECKED, COLLECTION_FAILURES, COLLECTION_IMAGES, CollectionSource
from cirflow.schemas.errors import ConfigError
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.stage import Context, Params, Runtime, Stage, execute
from cirflow.storage.keys import canonical_json

class CollectionParams(Params):
    source: dict  # the source options without where they live (uri, storage options)
    listing: str  # digest of every path with its size and mtime: an added or rewritten file is a new key


class CollectionRuntime(Runtime):
    uri: str
    workers: int = 8


class IngestCollection(Stage):
    name, version = "ingest_collection", "1"
    Params, Runtime = CollectionParams, CollectionRuntime
    outputs = {"checked": COLLECTION_CHECKED, "images": COLLECTION_IMAGES, "failures": COLLECTION_FAILURES}
    table = "checked"
    # unreadable files are part of what a collection is: recorded in `failures`, they never stop a build
    failure_accounting = False

    def __init__(self, source: CollectionSource | None = None, entries: list[dict] = (), skipped: list[str] = ()):
        self.source, self.entries, self.skipped = source, list(entries), list(skipped)

    def items(self, ctx: Context):
        return self.entries

    def compute(self, ctx: Context, entries):
        with ThreadPoolExecutor(max(1, ctx.runtime.workers)) as pool:
            rows = list(pool.map(lambda e: _check(e, self.source), entries))
        return pa.Table.from_pylist(rows, schema=COLLECTION_CHECKED)

    def produce(self, ctx: Context) -> None:
        super().produce(ctx)
        checked = ctx.run.committed("checked").to_pylist()
        images, failures, seen = [], [], {}
        for r in checked:
            if r["status"] != "ok":
                failures.append({"path": r["path"], "reason": r["error"]})
            elif r["image_id"] in seen:  # sha256 ids: the same bytes twice
                failures.append({"path": r["path"], "reason": f"duplicate of {seen[r['image_id']]} (same image_id)"})
            else:
                seen[r["image_id"]] = r["path"]
                images.append({k: r[k] for k in COLLECTION_IMAGES.names if k != "crop_box"} | {"crop_box": None})
        images.sort(key=lambda r: r["image_id"])
        ctx.write_table("images", pa.Table.from_pylist(images, schema=COLLECTION_IMAGES))
        ctx.write_table("failures", pa.Table.from_pylist(failures, schema=COLLECTION_FAILURES))
        ctx.scratch.update(images=images, failures=failures)

    def stats(self, ctx: Context) -> dict:
        images, failures = ctx.scratch["images"], ctx.scratch["failures"]
        classes: dict[str, int] = {}
        for r in images:
            classes[str(r["meta_class"])] = classes.get(str(r["meta_class"]), 0) + 1
        return {"listed": len(self.entries), "images": len(images), "failed": len(failures),
                "skipped_not_image": len(self.skipped), "skipped_examples": self.skipped[:10],
                "failures": failures[:20], "meta_classes": classes}


def run(store: ArtifactStore, source: CollectionSource, *, shard_size: int = 256, workers: int = 8,
        progress: bool = True) -> Artifact:
    entries, skipped, listing_digest = list_collection(source)
    return execute(IngestCollection(source, entries, skipped), store, {},
                   CollectionParams(source=source.model_dump(exclude={"uri", "storage_options"}),
                                    listing=listing_digest),
                   CollectionRuntime(uri=source.uri, shard_size=shard_size, workers=workers, progress=progress))


# ---------------------------------------------------------------------------------------------- listing


def list_collection(source: CollectionSource) -> tuple[list[dict], list[str], str]:
    """(entries sorted by relpath, skipped non-image files, digest of the listing)."""
    fs, root = fsspec.core.url_to_fs(source.uri, **source.storage_options)
    exts = tuple(e.lower() for e in source.extensions)
    skipped: list[str] = []
    entries: list[dict] = []
    if source.kind == "folder":
        if not fs.isdir(root):
            raise ConfigError(f"{source.uri}: collection folder not found")
        base = root.rstrip("/")
        for path, info in sorted(fs.find(base, detail=True).items()):
            rel = posixpath.relpath(path, base)
            if not rel.lower().endswith(exts):
                skipped.append(rel)
                continue
            parts = rel.split("/")
            meta = parts[0] if source.meta_class_from == "top_dir" and len(parts) > 1 else None
            entries.append({"relpath": rel, "path": _unstrip(fs, path), "meta_class": meta, "caption": None,
                            "stamp": _stamp(info)})
    elif source.kind == "list":
        if not fs.isfile(root):
            raise ConfigError(f"{source.uri}: list file not found")
        base = posixpath.dirname(root)
        lines = fs.cat_file(root).decode().splitlines()
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                _contained(base, line, f"{source.uri}: line {n}")
                entries.append(_table_entry(fs, base, line, None, None, exts, skipped))
    else:
        if not fs.isfile(root):
            raise ConfigError(f"{source.uri}: Parquet table not found")
        with fs.open(root, "rb") as f:
            t = pq.read_table(f)
        if source.path_column not in t.column_names:
            raise ConfigError(f"{source.uri}: no column {source.path_column!r} (columns: {t.column_names})")
        col = lambda name: t.column(name).to_pylist() if name and name in t.column_names else [None] * t.num_rows  # noqa: E731
        base = posixpath.dirname(root)
        rows = zip(col(source.path_column), col(source.caption_column), col(source.meta_class_column))
        for n, (p, cap, meta) in enumerate(rows):
            _contained(base, str(p), f"{source.uri}: row {n}, column {source.path_column!r}")
            entries.append(_table_entry(fs, base, str(p), cap, None if meta is None else str(meta), exts, skipped))
    entries = [e for e in entries if e is not None]
    entries.sort(key=lambda e: e["relpath"])
    if len({e["relpath"] for e in entries}) != len(entries):
        raise ConfigError(f"{source.uri}: the same path is listed twice")
    digest = hashlib.sha256(canonical_json(
        [[e["relpath"], e["stamp"], e["meta_class"], e["caption"]] for e in entries]).encode()).hexdigest()
    return entries, skipped, digest


def _contained(base: str, p: str, where: str) -> None:
    """A relative entry must stay under the list's folder, and no entry may climb with '..': the path becomes
    the image id (relpath ids) and is read and sent to models. Absolute paths and URLs are the author's
    explicit choice and stay allowed."""
    if "\0" in p:
        raise ConfigError(f"{where}: path {p!r} contains NUL")
    rest = p.split("://", 1)[1] if "://" in p else p
    if ".." in rest.replace("\\", "/").split("/"):
        raise ConfigError(f"{where}: path {p!r} climbs with '..' (leaves the collection folder {base or '.'})")


def _table_entry(fs, base: str, p: str, caption, meta, exts, skipped) -> dict | None:
    if not p.lower().endswith(exts):
        skipped.append(p)
        return None
    if "://" in p:
        efs, epath = fsspec.core.url_to_fs(p)
        full = p
    else:
        efs, epath = fs, p if p.startswith("/") else posixpath.join(base, p)
        full = _unstrip(fs, epath)
    try:
        stamp = _stamp(efs.info(epath))
    except (FileNotFoundError, OSError):
        stamp = "missing"  # recorded as a failure by the check
    return {"relpath": p, "path": full, "meta_class": meta, "caption": caption, "stamp": stamp}


def _stamp(info: dict) -> str:
    """What changes when a file is rewritten: size and mtime (local), etag/md5 (object stores)."""
    for k in ("ETag", "etag", "md5Hash", "md5"):
        if info.get(k):
            return f"{info.get('size')}:{info[k]}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("updated") or info.get("created")
    return f"{info.get('size')}:{mtime}"


def _unstrip(fs, path: str) -> str:
    """A path usable by fsspec.open again: local paths as they are, remote ones with their protocol."""
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return path if proto in ("file", "local") else fs.unstrip_protocol(path)


# ---------------------------------------------------------------------------------------------- checking


def _check(entry: dict, source: CollectionSource) -> dict:
    row = {"image_id": None, "path": entry["path"], "relpath": entry["relpath"], "sha256": None, "bytes": None,
           "width": None, "height": None, "meta_class": entry["meta_class"], "caption": entry["caption"],
           "status": "failed", "error": None}
    try:
        with fsspec.open(entry["path"], "rb", **(source.storage_options if "://" in entry["path"] else {})) as f:
            data = f.read()
    except Exception as e:  # noqa: BLE001 - any read error is this file's failure
        row["error"] = f"unreadable: {type(e).__name__}: {e}"
        return row
    row["sha256"], row["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    try:
        size = verify_image(data, source.thumbnail)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        row["error"] = f"not a decodable image: {type(e).__name__}: {e}"
        return row
    row.update(width=size[0], height=size[1], status="ok",
               image_id=entry["relpath"] if source.id_scheme == "relpath" else row["sha256"])
    return row


def verify_image(data: bytes, thumbnail: int = 64) -> tuple[int, int]:
    """(width, height) if `data` is an image PIL can verify and decode (to a thumbnail); raises otherwise."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # structure and checksums (PNG CRCs); the image is unusable afterwards
    with Image.open(io.BytesIO(data)) as im:
        size = im.size
        im.draft("RGB", (thumbnail, thumbnail))  # JPEG: decode at reduced scale
        im.thumbnail((thumbnail, thumbnail))  # forces a full decode of the pixel data
        if im.size[0] < 1 or im.size[1] < 1:
            raise ValueError("empty image")
    return size
