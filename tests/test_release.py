"""The release folder: Parquet tables loadable with datasets.load_dataset, a card with a YAML header (license,
configs, counts, models, params, prompt texts), only "ok" rows exported, atomic replacement."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import datasets
import yaml

from cirflow.schemas.builds import CaptionConfig, CollectionSource, InstructCIRTextConfig, RandomPairingConfig, ReleaseConfig
from cirflow.schemas.mllm import MLLMConfig
from cirflow.storage import ArtifactStore
from cirflow.tasks import build_texts, collection, instructcir_texts, pair_images, release

_spec = importlib.util.spec_from_file_location("builds_common", Path(__file__).with_name("test_builds_common.py"))
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)


def test_release_loads_and_card_describes_it(tmp_path):
    root = bc.make_collection(tmp_path / "c")
    srv = bc.CannedLLM()
    try:
        store = ArtifactStore(str(tmp_path / "store"))
        cfg = MLLMConfig(backend="http", model="m", base_url=srv.url, api_flavor="openai")
        coll = collection.run(store, CollectionSource(kind="folder", uri=str(root)), progress=False)
        pairs = pair_images.random_pairs(store, coll, RandomPairingConfig())
        caps = build_texts.run(store, coll, cfg, CaptionConfig(), build="instructcir", progress=False)
        texts = instructcir_texts.run(store, pairs, caps, cfg, InstructCIRTextConfig(), progress=False)
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
        assert meta["prompts"]["instructcir_texts.template"].startswith("Here are captions of two images")
        assert "## Prompts" in card
        by_config = datasets.load_dataset(str(out), "triplets")["train"]
        assert by_config.num_rows == len(ok)
    finally:
        srv.close()
