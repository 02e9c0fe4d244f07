"""caption_images: an MLLM turns benchmark images into text.

Two uses:
* PEFUSE bi-directional conversion (T→T, I→T): every gallery image is described once with a dataset-specific
  prompt q (`prompts/caption_images.<benchmark>.txt`), and retrieval then matches query texts or generated
  images against these gallery texts.
* CIReVL / LDRE reference captions (metrics-and-methods.md B.2, B.3): the queries' reference images are
  described (`prompt="detailed"` selects the generic `caption_images.detailed.txt`), with `n_samples` > 1 and
  temperature > 0 for LDRE's divergent captions.

Output: a TEXTS table, id = image_id, sample = 0..n_samples-1. The key covers the model, the sampler, the
prompt text, `which` and `n_samples`; the image set itself is covered by the input bench key, so a gallery is
captioned once per (model, prompt, sampling) whatever flow asks for it.

Each (image, sample) request carries the seed `item_seed(seed, f"{image_id}:{sample}")`: the n captions of one
image differ from each other, and a resumed or re-sharded run draws exactly the same ones.
"""

from __future__ import annotations

from typing import Literal

from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import MLLM, ChatRequest
from cirflow.prompts import load_template
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.tables import TEXTS
from cirflow.storage import Artifact, ArtifactStore, item_seed
from cirflow.tasks.crops import image_for
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.stage import Context, MLLMRuntime, MLLMStage, Params, execute

Which = Literal["gallery", "references", "all"]
WHICH = ("gallery", "references", "all")


class CaptionParams(Params):
    mllm: MLLMConfig
    sampling: SamplingParams
    template: str
    which: Which = "gallery"
    n_samples: int = 1


class CaptionImages(MLLMStage):
    name, version = "caption_images", "1"
    Params, Runtime = CaptionParams, MLLMRuntime
    inputs = ("bench",)
    outputs = {"data": TEXTS}

    def items(self, ctx: Context):
        # one work item per (image, sample), image-major: shards depend only on this list, never on timing
        images = select_images(ctx.inputs["bench"], ctx.params.which)
        ctx.scratch["n_images"] = len(images)
        return [(img, s) for img in images for s in range(ctx.params.n_samples)]

    def request(self, ctx: Context, item) -> ChatRequest:
        img, s = item
        p = ctx.params
        return ChatRequest(id=f"{img['image_id']}:{s}", prompt=p.template, images=(image_for(ctx, img),),
                           sampling=p.sampling.model_copy(update={"seed": item_seed(p.sampling.seed,
                                                                                    f"{img['image_id']}:{s}")}))

    def row(self, ctx: Context, item, r) -> dict:
        img, s = item
        text, status, error = r.text, r.status, r.error
        if status == "ok" and not (text or "").strip():
            status, error = "failed", "empty caption"
        return {"id": img["image_id"], "sample": s, "text": text.strip() if status == "ok" else None,
                "raw": r.text, "status": status, "error": error, "seed": r.seed, "seconds": r.seconds}

    def model_factory(self, slot: str, ctx: Context):
        return load_mllm(ctx.params.mllm)

    def stats(self, ctx: Context) -> dict:
        secs = [s for s in ctx.run.committed("data", columns=["seconds"]).column("seconds").to_pylist()
                if s is not None]
        return {"which": ctx.params.which, "images": ctx.scratch.get("n_images"), "n_samples": ctx.params.n_samples,
                "rows": len(secs), "model_seconds_per_item": round(sum(secs) / len(secs), 4) if secs else None}


def run(store: ArtifactStore, bench: Artifact, mllm_cfg: MLLMConfig, sampling: SamplingParams, *,
        which: Which = "gallery", n_samples: int = 1, prompt: str | None = None, shard_size: int = 256,
        mllm: Lazy[MLLM] | None = None, progress: bool = True, max_failure_rate: float | None = None,
        retry_failed: bool | None = None, rank: int = 0, world: int = 1) -> Artifact:
    """Caption the images `which` selects (see `select_images`), `n_samples` texts per image.

    `prompt`: None = the benchmark's built-in prompt; a built-in name such as "detailed" (the file
    `prompts/caption_images.<name>.txt`); or a path to a template file. The template has no placeholders: the
    image is attached before it.
    """
    if which not in WHICH:
        raise ConfigError(f"caption_images: which must be one of {WHICH}, got {which!r}")
    if n_samples < 1:
        raise ConfigError(f"caption_images: n_samples must be >= 1, got {n_samples}")
    if n_samples > 1 and sampling.temperature == 0:
        raise ConfigError("caption_images: n_samples > 1 with temperature 0 gives n identical captions; "
                          "set a temperature > 0 (LDRE samples with nucleus sampling)")
    template, source = load_prompt(CaptionImages.name, bench.manifest.params["benchmark"], prompt)
    return execute(CaptionImages, store, {"bench": bench},
                   CaptionParams(mllm=mllm_cfg, sampling=sampling, template=template, which=which,
                                 n_samples=n_samples),
                   MLLMRuntime(shard_size=shard_size, progress=progress, template_source=source,
                               backend=mllm_cfg.backend, max_failure_rate=max_failure_rate,
                               retry_failed=retry_failed),
                   {"mllm": mllm}, rank=rank, world=world)


def select_images(bench: Artifact, which: Which) -> list[dict]:
    """The image rows to caption, in the images table's order.

    * "gallery": what retrieval ranks: images with `in_gallery`, plus every per-query candidate
      (`candidate_ids`, GeneCIS, whose images table has no global gallery).
    * "references": the distinct reference images of the queries.
    * "all": every image of the benchmark (GeneCIS: every reference and candidate item, cropped).
    """
    images = bench.read("images").to_pylist()
    if which == "all":
        return images
    queries = bench.read("queries", columns=["reference_id", "candidate_ids"]).to_pylist()
    if which == "references":
        wanted = {q["reference_id"] for q in queries}
        return [r for r in images if r["image_id"] in wanted]
    candidates = {c for q in queries for c in (q["candidate_ids"] or ())}
    return [r for r in images if r["in_gallery"] or r["image_id"] in candidates]


def load_prompt(kind: str, benchmark: str, prompt: str | None) -> tuple[str, str]:
    """(template text, source). `prompt` None = `<kind>.<benchmark>.txt`; a bare name (no path separator, no
    suffix) = the built-in `<kind>.<name>.txt`; anything else = a template file path."""
    if prompt and "/" not in prompt and "\\" not in prompt and "." not in prompt:
        return load_template(kind, prompt)
    return load_template(kind, benchmark, prompt)
