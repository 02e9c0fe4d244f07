"""mvft_texts (MVFT-JI §3.2, target text retrieval data): per image, the MLLM first writes a modification text
(an intended change of the image), then, given the image and that modification, a description of the modified
(target) image. The detailed captions of the text-to-image task come from `caption_collection` (build "mvft").

Seeds: `item_seed(seed, "<image_id>:modification")` and `item_seed(target seed, "<image_id>:target")`. An image
whose first step failed is not asked the second (status failed, failed_step "modification").
"""

from __future__ import annotations

from typing import Any

from cirflow.models.mllm.protocol import ChatRequest
from cirflow.prompts import load_template, render
from cirflow.schemas.builds import MVFT_TRIPLETS, MVFTTextConfig
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.storage import Artifact, ArtifactStore, item_seed
from cirflow.tasks.builds.common import BuildRuntime, BuildTextStage, build_handle, classify, is_refusal, status_counts
from cirflow.tasks.stage import Context, Params, execute


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


class MVFTTextsParams(Params):
    mllm: MLLMConfig
    sampling: SamplingParams
    target_sampling: SamplingParams
    modification_template: str
    target_template: str


class MVFTTexts(BuildTextStage):
    """Two rounds per image: the modification, then (only when it is usable) the target description."""

    name, version = "mvft_texts", "1"
    Params = MVFTTextsParams
    inputs = ("collection",)
    outputs = {"data": MVFT_TRIPLETS}
    multi_round = True

    def items(self, ctx: Context):
        return ctx.inputs["collection"].read("images", columns=["image_id", "path"]).to_pylist()

    def request(self, ctx: Context, r: dict) -> ChatRequest:
        p = ctx.params
        return ChatRequest(id=r["image_id"], prompt=p.modification_template.strip(), images=(r["path"],),
                           sampling=p.sampling.model_copy(update={"seed": _seeds(ctx, r)[0]}))

    def follow_up(self, ctx: Context, r: dict, answers: list) -> ChatRequest | None:
        text = _text(answers[0])[0]
        if len(answers) > 1 or text is None:
            return None
        return ChatRequest(id=r["image_id"], prompt=render(ctx.params.target_template, modification=text),
                           images=(r["path"],),
                           sampling=ctx.params.target_sampling.model_copy(update={"seed": _seeds(ctx, r)[1]}))

    def row(self, ctx: Context, r: dict, answers: list) -> dict:
        seed_mod, seed_tgt = _seeds(ctx, r)
        row = {"image_id": r["image_id"], "modification": None, "target_text": None, "raw_modification": None,
               "raw_target": None, "status": "failed", "error": None, "failed_step": None,
               "seed_modification": seed_mod, "seed_target": seed_tgt, "seconds": 0.0}
        text, raw, err = _text(answers[0])
        row.update(modification=text, raw_modification=raw, seconds=answers[0].seconds)
        if text is None:
            return row | {"error": err, "failed_step": "modification"}
        text, raw, err = _text(answers[1])
        row.update(target_text=text, raw_target=raw, seconds=row["seconds"] + answers[1].seconds)
        return row | ({"error": err, "failed_step": "target"} if text is None else {"status": "ok"})

    def stats(self, ctx: Context) -> dict:
        t = ctx.run.committed("data", columns=["status", "failed_step"])
        statuses = t.column("status").to_pylist()
        steps = [st for s, st in zip(statuses, t.column("failed_step").to_pylist()) if s != "ok"]
        return {**super().stats(ctx), "images": len(statuses), "status": status_counts(statuses),
                "failed_steps": status_counts(steps)}


def _seeds(ctx: Context, r: dict) -> tuple[int, int]:
    return (item_seed(ctx.params.sampling.seed, f"{r['image_id']}:modification"),
            item_seed(ctx.params.target_sampling.seed, f"{r['image_id']}:target"))


def run(store: ArtifactStore, collection: Artifact, mllm_cfg: MLLMConfig, cfg: MVFTTextConfig, *,
        cache_root: str | None = None, mllm: Any = None, progress: bool = True, max_failure_rate: float = 1.0,
        rank: int = 0, world: int = 1) -> Artifact:
    mod_template, mod_source = load_template(MVFTTexts.name, "modification", cfg.modification_prompt)
    tgt_template, tgt_source = load_template(MVFTTexts.name, "target", cfg.target_prompt)
    return execute(MVFTTexts, store, {"collection": collection},
                   MVFTTextsParams(mllm=mllm_cfg, sampling=cfg.sampling, target_sampling=cfg.target_sampling,
                                   modification_template=mod_template, target_template=tgt_template),
                   BuildRuntime(shard_size=cfg.shard_size, progress=progress,
                                template_source=f"{mod_source} | {tgt_source}", cache=cache_root,
                                max_failure_rate=max_failure_rate),
                   {"mllm": build_handle(mllm)}, rank=rank, world=world)
