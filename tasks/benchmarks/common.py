"""Shared pieces of the benchmark loaders: the Benchmark result, JSON reading with provenance, record checks,
path joining and the image existence check.

Loaders read annotation files through fsspec so a data root may be a URL; local paths are made absolute so the
`path` column of the images table does not depend on the working directory of the ingest run.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterable

import fsspec
import pyarrow as pa

from cirflow.schemas.errors import AnnotationError, ConfigError, MissingImagesError
from cirflow.schemas.tables import IMAGES, QUERIES


@dataclass
class Benchmark:
    """One loaded split: queries and images tables (schemas QUERIES / IMAGES) plus provenance and quirk counts."""

    queries: pa.Table
    images: pa.Table
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info["benchmark"]


# ---------------------------------------------------------------- paths


def is_local(path: str) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def normalize_root(root: str | os.PathLike) -> str:
    root = os.fspath(root)
    if root.startswith("file://"):
        root = root[len("file://") :]
    if is_local(root):
        return os.path.abspath(os.path.expanduser(root))
    return root.rstrip("/")


def join(root: str, *parts: str) -> str:
    """Join with '/', dropping the './' that official split files put in front of relative paths."""
    out = root.rstrip("/")
    for part in parts:
        part = part[2:] if part.startswith("./") else part
        out = f"{out}/{part.strip('/')}"
    return out


def contained(root: str, *parts: str) -> str | None:
    """join(root, *parts) normalised, or None when the parts leave `root` ('..' past it).

    Lexical on purpose: ids and paths in annotation files must not climb out of their root, while a root (or a
    folder in it) that is a symlink to another disk is an ordinary dataset layout and stays allowed.
    """
    base = root.rstrip("/") or "/"
    path = join(base, *parts)
    if is_local(base):
        norm = os.path.normpath(path)
        base = os.path.normpath(base)
    else:
        proto, _, rest = path.partition("://")
        norm = f"{proto}://{posixpath.normpath(rest)}"
        base = f"{proto}://{posixpath.normpath(base.partition('://')[2])}"
    return norm if norm.startswith(base.rstrip("/") + "/") else None


def parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0]


def exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(path)
    fs, p = fsspec.core.url_to_fs(path)
    return fs.exists(p)


def isdir(path: str) -> bool:
    if is_local(path):
        return os.path.isdir(path)
    fs, p = fsspec.core.url_to_fs(path)
    return fs.isdir(p)


def list_names(directory: str) -> set[str] | None:
    """File names in a directory (one listing call), or None when it does not exist.

    One listing instead of a stat per image keeps the check fast for CIRCO's 123k-image gallery and for remote
    stores where each stat is a request.
    """
    if is_local(directory):
        try:
            with os.scandir(directory) as it:
                return {e.name for e in it}
        except (FileNotFoundError, NotADirectoryError):
            return None
    fs, p = fsspec.core.url_to_fs(directory)
    if not fs.isdir(p):
        return None
    return {name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(p, detail=False)}


# ---------------------------------------------------------------- annotation files


def read_json(path: str, role: str, files: dict[str, dict[str, str]]) -> Any:
    """Parse an annotation file and record its path and sha256 under `role` in `files` (goes to info)."""
    try:
        if is_local(path):
            with open(path, "rb") as f:
                data = f.read()
        else:
            with fsspec.open(path, "rb") as f:
                data = f.read()
    except FileNotFoundError:
        raise AnnotationError(path, None, None, "annotation file not found") from None
    except OSError as e:
        raise AnnotationError(path, None, None, f"cannot read annotation file ({e})") from None
    text = decode_utf8(data, path)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, None, None, f"not valid JSON ({e})") from None
    files[role] = {"path": path, "sha256": hashlib.sha256(data).hexdigest()}
    return parsed


def decode_utf8(data: bytes, path: str) -> str:
    """UTF-8 text of an annotation file (a leading BOM is allowed, as json.loads(bytes) allowed it); anything
    else is an AnnotationError naming the file and the byte offset. Decoded explicitly because json.loads(bytes)
    would raise a bare UnicodeDecodeError."""
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        raise AnnotationError(path, None, None, f"not UTF-8 text: byte 0x{data[at]:02x} at offset {at}") from None


class Records:
    """Typed field access for the records of one annotation file; every failure names file, index and field."""

    def __init__(self, path: str, data: Any, kind: type = list):
        self.path = path
        if not isinstance(data, kind):
            raise AnnotationError(path, None, None, f"expected a JSON {_json_type(kind)} at top level, got {_json_type(type(data))}")
        self.data = data

    def fail(self, index: int | str | None, name: str | None, message: str) -> AnnotationError:
        return AnnotationError(self.path, index, name, message)

    def get(self, rec: Any, index: int, name: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
        """rec[name] checked against kind. Dotted names ('img_set.members') only label the error."""
        if not isinstance(rec, dict):
            raise self.fail(index, None, f"expected an object, got {_json_type(type(rec))}")
        key = name.rsplit(".", 1)[-1]
        if key not in rec:
            if required:
                raise self.fail(index, name, "missing")
            return None
        value = rec[key]
        # bool is an int subclass in Python, but a JSON true is never a valid id or coordinate
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.fail(index, name, f"expected {_json_type(kind)}, got {_json_type(type(value))} {_short(value)}")
        return value

    def str_list(self, rec: Any, index: int, name: str, *, length: int | None = None, required: bool = True) -> list[str] | None:
        value = self.get(rec, index, name, list, required=required)
        if value is None:
            return None
        for v in value:
            if not isinstance(v, str):
                raise self.fail(index, name, f"expected a list of strings, found {_json_type(type(v))} {_short(v)}")
        if length is not None and len(value) != length:
            raise self.fail(index, name, f"expected {length} entries, got {len(value)}")
        return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _json_type(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (set, tuple)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- tables


def queries_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=QUERIES)


def images_table(ids: list[str], paths: list[str], in_gallery: list[bool], crop_boxes: list[list[float] | None] | None = None) -> pa.Table:
    # Column-wise construction: CIRCO's gallery has ~123k rows and from_pylist would dominate the load time.
    boxes = crop_boxes if crop_boxes is not None else [None] * len(ids)
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array(paths, pa.string()),
            pa.array(boxes, IMAGES.field("crop_box").type),
            pa.array(in_gallery, pa.bool_()),
        ],
        schema=IMAGES,
    )


def check_unique(ids: Iterable[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, x in enumerate(ids):
        if x in seen:
            raise AnnotationError(path, i, what, f"duplicate id {x!r}")
        seen.add(x)


# ---------------------------------------------------------------- image existence


def check_images(paths: Iterable[str], hint: str = "") -> int:
    """Raise MissingImagesError unless every path exists. One directory listing per distinct folder."""
    by_dir: dict[str, list[str]] = {}
    for p in dict.fromkeys(paths):
        d, _, name = p.rpartition("/")
        by_dir.setdefault(d, []).append(name)
    missing: list[str] = []
    total = 0
    for d, names in by_dir.items():
        total += len(names)
        present = list_names(d) or set()
        missing.extend(f"{d}/{n}" for n in names if n not in present)
    if missing:
        missing.sort()
        raise MissingImagesError(missing, total, hint)
    return total


def require_choice(value: str | None, choices: Iterable[str], what: str, benchmark: str) -> str:
    choices = list(choices)
    if value is None:
        raise ConfigError(f"{benchmark}: {what} is required (one of {', '.join(choices)})")
    if value not in choices:
        raise ConfigError(f"{benchmark}: unknown {what} {value!r} (expected one of {', '.join(choices)})")
    return value


__all__ = [
    "Benchmark",
    "Records",
    "check_images",
    "check_unique",
    "contained",
    "decode_utf8",
    "exists",
    "images_table",
    "isdir",
    "join",
    "list_names",
    "normalize_root",
    "parent",
    "queries_table",
    "read_json",
    "require_choice",
]
