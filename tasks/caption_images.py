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

import tempfile
import time
from contextlib import ExitStack
from typing import Literal

import pyarrow as pa
from tqdm.auto import tqdm

from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import MLLM, ChatRequest
from cirflow.prompts import load_template
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.schemas.tables import TEXTS
from cirflow.storage import Artifact, ArtifactStore, begin, item_seed
from cirflow.tasks.compose_target_text import _image_for
from cirflow.tasks.lazy import Lazy

STAGE = "caption_images"
VERSION = "1"
Which = Literal["gallery", "references", "all"]
WHICH = ("gallery", "references", "all")


def run(store: ArtifactStore, bench: Artifact, mllm_cfg: MLLMConfig, sampling: SamplingParams, *,
        which: Which = "gallery", n_samples: int = 1, prompt: str | None = None, shard_size: int = 256,
        mllm: Lazy[MLLM] | None = None, progress: bool = True) -> Artifact:
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
    benchmark = bench.manifest.params["benchmark"]
    template, template_source = load_prompt(STAGE, benchmark, prompt)
    params = {"mllm": mllm_cfg.key_fields(), "sampling": sampling, "template": template, "which": which,
              "n_samples": n_samples}
    run_ = begin(store, STAGE, VERSION, params, inputs={"bench": bench},
                 runtime={"shard_size": shard_size, "template_source": template_source, "backend": mllm_cfg.backend},
                 schemas={"data": TEXTS})
    if run_.cached:
        return run_.artifact

    images = select_images(bench, which)
    # one work item per (image, sample), image-major: shards depend only on this list, never on timing
    work = [(img, s) for img in images for s in range(n_samples)]
    with ExitStack() as stack:
        crops_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cirflow-crops-"))
        backend = mllm or stack.enter_context(Lazy(lambda: load_mllm(mllm_cfg)))
        shards = list(run_.pending(len(work), shard_size))
        for shard in tqdm(shards, desc=STAGE, unit="shard", disable=not progress or len(shards) < 2):
            t0 = time.perf_counter()
            items = work[shard.start:shard.stop]
            requests = [ChatRequest(
                id=f"{img['image_id']}:{s}",
                prompt=template,
                images=(_image_for(img, crops_dir),),
                sampling=sampling.model_copy(update={"seed": item_seed(sampling.seed, f"{img['image_id']}:{s}")}),
            ) for img, s in items]
            results = backend.get().generate(requests, progress=progress)
            run_.commit(shard, _texts_table(items, results), seconds=time.perf_counter() - t0)

    return run_.finish(stats=_stats_after(run_, which=which, images=len(images), n_samples=n_samples))


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


def _texts_table(items, results) -> pa.Table:
    rows = []
    for (img, s), r in zip(items, results):
        text, status, error = r.text, r.status, r.error
        if status == "ok" and not (text or "").strip():
            status, error = "failed", "empty caption"
        rows.append({"id": img["image_id"], "sample": s, "text": text.strip() if status == "ok" else None,
                     "raw": r.text, "status": status, "error": error, "seed": r.seed, "seconds": r.seconds})
    return pa.Table.from_pylist(rows, schema=TEXTS)


def _stats_after(run_, **extra) -> dict:
    """Counts over every committed shard (this run's and an interrupted run's)."""
    t = run_.committed("data", columns=["id", "sample", "status", "error", "seconds"])
    ids, samples, status, errors = (t.column(c).to_pylist() for c in ("id", "sample", "status", "error"))
    failed = [{"id": i, "sample": s, "error": e} for i, s, st, e in zip(ids, samples, status, errors) if st != "ok"]
    secs = [s for s in t.column("seconds").to_pylist() if s is not None]
    return {**extra, "rows": len(ids), "ok": len(ids) - len(failed), "failed": len(failed), "failures": failed[:20],
            "model_seconds_per_item": round(sum(secs) / len(secs), 4) if secs else None}
