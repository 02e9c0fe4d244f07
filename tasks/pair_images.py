"""Image pairs for the training-data builds.

pair_groups (MTCIR, collm.txt supplementary 8.1, after CIRR): "Groups of six similar images are formed, where
each image is added to the group with a similarity score between 0.5 and 0.95 relative to the first image,
using an interval of 0.03. Groups with fewer than six members are discarded. Pairs are then constructed between
consecutive images and between the first image and all other images within each group."
Our reading of the interval: an anchor's candidates (its nearest neighbours by CLIP cosine similarity) are
visited from most to least similar; a candidate joins when its similarity to the anchor lies in
[min_similarity, max_similarity] and is at least `spacing` (0.03) below the similarity of the member added
before it, so the members are spread over the band instead of being near-duplicates of each other. Anchors are
tried in a seeded hash order of their ids (independent of the collection's row order); with `exclusive` an
image joins at most one group, as in CIRR.

random_pairs (InstructCIR, instructcir.txt §II-A / §III-A): for each image, `pairs_per_image` partners drawn at
random within its meta-class (or the whole collection). The draw is consistent hashing: every image has a
seeded hash point on a ring, and an image's k-th partner is the owner of the first point after hash(seed, id,
k). Adding images changes only the partners whose successor point a new image took, so a grown collection
keeps most pairs (and their cached LLM answers).
"""

from __future__ import annotations

import bisect
import hashlib

import numpy as np
import pyarrow as pa

from cirflow.retrieval.topk import topk
from cirflow.schemas.builds import GROUPS, PAIRS, PairingConfig, RandomPairingConfig
from cirflow.schemas.errors import CirflowError
from cirflow.storage import Artifact, ArtifactStore, begin

VERSION = "1"


def pair_id(ref_id: str, tgt_id: str) -> str:
    return hashlib.sha256(f"{ref_id}\0{tgt_id}".encode()).hexdigest()[:24]


def _h(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "big")


# ------------------------------------------------------------------------------------------ CIRR groups


def pair_groups(store: ArtifactStore, collection: Artifact, embeddings: Artifact, cfg: PairingConfig) -> Artifact:
    run_ = begin(store, "pair_groups", VERSION, {"pairing": cfg}, inputs={"collection": collection,
                 "embeddings": embeddings}, schemas={"pairs": PAIRS, "groups": GROUPS})
    if run_.cached:
        return run_.artifact
    ids, emb = embeddings.embeddings()
    groups = build_groups(ids, emb, cfg)
    row_of = {i: n for n, i in enumerate(ids)}
    pairs, group_rows = [], []
    for members, sims in groups:
        gid = hashlib.sha256("\0".join(members).encode()).hexdigest()[:16]
        group_rows.append({"group_id": gid, "members": members, "similarities": sims})
        links = [(members[i], members[i + 1], "consecutive") for i in range(len(members) - 1)]
        links += [(members[0], m, "first") for m in members[2:]]  # first→second is already a consecutive pair
        for a, b, kind in links:
            pairs.append({"pair_id": pair_id(a, b), "ref_id": a, "tgt_id": b, "group_id": gid, "kind": kind,
                          "similarity": float(emb[row_of[a]] @ emb[row_of[b]])})
    run_.write_table("groups", pa.Table.from_pylist(group_rows, schema=GROUPS))
    run_.write_table("pairs", pa.Table.from_pylist(pairs, schema=PAIRS))
    return run_.finish(stats={"images": len(ids), "groups": len(group_rows), "pairs": len(pairs),
                              "grouped_images": sum(len(g["members"]) for g in group_rows)})


def build_groups(ids: list[str], emb: np.ndarray, cfg: PairingConfig) -> list[tuple[list[str], list[float]]]:
    """The CIRR-style groups: [(member ids, similarity of each member to the first)]."""
    n = len(ids)
    if n == 0:
        return []
    emb = np.array(emb, dtype=np.float32)  # a writable copy (store reads are read-only views)
    k = min(n, cfg.neighbours + 1)
    order = sorted(range(n), key=lambda i: _h(cfg.seed, ids[i]))
    used = np.zeros(n, dtype=bool)
    groups: list[tuple[list[str], list[float]]] = []
    chunk = 4096
    for lo in range(0, n, chunk):
        anchors = order[lo:lo + chunk]
        # exact nearest neighbours (inner product of L2-normalised rows = cosine), best first
        top_sims, top = topk(emb[anchors], emb, k, device="cpu" if n < 50_000 else None)
        for row, a in enumerate(anchors):
            if cfg.exclusive and used[a]:
                continue
            members, msims, last = [a], [1.0], None
            for c, s in zip(top[row].tolist(), top_sims[row].tolist()):
                if c == a or (cfg.exclusive and used[c]):
                    continue
                if s > cfg.max_similarity:
                    continue
                if s < cfg.min_similarity:
                    break  # sorted: every later candidate is below the band too
                if last is not None and last - s < cfg.spacing:
                    continue
                members.append(int(c))
                msims.append(s)
                last = s
                if len(members) == cfg.group_size:
                    break
            if len(members) < cfg.group_size:
                continue  # "Groups with fewer than six members are discarded."
            if cfg.exclusive:
                used[members] = True
            groups.append(([ids[m] for m in members], msims))
            if cfg.max_groups is not None and len(groups) >= cfg.max_groups:
                return groups
    return groups


# ------------------------------------------------------------------------------------------ random pairs


def random_pairs(store: ArtifactStore, collection: Artifact, cfg: RandomPairingConfig) -> Artifact:
    run_ = begin(store, "random_pairs", VERSION, {"pairing": cfg}, inputs={"collection": collection},
                 schemas={"pairs": PAIRS})
    if run_.cached:
        return run_.artifact
    images = collection.read("images", columns=["image_id", "meta_class"]).to_pylist()
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
    run_.write_table("pairs", pa.Table.from_pylist(rows, schema=PAIRS))
    return run_.finish(stats={"images": len(images), "pairs": len(rows),
                              "pools": {k or "-": len(v) for k, v in sorted(pools.items())}})
