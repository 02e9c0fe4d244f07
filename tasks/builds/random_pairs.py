"""random_pairs: image pairs for the InstructCIR build (instructcir.txt §II-A / §III-A): for each image,
`pairs_per_image` partners drawn at random within its meta-class (or the whole collection). The draw is
consistent hashing: every image has a seeded hash point on a ring, and an image's k-th partner is the owner of
the first point after hash(seed, id, k). Adding images changes only the partners whose successor point a new
image took, so a grown collection keeps most pairs (and their cached LLM answers).
"""

from __future__ import annotations

import bisect

import pyarrow as pa

from cirflow.schemas.builds import PAIRS, RandomPairingConfig
from cirflow.schemas.errors import CirflowError
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.builds.pair_groups import _h, pair_id
from cirflow.tasks.stage import Context, Params, Stage, execute


class RandomPairsParams(Params):
    pairing: RandomPairingConfig


class RandomPairs(Stage):
    name, version = "random_pairs", "1"
    Params = RandomPairsParams
    inputs = ("collection",)
    outputs = {"pairs": PAIRS}

    def produce(self, ctx: Context) -> None:
        cfg = ctx.params.pairing
        images = ctx.inputs["collection"].read("images", columns=["image_id", "meta_class"]).to_pylist()
        pools: dict[str, list[str]] = {}
        for r in images:
            cls = (r["meta_class"] or "") if cfg.within == "meta_class" else "*"
            pools.setdefault(cls, []).append(r["image_id"])
        if cfg.within == "meta_class" and set(pools) == {""}:
            raise CirflowError("random_pairs: within=meta_class but the collection has no meta classes; "
                               "set pairing.within: collection")
        rows, seen = [], set()
        for cls in sorted(pools):
            members = sorted(pools[cls])
            if len(members) < 2:
                continue
            ring = sorted((_h(cfg.seed, "point", m), m) for m in members)
            points = [p for p, _ in ring]
            for a in members:
                for k in range(cfg.pairs_per_image):
                    pos = bisect.bisect_right(points, _h(cfg.seed, "draw", a, k))
                    for step in range(len(ring)):  # skip over the image itself
                        b = ring[(pos + step) % len(ring)][1]
                        if b != a:
                            break
                    if (a, b) in seen:
                        continue
                    seen.add((a, b))
                    rows.append({"pair_id": pair_id(a, b), "ref_id": a, "tgt_id": b, "group_id": cls or None,
                                 "kind": "random", "similarity": None})
        ctx.write_table("pairs", pa.Table.from_pylist(rows, schema=PAIRS))
        ctx.scratch["stats"] = {"images": len(images), "pairs": len(rows),
                                "pools": {k or "-": len(v) for k, v in sorted(pools.items())}}

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch["stats"]


def random_pairs(store: ArtifactStore, collection: Artifact, cfg: RandomPairingConfig) -> Artifact:
    return execute(RandomPairs, store, {"collection": collection}, RandomPairsParams(pairing=cfg))
