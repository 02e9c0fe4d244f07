"""A grown collection embeds only its new images: features of unchanged images (same content hash) are copied
from the earlier run of the same encoder, and equal a fresh computation."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cirflow.schemas.builds import CollectionSource
from cirflow.schemas.encoder import EncoderConfig
from cirflow.storage import ArtifactStore
from cirflow.tasks.builds import ingest_collection
from cirflow.tasks.runs.embed_images import embed_images


def _image(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), colour).save(path)


def test_grown_collection_embeds_only_new_images(tmp_path, tiny_models):
    root = tmp_path / "images"
    for i in range(6):
        _image(root / "a" / f"{i}.png", (40 * i, 20, 200 - 30 * i))
    store = ArtifactStore(str(tmp_path / "store"))
    cfg = EncoderConfig(model=f"local-dir:{tiny_models['encoder']}", device="cpu", num_workers=0)
    source = CollectionSource(kind="folder", uri=str(root))
    first = embed_images(store, ingest_collection.run(store, source, progress=False), cfg, progress=False)
    assert first.manifest.stats["reused_this_run"] == 0

    _image(root / "b" / "new1.png", (250, 250, 0))
    _image(root / "b" / "new2.png", (0, 250, 250))
    grown = ingest_collection.run(store, source, progress=False)
    second = embed_images(store, grown, cfg, progress=False)
    assert second.key != first.key and second.report.status == "computed"
    assert second.manifest.stats["reused_this_run"] == 6 and second.manifest.stats["images"] == 8

    ids1, e1 = first.embeddings()
    ids2, e2 = second.embeddings()
    old = dict(zip(ids2, e2))
    assert all(np.array_equal(old[i], v) for i, v in zip(ids1, e1))  # copied, not recomputed

    fresh = embed_images(ArtifactStore(str(tmp_path / "fresh")),
                         ingest_collection.run(ArtifactStore(str(tmp_path / "fresh")), source, progress=False), cfg,
                         reuse=False, progress=False)
    ids3, e3 = fresh.embeddings()
    assert ids3 == ids2
    np.testing.assert_allclose(e3, e2, atol=1e-5)  # equal to computing everything again
