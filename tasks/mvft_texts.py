"""mvft_texts (MVFT-JI §3.2, target text retrieval data): per image, the MLLM first writes a modification text
(an intended change of the image), then, given the image and that modification, a description of the modified
(target) image. The detailed captions of the text-to-image task come from `caption_collection` (build "mvft").

Seeds: `item_seed(seed, "<image_id>:modification")` and `item_seed(target seed, "<image_id>:target")`. An image
whose first step failed is not asked the second (status failed, failed_step "modification").
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from cirflow.models.mllm.protocol import ChatRequest
from cirflow.prompts import load_template, render
from cirflow.schemas.builds import MVFT_TRIPLETS, MVFTTextConfig
from cirflow.schemas.mllm import MLLMConfig
from cirflow.storage import Artifact, ArtifactStore, begin, item_seed
from cirflow.tasks.build_texts import backend, cache_delta, cache_stats, classify, generate, is_refusal, status_counts

STAGE = "mvft_texts"
VERSION = "1"


def _text(res) -> tuple[str | None, str | None, str | None]:
    """(clean text, raw, error)."""
    status, raw, err = classify(res)
    if status != "ok":
        return None, raw, f"{status}: {err}"
    text = " ".join((res.text or "").split()).strip("\"' ")
    if not text:
        return None, res.text, "empty answer"
    if is_refusal(text):
        return None, res.text, "refused: the model declined"
    return text, res.text, None


def run(store: ArtifactStore, collection: Artifact, mllm_cfg: MLLMConfig, cfg: MVFTTextConfig, *,
        cache_root: str | None = None, mllm: Any = None, progress: bool = True) -> Artifact:
    mod_template, mod_source = load_template("build_mvft", "modification", cfg.modification_prompt)
    tgt_template, tgt_source = load_template("build_mvft", "target", cfg.target_prompt)
    params = {"mllm": mllm_cfg.key_fields(), "sampling": cfg.sampling, "target_sampling": cfg.target_sampling,
              "modification_template": mod_template, "target_template": tgt_template}
    run_ = begin(store, STAGE, VERSION, params, inputs={"collection": collection},
                 runtime={"shard_size": cfg.shard_size, "templates": [mod_source, tgt_source], "cache": cache_root},
                 schemas={"data": MVFT_TRIPLETS})
    if run_.cached:
        return run_.artifact
    images = collection.read("images", columns=["image_id", "path"]).to_pylist()
    with ExitStack() as stack:
        handle = backend(stack, mllm, mllm_cfg, cache_root)
        before = cache_stats(handle)
        shards = list(run_.pending(len(images), cfg.shard_size))
        for shard in tqdm(shards, desc=STAGE, unit="shard", disable=not progress or len(shards) < 2):
            t0 = time.perf_counter()
            batch = images[shard.start:shard.stop]
            rows = {r["image_id"]: {
                "image_id": r["image_id"], "modification": None, "target_text": None, "raw_modification": None,
                "raw_target": None, "status": "failed", "error": None, "failed_step": None,
                "seed_modification": item_seed(cfg.sampling.seed, f"{r['image_id']}:modification"),
                "seed_target": item_seed(cfg.target_sampling.seed, f"{r['image_id']}:target"), "seconds": 0.0,
            } for r in batch}  # fmt: skip
            path = {r["image_id"]: r["path"] for r in batch}
            mods = generate(handle, [ChatRequest(
                id=i, prompt=mod_template.strip(), images=(path[i],),
                sampling=cfg.sampling.model_copy(update={"seed": rows[i]["seed_modification"]})) for i in rows], progress)
            step2 = []
            for res in mods:
                row = rows[res.id]
                text, raw, err = _text(res)
                row.update(modification=text, raw_modification=raw, seconds=res.seconds)
                if text is None:
                    row.update(error=err, failed_step="modification")
                else:
                    step2.append(ChatRequest(id=res.id, prompt=render(tgt_template, modification=text),
                                             images=(path[res.id],),
                                             sampling=cfg.target_sampling.model_copy(update={"seed": row["seed_target"]})))
            for res in generate(handle, step2, progress):
                row = rows[res.id]
                text, raw, err = _text(res)
                row.update(target_text=text, raw_target=raw, seconds=row["seconds"] + res.seconds)
                if text is None:
                    row.update(error=err, failed_step="target")
                else:
                    row.update(status="ok")
            run_.commit(shard, pa.Table.from_pylist([rows[r["image_id"]] for r in batch], schema=MVFT_TRIPLETS),
                        seconds=time.perf_counter() - t0)
        after = cache_stats(handle)
    t = run_.committed("data", columns=["image_id", "status", "error", "failed_step"])
    statuses = t.column("status").to_pylist()
    failures = [{"image_id": i, "step": st, "error": e} for i, s, e, st in
                zip(*(t.column(c).to_pylist() for c in ("image_id", "status", "error", "failed_step"))) if s != "ok"]
    return run_.finish(stats={"images": len(statuses), "status": status_counts(statuses), "ok": statuses.count("ok"),
                              "failed": len(failures), "failed_steps": status_counts([f["step"] for f in failures]),
                              "failures": failures[:20], "llm_cache": cache_delta(before, after)})
