"""Trained models as encoders: `resolve_model_ref(store, ref)` turns a reference to a stored `train_*` artifact
into a local folder (model.safetensors + factory.json + the model's own files) that `load_model` or an
encoder backend reads.

Reference forms: "stage:train_mvft" (the stage's only artifact in the store), "stage:train_mvft@<key prefix>",
"key:<key prefix>" or a bare key prefix. On a local store the folder is the artifact's own `model/`; from an
object store the files are downloaded once, checksum-verified, into ~/.cache/cirflow/models/<key>
(`CIRFLOW_MODEL_CACHE` overrides the root).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cirflow.schemas.errors import StoreError
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.training.train import MODEL_DIR, is_local

# cirflow.training.export.WEIGHTS, spelled here: importing cirflow.training imports torch, which `--plan` must not
WEIGHTS = "model.safetensors"


def find_trained(store: ArtifactStore, ref: str) -> Artifact:
    ref = ref.strip()
    if ref.startswith("stage:"):
        stage, _, prefix = ref[len("stage:"):].partition("@")
        hits = [m for m in store.manifests() if m.stage == stage and m.key.startswith(prefix.lower())]
        if not hits:
            raise StoreError(f"no trained model {ref!r} in {store.url} (run its training first)")
        if len(hits) > 1:
            keys = ", ".join(m.key[:12] for m in hits[:5])
            raise StoreError(f"{ref!r} matches {len(hits)} trained models ({keys}...); write stage:{stage}@<key>")
        art = Artifact(store, hits[0])
    else:
        art = store.find(ref[len("key:"):] if ref.startswith("key:") else ref)
    if not any(f.name == f"{MODEL_DIR}/{WEIGHTS}" for f in art.manifest.files):
        raise StoreError(f"{art.stage}/{art.key[:12]} is not a trained model (no {MODEL_DIR}/{WEIGHTS})")
    return art


def resolve_model_ref(store: ArtifactStore, ref: str) -> Path:
    art = find_trained(store, ref)
    if is_local(store):
        return Path(art.file_path(MODEL_DIR))
    root = Path(os.environ.get("CIRFLOW_MODEL_CACHE") or Path.home() / ".cache/cirflow/models")
    folder = root / art.key
    if (folder / WEIGHTS).is_file():
        return folder
    tmp = root / f".tmp-{art.key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for rec in art.manifest.files:
        if rec.name.startswith(f"{MODEL_DIR}/"):
            dest = tmp / rec.name[len(MODEL_DIR) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(art.read_file(rec.name))  # sha256-checked
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
