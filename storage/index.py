"""The key → stage index: `<root>/_index/<key[:2]>/<key>.<stage>`, one empty-ish marker per committed artifact.

Why: keys are unique across stages, but the store is laid out `<stage>/<key>/`, so resolving a key a user typed
meant listing every stage folder and reading every manifest — linear in the store, and one request per manifest
on S3. With the index, a key (or a prefix of at least two characters) costs one listing of a folder that holds
~1/256 of the keys, then one manifest read; `ls` lists `_index/` (1 request per 1,000 keys on S3) instead of
every stage folder.

The stage is in the marker's *name* (and its content), so a listing alone answers key → stage without a read.

Stores written before the index have no `_index/_complete`: `find` then falls back to the old scan (and logs
that it did), and since that scan has read every manifest anyway it writes the missing markers and
`_complete`, so the next `find` is O(1). A new writer adds its own marker *before* checking `_complete`, so an
artifact is never missing from a complete index, whoever wrote `_complete` and when.
"""

from __future__ import annotations

import logging
import posixpath
from typing import TYPE_CHECKING

from cirflow.storage.keys import KEY_RE, STAGE_RE

if TYPE_CHECKING:
    from cirflow.storage.store import ArtifactStore

INDEX = "_index"
COMPLETE = "_complete"  # present when every artifact of the store has its marker
log = logging.getLogger("cirflow.store")


def index_dir(store: "ArtifactStore") -> str:
    return posixpath.join(store.root, INDEX)


def marker_path(store: "ArtifactStore", stage: str, key: str) -> str:
    return posixpath.join(index_dir(store), key[:2], f"{key}.{stage}")


def _complete_path(store: "ArtifactStore") -> str:
    return posixpath.join(index_dir(store), COMPLETE)


def parse_marker(path: str) -> tuple[str, str] | None:
    """(stage, key) of a marker path; None for anything else (temporaries, `_complete`)."""
    name = posixpath.basename(path.rstrip("/"))
    key, _, stage = name.partition(".")
    return (stage, key) if KEY_RE.match(key) and STAGE_RE.match(stage) else None


def add(store: "ArtifactStore", stage: str, key: str) -> None:
    """Record a committed artifact. Called right after its manifest is written (StageRun.finish, copies)."""
    store.write_atomic(marker_path(store, stage, key), stage.encode())
    if not store.fs.exists(_complete_path(store)):
        # A store this writer creates is complete from its first artifact; an older store stays incomplete
        # until a scan (find's fallback, or rebuild) has indexed what was there before.
        if {k for _, k in store.artifact_dirs()} <= {key}:
            store.write_atomic(_complete_path(store), b"")


def remove(store: "ArtifactStore", stage: str, key: str) -> None:
    """Forget a removed artifact (`store rm` / `gc`): called after its manifest is gone, so a reader that still
    lists the marker finds no manifest and skips it, and no marker outlives its artifact."""
    store.discard(marker_path(store, stage, key))


def is_complete(store: "ArtifactStore") -> bool:
    return store.fs.exists(_complete_path(store))


def _listing(store: "ArtifactStore", folder: str) -> list[str]:
    try:
        store.fs.invalidate_cache(folder)  # s3fs caches listings per instance: another writer may have added one
        return store.fs.ls(folder, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []


def lookup(store: "ArtifactStore", key_prefix: str) -> list[tuple[str, str]]:
    """(stage, key) of every indexed artifact whose key starts with `key_prefix` (lower-case hex).
    Two or more characters: one folder listing; shorter: the whole index."""
    if len(key_prefix) >= 2:
        paths = _listing(store, posixpath.join(index_dir(store), key_prefix[:2]))
    else:
        paths = [p for folder in _listing(store, index_dir(store)) for p in _listing(store, folder)]
    hits = [parse_marker(p) for p in paths]
    return sorted({h for h in hits if h is not None and h[1].startswith(key_prefix)})


def entries(store: "ArtifactStore") -> list[tuple[str, str]]:
    """(stage, key) of every indexed artifact, from one recursive listing of `_index/`."""
    try:
        store.fs.invalidate_cache(index_dir(store))
        paths = store.fs.find(index_dir(store))
    except FileNotFoundError:
        return []
    return sorted({h for h in map(parse_marker, paths) if h is not None})


def rebuild(store: "ArtifactStore", manifests) -> None:
    """Write the markers of `manifests` (every valid manifest of the store, as a full scan found them) and mark
    the index complete. Idempotent; safe next to writers, which add their own markers."""
    have = set(entries(store))
    for m in manifests:
        if (m.stage, m.key) not in have:
            store.write_atomic(marker_path(store, m.stage, m.key), m.stage.encode())
    store.write_atomic(_complete_path(store), b"")
    log.info("indexed %s: %d artifacts", store.url, len(manifests))
