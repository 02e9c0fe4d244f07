"""synthesize_proxies (IP-CIR): draw N proxy images per query from its planned layout with a GLIGEN pipeline
(cirflow.models.gligen), stored as PNG bytes in an `images` side table beside a GENERATED_IMAGES table
(id = query_id, sample = n; storage/item_files.py, one object per shard; read them with `ItemFiles(artifact)`).

Image n of query q uses seed `item_seed(cfg.seed, f"{q}:{n}")` and its own CPU generator, so it is the same
whatever the shard size, the batch size or an interruption. A query whose layout failed gets N rows with
status "failed" and the layout's error; a pipeline error fails that query's images only. The images shard is
committed before the shard that indexes it. Artifacts written before issue 14 hold one PNG file per image
(named by the row's `file`) and read the same way.
"""

from __future__ import annotations

import io
import json
import time

import pyarrow as pa

from cirflow.models.gligen import generate, load_gligen, needs_reference, resolve_device
from cirflow.models.images import load_image
from cirflow.schemas.layout import ProxyConfig, load_layout
from cirflow.schemas.tables import GENERATED_IMAGES
from cirflow.storage import Artifact, ArtifactStore, item_seed
from cirflow.storage.item_files import ITEM_SCHEMA, ITEM_TABLE, item_table
from cirflow.storage.store import sha256_bytes
from cirflow.tasks.lazy import Lazy
from cirflow.tasks.stage import Context, Params, Runtime, Stage, execute


class ProxyParams(Params):
    proxy: ProxyConfig  # contributes key_fields()


class ProxyRuntime(Runtime):
    shard_size: int = 8
    batch_size: int = 1  # most images per pipeline call: the images do not depend on it
    device: str = "auto"


class SynthesizeProxies(Stage):
    name, version = "synthesize_proxies", "2"  # 2: image grounding follows the layout's From field
    Params, Runtime = ProxyParams, ProxyRuntime
    inputs = ("bench", "layouts")
    outputs = {"data": GENERATED_IMAGES, ITEM_TABLE: ITEM_SCHEMA}
    models = ("pipeline",)

    def items(self, ctx: Context):
        bench = ctx.inputs["bench"]
        ctx.scratch["queries"] = {q["query_id"]: q for q in bench.read("queries").to_pylist()}
        ctx.scratch["images"] = {r["image_id"]: r for r in bench.read("images").to_pylist()}
        ctx.scratch["timings"] = {"model_seconds": 0.0}
        return ctx.inputs["layouts"].read("data", columns=["id", "status", "layout_json", "error"]).to_pylist()

    def compute(self, ctx: Context, rows):
        out: list[dict] = []
        pngs: list[tuple[str, int, bytes]] = []
        for r in rows:
            out += _one_query(pngs, r, ctx.scratch["queries"], ctx.scratch["images"], ctx.params.proxy,
                              ctx.runtime.batch_size, ctx.models["pipeline"], ctx.scratch["timings"])
        return {ITEM_TABLE: item_table(pngs), "data": pa.Table.from_pylist(out, schema=GENERATED_IMAGES)}

    def model_factory(self, slot: str, ctx: Context):
        return load_gligen(ctx.params.proxy)

    def stats(self, ctx: Context) -> dict:
        device = resolve_device(ctx.params.proxy.device) if ctx.models["pipeline"].loaded else None
        return {**_stats_after(ctx.run), "device": device}

    def timings(self, ctx: Context) -> dict:
        return ctx.scratch["timings"]


def run(store: ArtifactStore, bench: Artifact, layouts: Artifact, cfg: ProxyConfig, *, shard_size: int = 8,
        batch_size: int | None = None, pipeline: Lazy | None = None, progress: bool = True,
        max_failure_rate: float | None = None) -> Artifact:
    """`layouts`: a plan_layout artifact of `bench`. `batch_size`: most images per pipeline call (default N;
    a runtime knob, the images do not depend on it). `pipeline`: a Lazy handle to a loaded GLIGEN pipeline
    (shared across stages); by default `load_gligen(cfg)` on first need."""
    return execute(SynthesizeProxies, store, {"bench": bench, "layouts": layouts}, ProxyParams(proxy=cfg),
                   ProxyRuntime(shard_size=shard_size, batch_size=max(1, batch_size or cfg.num_proxies),
                                device=cfg.device, progress=progress, max_failure_rate=max_failure_rate),
                   {"pipeline": pipeline})


def _one_query(pngs: list, r: dict, queries: dict, images: dict, cfg: ProxyConfig, per_call: int, model: Lazy,
               timings: dict) -> list[dict]:
    qid, n = r["id"], cfg.num_proxies
    seeds = [item_seed(cfg.seed, f"{qid}:{i}") for i in range(n)]

    def failed(reason: str, prompt: str | None = None) -> list[dict]:
        return [{"id": qid, "sample": i, "file": None, "sha256": None, "width": None, "height": None,
                 "seed": seeds[i], "prompt": prompt, "status": "failed", "error": reason, "seconds": None}
                for i in range(n)]

    if r["status"] != "ok":
        return failed(f"layout failed: {r['error']}")
    layout = load_layout(r["layout_json"])
    prompt = json.dumps({"scene": layout.scene, "phrases": [i.description for i in layout.instances]},
                        ensure_ascii=False)
    try:
        ref = None
        if cfg.pipeline != "gligen_text_box" and needs_reference(layout):
            q = queries[qid]
            img = images[q["reference_id"]]
            ref = load_image(img["path"], img["crop_box"])
        pics, secs = [], []
        for s in range(0, n, per_call):
            t0 = time.perf_counter()
            part = generate(model.get(), cfg, layout, seeds[s:s + per_call], ref)
            dt = time.perf_counter() - t0
            pics += part
            secs += [dt / max(1, len(part))] * len(part)
            timings["model_seconds"] += dt
    except Exception as e:  # noqa: BLE001 - one query's failure must not sink the shard
        return failed(f"generation failed: {type(e).__name__}: {e}", prompt)
    rows = []
    for i, (pic, sec) in enumerate(zip(pics, secs)):
        buf = io.BytesIO()
        pic.save(buf, format="PNG")
        pngs.append((qid, i, buf.getvalue()))
        rows.append({"id": qid, "sample": i, "file": None, "sha256": sha256_bytes(pngs[-1][2]), "width": pic.width,
                     "height": pic.height,
                     "seed": seeds[i], "prompt": prompt, "status": "ok", "error": None, "seconds": sec})
    return rows


def _stats_after(run_) -> dict:
    """Per-query failure reasons (a layout failure fails all N images of its query)."""
    t = run_.committed("data", columns=["id", "status", "error"])
    rows = t.to_pylist()
    failed = [r for r in rows if r["status"] != "ok"]
    by_query: dict[str, str] = {}
    for r in failed:
        by_query.setdefault(r["id"], r["error"])
    layout_failed = sum(e.startswith("layout failed") for e in by_query.values())
    return {"queries": len({r["id"] for r in rows}), "images": len(rows), "ok": len(rows) - len(failed),
            "failed": len(failed), "queries_layout_failed": layout_failed,
            "queries_generation_failed": len(by_query) - layout_failed,
            "failures": [{"id": k, "error": v[-300:]} for k, v in list(by_query.items())[:20]]}
