"""synthesize_images (PEFUSE diffusion branch): edit each query's reference image with a diffusion pipeline,
conditioned on the raw modification text or on the MLLM-composed target description, so that image->image
retrieval can use the edits as visual queries.

Work is sharded over queries; a shard generates `cfg.num_images` images per query in batches of
`cfg.batch_size`. Each image has its own seed, `item_seed(cfg.seed, f"{query_id}:{n}")`, and its own CPU
generator, so which query shares a batch with which does not decide what is drawn. Images are PNG bytes in the
shard's `images` side table (storage/item_files.py: one object per shard, not per image), committed before the
shard's GENERATED_IMAGES table, whose rows then have `file` = null; read them with `ItemFiles(artifact)`.
Artifacts written before issue 14 hold one PNG file per image (`images/<sha1(query_id)[:16]>-<n>.png`, named by
`file`) and read the same way.

Reproducibility: the same config, shard_size and batch_size give byte-identical PNGs (across runs and across
kill/resume). Changing batch_size or shard_size (runtime settings, not in the key) changes the batch
composition; convolution kernels are then picked for other shapes and float rounding can move a few pixels by
one grey level, like embeddings "up to float noise" (tests/test_diffusion_backend.py measures this).

Conditioning "composed" reads the TEXTS artifact of compose_target_text (id = query_id, sample 0). A query
whose composition failed (or is missing/empty) falls back to its modification text (`fallback="modification"`,
the default, counted in stats as `fallbacks`) or stops the stage with a CirflowError (`fallback="fail"`).
Failures of single items (unreadable reference image, a pipeline exception) become rows with status "failed"
and the reason; they are counted in stats, never dropped.
"""

from __future__ import annotations

import io
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from cirflow.models.images import load_image
from cirflow.schemas.diffusion import DiffusionConfig
from cirflow.schemas.errors import CirflowError, StoreError
from cirflow.schemas.tables import GENERATED_IMAGES
from cirflow.storage import Artifact, ArtifactStore, item_seed
from cirflow.storage.item_files import ITEM_SCHEMA, ITEM_TABLE, ItemFiles, item_table
from cirflow.storage.manifest import COMMITS, MANIFEST
from cirflow.storage.store import sha256_bytes
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.stage import Context, Params, Runtime, Stage, execute

FALLBACKS = ("modification", "fail")


class SynthesizeParams(Params):
    diffusion: DiffusionConfig  # contributes key_fields(): pipeline, weights, sampler, seed, num_images
    fallback: str | None  # composed conditioning only


class SynthesizeRuntime(Runtime):
    shard_size: int = 16
    batch_size: int = 1  # recorded from the diffusion config
    device: str = "auto"
    verify_cached: bool = True


class SynthesizeImages(Stage):
    name, version = "synthesize_images", "1"
    Params, Runtime = SynthesizeParams, SynthesizeRuntime
    inputs = ("bench", "texts")
    outputs = {"data": GENERATED_IMAGES, ITEM_TABLE: ITEM_SCHEMA}
    models = ("pipeline",)
    shardable = True

    def items(self, ctx: Context):
        bench, texts = ctx.inputs["bench"], ctx.inputs.get("texts")
        queries = bench.read("queries", columns=["query_id", "reference_id", "modification"]).to_pylist()
        ctx.scratch["images"] = {r["image_id"]: r for r in
                                 bench.read("images", columns=["image_id", "path", "crop_box"]).to_pylist()}
        ctx.scratch["prompts"], ctx.scratch["fallbacks"] = _prompts(queries, texts, ctx.params.fallback)
        ctx.scratch["n_queries"] = len(queries)
        return queries

    def compute(self, ctx: Context, queries):
        cfg, backend = ctx.params.diffusion, ctx.models["pipeline"]
        if not ctx.scratch.get("checked"):
            from cirflow.models.diffusion import load_fields

            if load_fields(backend.get().cfg) != load_fields(cfg):  # a shared backend must hold these weights
                raise CirflowError(f"synthesize_images: the given pipeline was loaded for "
                                   f"{load_fields(backend.get().cfg)}, not {load_fields(cfg)}")
            ctx.scratch["checked"] = True
        rows, pngs = _synthesize(backend, cfg, queries, ctx.scratch["images"], ctx.scratch["prompts"])
        return {ITEM_TABLE: item_table(pngs), "data": pa.Table.from_pylist(rows, schema=GENERATED_IMAGES)}

    def model_factory(self, slot: str, ctx: Context):
        return _loader(ctx.params.diffusion)()

    def demote_cached(self, store: ArtifactStore, artifact: Artifact, runtime: SynthesizeRuntime) -> bool:
        return runtime.verify_cached and bool(_drop_shards_with_bad_images(store, artifact))

    def stats(self, ctx: Context) -> dict:
        backend = ctx.models["pipeline"]
        info = backend.get().describe() if backend.loaded else None
        peak = backend.get().peak_memory_bytes if backend.loaded else None
        if info is not None:
            ctx.scratch["load_seconds"] = info.pop("load_seconds")
            info.pop("peak_gpu_memory_bytes")
        fallbacks = ctx.scratch["fallbacks"]
        stats = _stats_after(ctx.run, n_queries=ctx.scratch["n_queries"], num_images=ctx.params.diffusion.num_images)
        ctx.scratch["per_image"] = stats["model_seconds_per_image"]
        return stats | {"fallbacks": len(fallbacks), "fallback_ids": fallbacks[:20], "peak_gpu_memory_bytes": peak,
                        "backend": info}

    def timings(self, ctx: Context) -> dict:
        # a writer that found every shard committed by a concurrent run never loaded the pipeline: no load time
        # (the manifest's timings are numbers only, so an absent figure is left out, not None)
        load = ctx.scratch.get("load_seconds")
        out = {"load_seconds": round(load, 3) if load else None, "model_seconds_per_image": ctx.scratch["per_image"]}
        return {k: v for k, v in out.items() if v is not None}


