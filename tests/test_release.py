"""The release folder: `datasets.load_dataset(dir)` with no config name gives the default table with the images as
PIL images (bytes embedded, declared features); a card built with huggingface_hub's classes (license, configs,
features, counts, models, params, prompt texts); only "ok" rows exported; atomic replacement; an empty table
refused."""

from __future__ import annotations

import importlib.util
import hashlib
from pathlib import Path

import datasets
import PIL.Image
import pytest
import yaml
from huggingface_hub import DatasetCard

from cirflow.schemas.builds import CaptionConfig, CollectionSource, InstructCIRTextConfig, RandomPairingConfig, ReleaseConfig
from cirflow.schemas.errors import CirflowError
from cirflow.schemas.mllm import MLLMConfig
from cirflow.storage import ArtifactStore
from cirflow.tasks.builds import caption_collection, ingest_collection, instructcir_texts, random_pairs, release
from cirflow.tasks.stage import failure_policy

_spec = importlib.util.spec_from_file_location("builds_common", Path(__file__).with_name("test_builds_common.py"))
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)


def instructcir_build(tmp_path, srv, texts_cfg: InstructCIRTextConfig):
    """(MLLM config, collection, pairs, captions, texts) of a real InstructCIR build against the canned server."""
    store = ArtifactStore(str(tmp_path / "store"))
    cfg = MLLMConfig(backend="http", model="m", base_url=srv.url, api_flavor="openai")
    coll = ingest_collection.run(store, CollectionSource(kind="folder", uri=str(bc.make_collection(tmp_path / "c"))),
                          progress=False)
    pairs = random_pairs.random_pairs(store, coll, RandomPairingConfig())
    caps = caption_collection.run(store, coll, cfg, CaptionConfig(), build="instructcir", progress=False)
    return cfg, coll, pairs, caps, instructcir_texts.run(store, pairs, caps, cfg, texts_cfg, progress=False)


def test_release_loads_and_card_describes_it(tmp_path):
    srv = bc.CannedLLM()
    try:
        cfg, coll, pairs, caps, texts = instructcir_build(tmp_path, srv, InstructCIRTextConfig())
        out = tmp_path / "release"
        (out / "data").mkdir(parents=True)
        (out / "data" / "stale.parquet").write_bytes(b"old")  # a previous release is replaced as a whole
        rcfg = ReleaseConfig(out_dir=str(out), name="ic-test", license="cc-by-4.0")
        release.run("instructcir", {"collection": coll, "pairs": pairs, "captions": caps, "texts": texts}, rcfg,
                    models={"llm": cfg.key_fields()}, params={"max_words": 12})
        assert sorted(p.name for p in (out / "data").iterdir()) == ["triplets.parquet"]
        ok = [r for r in texts.read().to_pylist() if r["status"] == "ok"]
        ds = datasets.load_dataset("parquet", data_files={"train": str(out / "data/triplets.parquet")})["train"]
        assert ds.num_rows == len(ok) > 0 and sorted(ds["modification"]) == sorted(r["text"] for r in ok)
        assert all(Path(p).is_file() for p in list(ds["reference_path"]) + list(ds["target_path"]))

        card = (out / "README.md").read_text()
        header = yaml.safe_load(card.split("---\n")[1])
        assert header["license"] == "cc-by-4.0" and header["configs"][0]["config_name"] == "triplets"
        meta = header["cirflow"]
        assert meta["counts"] == {"triplets": len(ok)} and meta["models"]["llm"]["model"] == "m"
        assert meta["params"] == {"max_words": 12} and meta["artifacts"]["texts"]["key"] == texts.key
        assert meta["prompts"]["instructcir_texts.template"].startswith("There are two images, image A and image B")
        assert "## Prompts" in card
        # a cache of this test's own: `datasets` keys a folder's cache by its relative data_files and features,
        # not the files' content, so an earlier run's cached table would be returned
        hf_cache = str(tmp_path / "hf-datasets")
        by_config = datasets.load_dataset(str(out), "triplets", cache_dir=hf_cache)["train"]
        assert by_config.num_rows == len(ok)

        # no config name: the default config; images come back as PIL images with the source file's bytes
        default = datasets.load_dataset(str(out), cache_dir=hf_cache)["train"]
        assert default.num_rows == len(ok) and isinstance(default.features["reference_image"], datasets.Image)
        row = default[0]
        assert isinstance(row["reference_image"], PIL.Image.Image) and isinstance(row["target_image"], PIL.Image.Image)
        raw = default.cast_column("target_image", datasets.Image(decode=False))[0]["target_image"]
        assert hashlib.sha256(raw["bytes"]).digest() == hashlib.sha256(Path(row["target_path"]).read_bytes()).digest()
        assert row["target_image"].size == PIL.Image.open(row["target_path"]).size
        hub = DatasetCard.load(out / "README.md")  # the Hub's own parser reads the header
        info = hub.data.dataset_info  # one config: a mapping (datasets writes a list for several)
        assert hub.data.configs[0]["default"] is True and info["config_name"] == "triplets"
        assert {"name": "reference_image", "dtype": "image"} in info["features"]
    finally:
        srv.close()


def test_release_refuses_an_empty_table(tmp_path):
    """Every text is over the word limit: no 0-row Parquet file (which `datasets` cannot load), a one-line error
    naming the table, and no folder left behind."""
    srv = bc.CannedLLM()
    try:
        with failure_policy(1.0):  # a build that tolerates its failures still has nothing to release
            _, coll, _, _, texts = instructcir_build(tmp_path, srv, InstructCIRTextConfig(max_words=1))
    finally:
        srv.close()
    assert texts.manifest.stats["ok"] == 0 < texts.manifest.stats["failed"]
    out = tmp_path / "release"
    with pytest.raises(CirflowError, match=r"release: table 'triplets' has no ok rows \(\d+ failed"):
        release.run("instructcir", {"collection": coll, "texts": texts}, ReleaseConfig(out_dir=str(out)))
    assert not out.exists() and not list(tmp_path.glob("release.tmp-*"))
