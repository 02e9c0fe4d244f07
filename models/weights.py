"""Weight identity: which bytes a model name, folder or file stands for, as it goes into stage keys.

Lives beside the loaders (not in the config schemas): a revision is a sha256 of the files for weights on disk,
so overwriting a checkpoint in place changes the key, or the hub snapshot commit already in the local cache.
Hashing a 1-2 GB checkpoint takes seconds, so file hashes are cached by (path, size, mtime_ns), in memory and in
a small JSON file (`$CIRFLOW_HASH_CACHE`, default `~/.cache/cirflow/file-sha256.json`), which also keeps the
revision strings of named open_clip models per installed open_clip version.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
# What open_clip's local-dir loader may pick up as weights (factory._find_checkpoint_in_dir) plus its config,
# which carries the architecture and the preprocessing; both decide the embeddings.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz")
# what decides a diffusers pipeline folder's outputs: weights, configs, tokenizer files
_HASHED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".txt", ".model")
_IGNORED_NAMES = {"cirflow_tiny.json", "README.md", ".gitattributes"}


def weights_revision(model: str, pretrained: str | None) -> str:
    """A string that changes whenever the weights behind (model, pretrained) change."""
    if model.startswith(LOCAL_DIR):
        # open_clip ignores `pretrained` for local dirs: the dir is the whole recipe
        return "sha256:" + _dir_digest(Path(model[len(LOCAL_DIR):]), suffixes=_WEIGHT_SUFFIXES)
    if pretrained and Path(pretrained).is_file():
        return "sha256:" + file_sha256(pretrained)
    if model.startswith(HF_HUB):
        return "hf-hub:" + (_hf_cached_commit(model[len(HF_HUB):]) or "unresolved")
    # The answer is a fixed function of (installed open_clip version, model, tag): open_clip's pretrained table
    # ships with the package. It is kept in the hash cache under that version, so `--plan` and the store
    # shortcut of a named model need not import open_clip (and torch with it: ~3 s) once it has been asked.
    from importlib.metadata import PackageNotFoundError, version

    try:
        memo_key = f"open_clip_torch=={version('open_clip_torch')}|{model}|{pretrained or ''}"
    except PackageNotFoundError:
        memo_key = None
    if memo_key is not None and (hit := _MEMO.get(memo_key) or _read_disk_cache().get(memo_key)):
        return hit
    import open_clip  # late import: the config must stay cheap to import for CLI and schema code

    if pretrained:
        # a published tag names fixed weights; the download location pins which ones
        cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
        where = cfg.get("hf_hub") or cfg.get("url") or "unknown"
        out = f"open_clip-{open_clip.__version__}:{pretrained}:{where}"
    else:
        # no weights: OpenClipEncoder seeds the random init, so this is reproducible per open_clip version
        out = f"random-init-seed0:open_clip-{open_clip.__version__}"
    if memo_key is not None:
        _MEMO[memo_key] = out
        _write_disk_cache({**_read_disk_cache(), memo_key: out})
    return out


def _dir_digest(path: Path, suffixes: tuple[str, ...] | None) -> str:
    """sha256 over (name, file sha256) of the weight files and open_clip_config.json in a directory."""
    if not path.is_dir():
        raise FileNotFoundError(f"encoder directory not found: {path}")
    files = sorted(
        p for p in path.iterdir()
        if p.is_file() and (suffixes is None or p.suffix in suffixes or p.name == "open_clip_config.json")
    )
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def _hf_cached_commit(repo_id: str) -> str | None:
    """The snapshot commit of an open_clip hub model already in the local HF cache (offline-safe)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in ("open_clip_config.json", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str):
            return Path(hit).parent.name  # .../snapshots/<commit>/<file>
    return None


# ---- file hashing with a (path, size, mtime) cache -------------------------------------------------------

_MEMO: dict[str, str] = {}


def _cache_file() -> Path:
    return Path(os.environ.get("CIRFLOW_HASH_CACHE", Path.home() / ".cache" / "cirflow" / "file-sha256.json"))


def file_sha256(path: str | os.PathLike) -> str:
    p = Path(path).resolve()
    st = p.stat()
    memo_key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    disk = _read_disk_cache()
    digest = disk.get(memo_key)
    if digest is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        digest = h.hexdigest()
        # forget stale entries of the same file so the cache does not grow with every overwrite
        disk = {k: v for k, v in disk.items() if not k.startswith(f"{p}|")}
        disk[memo_key] = digest
        _write_disk_cache(disk)
    _MEMO[memo_key] = digest
    return digest


def _read_disk_cache() -> dict[str, str]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}  # missing or corrupt: hashes are recomputed, never trusted blindly


def _write_disk_cache(entries: dict[str, str]) -> None:
    target = _cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # write-then-rename so concurrent processes never read half a file (a lost entry is only recomputed)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".sha256-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f)
        os.replace(tmp, target)
    except OSError:
        pass  # a read-only home must not break encoding; we just lose the cross-process cache


# ---- diffusers pipelines ------------------------------------------------------------------------------------


def pipeline_revision(model: str, revision: str | None) -> str:
    """A string that changes whenever the checkpoint behind (model, revision) changes."""
    path = Path(model)
    if path.is_dir():
        return "sha256:" + tree_digest(path)
    resolved = _hf_cached_pipeline_commit(model, revision)
    return f"hf:{revision or 'main'}@{resolved or 'unresolved'}"


def tree_digest(root: Path) -> str:
    """sha256 over (relative path, file sha256) of every weight, config and tokenizer file below `root`."""
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix in _HASHED_SUFFIXES and p.name not in _IGNORED_NAMES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise FileNotFoundError(f"no checkpoint files below {root}")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.relative_to(root).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def _hf_cached_pipeline_commit(repo_id: str, revision: str | None) -> str | None:
    """The snapshot commit of a hub pipeline already in the local HF cache (offline-safe)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
    if isinstance(hit, str):
        return Path(hit).parent.name  # .../snapshots/<commit>/model_index.json
    return None