def run(store: ArtifactStore, bench: Artifact, cfg: DiffusionConfig, *, texts: Artifact | None = None,
        fallback: str = "modification", shard_size: int = 16, pipeline: Lazy | None = None,
        verify_cached: bool = True, progress: bool = True, max_failure_rate: float | None = None,
        rank: int = 0, world: int = 1) -> Artifact:
    """Generate cfg.num_images edits per query of `bench` (see the module doc). A cached artifact's image files
    are checked against their sha256 first (`verify_cached`); shards indexing a missing or corrupt image are
    recomputed (the store's own verification covers tables, not per-item files)."""
    composed = cfg.conditioning == "composed"
    if composed and texts is None:
        raise CirflowError("synthesize_images: conditioning 'composed' needs the compose_target_text artifact")
    if not composed and texts is not None:
        raise CirflowError("synthesize_images: a texts artifact was given but conditioning is 'modification'; "
                           "set diffusion.conditioning: composed to use it")
    if fallback not in FALLBACKS:
        raise CirflowError(f"synthesize_images: fallback must be one of {FALLBACKS}, not {fallback!r}")
    return execute(SynthesizeImages, store, {"bench": bench, "texts": texts if composed else None},
                   SynthesizeParams(diffusion=cfg, fallback=fallback if composed else None),
                   SynthesizeRuntime(shard_size=shard_size, batch_size=cfg.batch_size, device=cfg.device,
                                     verify_cached=verify_cached, progress=progress, max_failure_rate=max_failure_rate),
                   {"pipeline": pipeline}, rank=rank, world=world)


def _loader(cfg: DiffusionConfig):
    def load():
        from cirflow.models.diffusion import load_pipeline  # late: importing diffusers costs seconds

        return load_pipeline(cfg)

    return load


def _prompts(queries: list[dict], texts: Artifact | None, fallback: str | None) -> tuple[dict[str, str], list[str]]:
    """The conditioning text per query id, and the ids that fell back to their modification."""
    prompts = {q["query_id"]: q["modification"] for q in queries}
    if texts is None:
        return prompts, []
    t = texts.read(columns=["id", "sample", "text", "status"]).filter(pc.field("sample") == 0)
    composed = dict(zip(t.column("id").to_pylist(), zip(t.column("text").to_pylist(), t.column("status").to_pylist())))
    fallbacks = []
    for q in queries:
        qid = q["query_id"]
        text, status = composed.get(qid, (None, "missing"))
        if status == "ok" and text and text.strip():
            prompts[qid] = text
        elif fallback == "fail":
            raise CirflowError(f"synthesize_images: query {qid} has no composed text ({status}); use "
                               "fallback 'modification' to condition such queries on their modification instead")
        else:
            fallbacks.append(qid)
    return prompts, fallbacks


