"""Config of the image/text encoder (open_clip) and the part of it that goes into a stage key.

`key_fields()` answers "which weights produced these embeddings?": model name, pretrained tag or file,
precision, and a *revision* that pins the weights. For weights on disk the revision is a sha256 of the
files, so overwriting a fine-tuned checkpoint in place changes the stage key. Hashing a 1-2 GB checkpoint
takes seconds, so hashes are cached by (path, size, mtime_ns), in memory and in a small JSON file
(`$CIRFLOW_HASH_CACHE`, default `~/.cache/cirflow/file-sha256.json`) so that every new process stays cheap.

Batch size, workers and device are left out of the key on purpose: they change speed, not the result
(up to float noise).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
# What open_clip's local-dir loader may pick up as weights (factory._find_checkpoint_in_dir) plus its config,
# which carries the architecture and the preprocessing; both decide the embeddings.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz")


class EncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str  # open_clip name ("ViT-B-32", "ViT-B-16-SigLIP2", "hf-hub:org/repo") or "local-dir:/path"
    pretrained: str | None = None  # open_clip pretrained tag ("laion2b_s34b_b79k") or a checkpoint file path
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    device: str = "auto"  # "auto" = cuda when available, else cpu
    batch_size: int = 64
    num_workers: int = 2  # DataLoader workers that decode and preprocess images
    tokenizer: str | None = None  # local HF tokenizer dir (SigLIP/SigLIP2 offline, environment.md 3a)

    def key_fields(self) -> dict:
        fields = {
            "model": self.model,
            "pretrained": self.pretrained,
            "precision": self.precision,
            "revision": weights_revision(self.model, self.pretrained),
        }
        if self.tokenizer is not None:
            # the tokenizer decides the token ids, so a different vocabulary is a different text encoder
            fields["tokenizer"] = _dir_digest(Path(self.tokenizer), suffixes=None)
        return fields


def weights_revision(model: str, pretrained: str | None) -> str:
    """A string that changes whenever the weights behind (model, pretrained) change."""
    if model.startswith(LOCAL_DIR):
        # open_clip ignores `pretrained` for local dirs: the dir is the whole recipe
        return "sha256:" + _dir_digest(Path(model[len(LOCAL_DIR):]), suffixes=_WEIGHT_SUFFIXES)
    if pretrained and Path(pretrained).is_file():
        return "sha256:" + file_sha256(pretrained)
    if model.startswith(HF_HUB):
        return "hf-hub:" + (_hf_cached_commit(model[len(HF_HUB):]) or "unresolved")
    import open_clip  # late import: the config must stay cheap to import for CLI and schema code

    if pretrained:
        # a published tag names fixed weights; the download location pins which ones
        cfg = open_clip.get_pretrained_cfg(model, pretrained) or {}
        where = cfg.get("hf_hub") or cfg.get("url") or "unknown"
        return f"open_clip-{open_clip.__version__}:{pretrained}:{where}"
    # no weights: OpenClipEncoder seeds the random init, so this is reproducible per open_clip version
    return f"random-init-seed0:open_clip-{open_clip.__version__}"


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
