"""`cirflow store verify`: everything that can be wrong with a store, one Problem per finding, never a traceback.

Per artifact folder `<stage>/<key>/`:
- the manifest: missing (an unfinished run), unreadable, garbage, naming another folder, or written by an
  older store format;
- every shard and file the manifest lists: present, readable, size, sha256 and (when recorded) XXH3;
- per-item files a table indexes (a `file` column relative to the artifact folder beside a `sha256` column,
  e.g. GENERATED_IMAGES written before issue 14): present, readable, sha256 (rows without a `file` keep their
  bytes in a side-table shard, checked as a shard);
- `_commits/`: every record parses, is named after its shard, and agrees with the manifest.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from cirflow.schemas.errors import StoreError
from cirflow.storage.manifest import COMMITS, MANIFEST, STORE_FORMAT, Manifest, ShardRecord
from cirflow.storage.store import Artifact, ArtifactStore, Problem, describe_error, sha256_bytes
from cirflow.storage.writers import is_temp

# columns of a table that index per-item files stored beside it in the artifact folder
BLOB_COLUMNS = ("file", "sha256")


def verify_store(store: ArtifactStore, key_prefix: str | None = None) -> list[Problem]:
    store.check_root()
    targets = store.artifact_dirs()
    if key_prefix:
        targets = [(s, k) for s, k in targets if k.startswith(key_prefix.lower())]
        if not targets:
            raise StoreError(f"no artifact with key {key_prefix!r} in {store.url}")
    problems: list[Problem] = []
    for stage, key in targets:
        problems += verify_artifact(store, stage, key)
    return problems


def verify_artifact(store: ArtifactStore, stage: str, key: str) -> list[Problem]:
    def problem(name: str, reason: str, kind: str = "bad") -> Problem:
        return Problem(stage, key, name, reason, kind)

    manifest, why = store.load_manifest(stage, key)
    out: list[Problem] = []
    if why is not None:
        out.append(problem(MANIFEST, why))
    elif manifest is None:
        out.append(problem(MANIFEST, "no manifest: an unfinished (interrupted or still running) stage; rerun it "
                                     "to finish", "unfinished"))
    else:
        if manifest.store_format < STORE_FORMAT:
            out.append(problem(MANIFEST, f"written by an older store format ({manifest.store_format}), recompute "
                                         f"or migrate (this cirflow writes format {STORE_FORMAT})", "old-format"))
        art = Artifact(store, manifest)
        out += art.problems(full=True)
        out += [problem(name, reason) for name, reason in _blob_problems(art, {p.name for p in out})]
    out += [problem(name, reason) for name, reason in _commit_problems(store, stage, key, manifest)]
    return out


def _blob_problems(art: Artifact, bad_shards: set[str]) -> list[tuple[str, str]]:
    """Per-item files of every table whose shards carry BLOB_COLUMNS (shards already found bad are skipped)."""
    out = []
    for rec in art.manifest.shards:
        if rec.name in bad_shards:
            continue
        data = pa.BufferReader(art.store.read_buffer(art.file_path(rec.name)))
        if not set(BLOB_COLUMNS) <= set(pq.read_schema(data).names):
            continue  # e.g. a side table holding the images themselves (storage/item_files.py)
        table = pq.read_table(data, columns=list(BLOB_COLUMNS))
        for name, sha in zip(table.column("file").to_pylist(), table.column("sha256").to_pylist()):
            if not name:
                continue  # a failed item has no file
            try:
                data = art.read_blob(name)
            except FileNotFoundError:
                out.append((name, f"missing (indexed by {rec.name})"))
                continue
            except StoreError as e:
                out.append((name, str(e)))
                continue
            except (OSError, ValueError) as e:
                out.append((name, describe_error(e)))
                continue
            if sha256_bytes(data) != sha:
                out.append((name, f"checksum mismatch against {rec.name}, file is corrupt; rerun the stage"))
    return out


def _commit_problems(store: ArtifactStore, stage: str, key: str, manifest: Manifest | None) -> list[tuple[str, str]]:
    folder = posixpath.join(store.artifact_dir(stage, key), COMMITS)
    try:
        paths = store.fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        return [(COMMITS, describe_error(e))]
    listed = {s.name: s for s in manifest.shards} if manifest is not None else {}
    out = []
    for path in sorted(paths):
        base = posixpath.basename(path.rstrip("/"))
        name = f"{COMMITS}/{base}"
        if is_temp(base):
            continue  # a writer's temporary file: stale ones are cleaned by the next run
        if not base.endswith(".json"):
            out.append((name, "not a commit record"))
            continue
        try:
            rec = ShardRecord.model_validate_json(store.read_bytes(path))
        except (OSError, ValueError) as e:
            out.append((name, describe_error(e) if isinstance(e, OSError) else "garbage commit record" + (
                "; the finished artifact does not need it: delete the file" if manifest is not None else
                "; its shard is recomputed by the next run")))
            continue
        if f"{rec.name}.json" != base:
            out.append((name, f"commit record names shard {rec.name!r}, not its own file"))
        elif rec.name in listed and rec != listed[rec.name]:
            out.append((name, "commit record disagrees with the manifest"))
    return out