def _synthesize(backend: Lazy, cfg: DiffusionConfig, queries: list[dict], images: dict,
                prompts: dict[str, str]) -> tuple[list[dict], list[tuple[str, int, bytes]]]:
    """Rows of one shard (query order, then sample order) and the PNGs of its ok rows (id, sample, bytes)."""
    rows: dict[tuple[str, int], dict] = {}
    pngs: dict[tuple[str, int], bytes] = {}
    todo = []  # (query_id, sample, image, prompt, seed)
    for q in queries:
        qid, prompt = q["query_id"], prompts[q["query_id"]]
        seeds = [item_seed(cfg.seed, f"{qid}:{n}") for n in range(cfg.num_images)]
        try:
            ref = images.get(q["reference_id"])
            if ref is None:
                raise KeyError(f"reference {q['reference_id']} is not in the images table")
            image = load_image(ref["path"], ref["crop_box"])
        except Exception as e:  # noqa: BLE001 - any unreadable reference becomes failed rows
            for n, seed in enumerate(seeds):
                rows[qid, n] = _row(qid, n, seed, prompt, error=f"reference image unreadable: {_why(e)}")
            continue
        todo += [(qid, n, image, prompt, seed) for n, seed in enumerate(seeds)]

    for b in range(0, len(todo), cfg.batch_size):
        batch = todo[b:b + cfg.batch_size]
        for item, result, secs in _edit_batch(backend, batch, cfg):
            qid, n, _, prompt, seed = item
            if isinstance(result, Exception):
                rows[qid, n] = _row(qid, n, seed, prompt, error=f"generation failed: {_why(result)}", seconds=secs)
                continue
            buf = io.BytesIO()
            result.save(buf, format="PNG")
            pngs[qid, n] = buf.getvalue()
            rows[qid, n] = _row(qid, n, seed, prompt, sha256=sha256_bytes(pngs[qid, n]), size=result.size,
                                seconds=secs)
    order = [(q["query_id"], n) for q in queries for n in range(cfg.num_images)]
    return [rows[k] for k in order], [(*k, pngs[k]) for k in order if k in pngs]


def _edit_batch(backend: Lazy, batch: list[tuple], cfg: DiffusionConfig):
    """(item, image or exception, seconds per image). A failing batch is retried item by item, so one bad item
    does not fail its neighbours."""
    t0 = time.perf_counter()
    try:
        out = backend.get().edit([it[2] for it in batch], [it[3] for it in batch], [it[4] for it in batch], cfg)
        secs = (time.perf_counter() - t0) / len(batch)
        return [(it, im, secs) for it, im in zip(batch, out)]
    except Exception as e:  # noqa: BLE001
        if len(batch) == 1:
            return [(batch[0], e, time.perf_counter() - t0)]
    return [r for it in batch for r in _edit_batch(backend, [it], cfg)]


def _row(qid, n, seed, prompt, *, file=None, sha256=None, size=(None, None), seconds=None, error=None) -> dict:
    return {"id": qid, "sample": n, "file": file, "sha256": sha256, "width": size[0], "height": size[1],
            "seed": seed, "prompt": prompt, "status": "failed" if error else "ok", "error": error,
            "seconds": seconds}


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _stats_after(run_, n_queries: int, num_images: int) -> dict:
    """Counts over every shard (committed now or by an earlier, interrupted run); the ok / failed / failures
    keys match `failure_stats` (the threshold reads them), per image."""
    t = run_.committed("data", columns=["id", "sample", "status", "error", "seconds"])
    ids, samples, status, errors, secs = (t.column(c).to_pylist() for c in ("id", "sample", "status", "error", "seconds"))
    failed = [{"id": i, "sample": s, "error": e} for i, s, st, e in zip(ids, samples, status, errors) if st != "ok"]
    ok_secs = [x for x, st in zip(secs, status) if st == "ok" and x is not None]
    return {"queries": n_queries, "num_images": num_images, "images": len(ids), "ok": len(ids) - len(failed),
            "failed": len(failed), "failures": failed[:20],
            "model_seconds_per_image": round(sum(ok_secs) / len(ok_secs), 4) if ok_secs else None}


def _drop_shards_with_bad_images(store: ArtifactStore, art: Artifact) -> list[str]:
    """Demote a cached artifact whose image files fail verification to an unfinished run: remove its manifest
    and the commit records of the shards that index bad files, so the next begin() recomputes only those."""
    bad_ids = {qid for qid, _, _ in _image_problems(art)}
    if not bad_ids:
        return []
    bad_shards = [rec.name for rec in art.manifest.shards if rec.table == "data" and bad_ids & set(
        pq.read_table(io.BytesIO(store.read_bytes(art.file_path(rec.name))), columns=["id"]).column("id").to_pylist())]
    # discard: a concurrent identical run may be demoting the same artifact right now
    store.discard(art.file_path(MANIFEST))
    for name in bad_shards:
        store.discard(art.file_path(f"{COMMITS}/{name}.json"))
    return bad_shards


