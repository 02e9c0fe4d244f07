"""caption_collection: one detailed MLLM caption per collection image (all three builds), or the collection's
own caption (`source: collection`).

Every request carries a per-image seed `item_seed(seed, "<image_id>:caption")` and goes through CachedMLLM, so
a re-run after the collection grew only asks about the new images.
"""

from __future__ import annotations

from typing import Any

from cirflow.models.mllm.protocol import ChatRequest
from cirflow.prompts import load_template
from cirflow.schemas.builds import CaptionConfig
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.tables import TEXTS
from cirflow.storage import Artifact, ArtifactStore, item_seed
from cirflow.tasks.builds.common import BuildRuntime, BuildTextStage, build_handle, classify, is_refusal
from cirflow.tasks.stage import Context, Params, execute


class CaptionCollectionParams(Params):
    source: str
    mllm: MLLMConfig | None  # source "mllm" only
    sampling: SamplingParams | None
    template: str | None


class CaptionCollection(BuildTextStage):
    name, version = "caption_collection", "1"
    Params = CaptionCollectionParams
    inputs = ("collection",)
    outputs = {"data": TEXTS}

    def items(self, ctx: Context):
        return ctx.inputs["collection"].read("images", columns=["image_id", "path", "caption"]).to_pylist()

    def request(self, ctx: Context, r: dict) -> ChatRequest | None:
        p = ctx.params
        if p.source == "collection":
            return None  # the collection's own caption
        return ChatRequest(id=r["image_id"], prompt=p.template.strip(), images=(r["path"],),
                           sampling=p.sampling.model_copy(update={
                               "seed": item_seed(p.sampling.seed, f"{r['image_id']}:caption")}))

    def row(self, ctx: Context, r: dict, res) -> dict:
        if res is None:
            return {"id": r["image_id"], "sample": 0, "text": r["caption"], "raw": r["caption"],
                    "status": "ok" if r["caption"] else "failed",
                    "error": None if r["caption"] else "the collection has no caption for this image",
                    "seed": None, "seconds": 0.0}
        text = (res.text or "").strip() if res.status == "ok" else None
        status, raw, err = classify(res)
        if status == "ok" and not text:
            status, err = "failed", "empty caption"
        if status == "ok" and is_refusal(text):
            status, err = "refused", "the model declined to caption"
        return {"id": res.id, "sample": 0, "text": text if status == "ok" else None, "raw": raw,
                "status": "ok" if status == "ok" else "failed",
                "error": None if status == "ok" else f"{status}: {err}", "seed": res.seed, "seconds": res.seconds}


def run(store: ArtifactStore, collection: Artifact, mllm_cfg: MLLMConfig, cfg: CaptionConfig, *, build: str,
        cache_root: str | None = None, mllm: Any = None, progress: bool = True, max_failure_rate: float = 1.0,
        rank: int = 0, world: int = 1) -> Artifact:
    template, source = load_template(CaptionCollection.name, build, cfg.prompt)
    by_mllm = cfg.source == "mllm"
    return execute(CaptionCollection, store, {"collection": collection},
                   CaptionCollectionParams(source=cfg.source, mllm=mllm_cfg if by_mllm else None,
                                           sampling=cfg.sampling if by_mllm else None,
                                           template=template if by_mllm else None),
                   BuildRuntime(shard_size=cfg.shard_size, progress=progress, template_source=source,
                                cache=cache_root, max_failure_rate=max_failure_rate),
                   {"mllm": build_handle(mllm)}, rank=rank, world=world)