# ---- checks and a contact sheet for people --------------------------------------------------------------

def verify_images(artifact: Artifact) -> list[str]:
    """Problems of the image files an artifact indexes: missing, checksum mismatch, undecodable, wrong size.
    Empty when every "ok" row points at the intact file it was committed with."""
    return [f"{qid}#{sample}: {why}" for qid, sample, why in _image_problems(artifact)]


def _image_problems(artifact: Artifact) -> list[tuple[str, int, str]]:
    problems = []
    files = ItemFiles(artifact)
    t = artifact.read(columns=["id", "sample", "file", "sha256", "width", "height", "status"])
    for r in t.to_pylist():
        if r["status"] != "ok":
            continue
        bad = lambda why: problems.append((r["id"], r["sample"], why))  # noqa: E731
        if not r["sha256"]:
            bad("status ok but no sha256 recorded")
            continue
        what = r["file"] or f"image {r['id']}#{r['sample']}"
        try:
            data = files.read({**r, "sha256": None})  # checked against the row's sha256 below
        except FileNotFoundError:
            bad(f"{what} is missing")
            continue
        except StoreError as e:
            bad(f"{what}: {e}")
            continue
        if sha256_bytes(data) != r["sha256"]:
            bad(f"{what} checksum mismatch (file is corrupt or was replaced)")
            continue
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                size = im.size
        except Exception as e:  # noqa: BLE001
            bad(f"{r['file']} does not decode: {_why(e)}")
            continue
        if size != (r["width"], r["height"]):
            bad(f"{r['file']} is {size[0]}x{size[1]}, the table says {r['width']}x{r['height']}")
    return problems


def image_grid(artifact: Artifact, bench: Artifact, out_path: str | Path, n_queries: int = 8,
               cell: float = 2.4) -> Path:
    """One PNG for a person: a row per query (the first `n_queries`), reference | generated samples, with the
    conditioning text under the row. Failed samples show their error."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    t = artifact.read().to_pylist()
    files = ItemFiles(artifact)
    order = list(dict.fromkeys(r["id"] for r in t))[:n_queries]
    by_q = {qid: sorted((r for r in t if r["id"] == qid), key=lambda r: r["sample"]) for qid in order}
    queries = {q["query_id"]: q for q in bench.read("queries", columns=["query_id", "reference_id"]).to_pylist()}
    refs = {r["image_id"]: r for r in bench.read("images", columns=["image_id", "path", "crop_box"]).to_pylist()}
    n_cols = 1 + max((len(v) for v in by_q.values()), default=1)
    n_rows = max(len(order), 1)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, (cell + 0.75) * n_rows + 0.4), squeeze=False,
                             gridspec_kw=dict(hspace=0.36, wspace=0.06, left=0.02, right=0.98, bottom=0.03,
                                              top=1 - 0.75 / ((cell + 0.75) * n_rows + 0.4)))
    for ax in axes.flat:
        ax.axis("off")
    for i, qid in enumerate(order):
        ref_id = queries[qid]["reference_id"]
        try:
            ref = refs[ref_id]
            axes[i, 0].imshow(load_image(ref["path"], ref["crop_box"]))
        except Exception as e:  # noqa: BLE001
            _note(axes[i, 0], f"reference unreadable\n{_why(e)}")
        axes[i, 0].set_title(f"query {qid}: reference", fontsize=8)
        for j, r in enumerate(by_q[qid], start=1):
            ax = axes[i, j]
            if r["status"] == "ok":
                ax.imshow(Image.open(io.BytesIO(files.read(r))))
                ax.set_title(f"edit {r['sample']} (seed {r['seed']})", fontsize=8)
            else:
                _note(ax, f"sample {r['sample']} failed\n{r['error']}")
        caption = textwrap.fill(f"“{by_q[qid][0]['prompt']}”", width=int(18 * n_cols * cell / 2.4))
        axes[i, 0].text(0.0, -0.03, caption, transform=axes[i, 0].transAxes, ha="left", va="top", fontsize=8,
                        clip_on=False)
    stage = artifact.manifest.params.get("diffusion", {})
    fig.suptitle(f"{artifact.stage} {artifact.key[:12]}: {stage.get('pipeline')}, conditioned on "
                 f"{stage.get('conditioning')} text", fontsize=10)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _note(ax, text: str) -> None:
    ax.set_facecolor("#dddddd")
    ax.text(0.5, 0.5, textwrap.fill(text, 28), ha="center", va="center", fontsize=7, transform=ax.transAxes)
