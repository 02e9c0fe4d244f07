"""pair_groups: image groups and their pairs for the MTCIR build (collm.txt supplementary 8.1, after CIRR):
"Groups of six similar images are formed, where
each image is added to the group with a similarity score between 0.5 and 0.95 relative to the first image,
using an interval of 0.03. Groups with fewer than six members are discarded. Pairs are then constructed between
consecutive images and between the first image and all other images within each group."
Our reading of the interval: an anchor's candidates (its nearest neighbours by CLIP cosine similarity) are
visited from most to least similar; a candidate joins when its similarity to the anchor lies in
[min_similarity, max_similarity] and is at least `spacing` (0.03) below the similarity of the member added
before it, so the members are spread over the band instead of being near-duplicates of each other. Anchors are
tried in a seeded hash order of their ids (independent of the collection's row order).
The paper's scheme (the default, `exclusive: false`): every image anchors its own group and may be a member of
other images' groups, so an image takes part in about 8-9 pairs, as MTCIR's 3.4M pairs over 423K images
(collm.txt §4.1); a pair that several groups produce is kept once (either direction: the text stage writes
both). With `exclusive: true` (CIRR's own rule) an image joins at most one group: about 1.5 pairs per image.

`pair_id` and the seeded hash `_h` are shared with random_pairs (one pair id for a pair, whichever build made it).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from cirflow.schemas.builds import GROUPS, PAIRS, PairingConfig
from cirflow.storage import Artifact, ArtifactStore
from cirflow.tasks.stage import Context, Params, Stage, execute


def pair_id(ref_id: str, tgt_id: str) -> str:
    return hashlib.sha256(f"{ref_id}\0{tgt_id}".encode()).hexdigest()[:24]


def _h(*parts) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "big")


# ------------------------------------------------------------------------------------------ CIRR groups


class PairGroupsParams(Params):
    pairing: PairingConfig


class PairGroups(Stage):
    name, version = "pair_groups", "2"  # 2: pairs are unique per unordered image pair; pairs-per-image stats
    Params = PairGroupsParams
    inputs = ("collection", "embeddings")
    outputs = {"groups": GROUPS, "pairs": PAIRS}

    def produce(self, ctx: Context) -> None:
        ids, emb = ctx.inputs["embeddings"].embeddings()
        groups = build_groups(ids, emb, ctx.params.pairing)
        row_of = {i: n for n, i in enumerate(ids)}
        pairs, group_rows, seen, repeated = [], [], set(), 0
        for members, sims in groups:
            gid = hashlib.sha256("\0".join(members).encode()).hexdigest()[:16]
            group_rows.append({"group_id": gid, "members": members, "similarities": sims})
            links = [(members[i], members[i + 1], "consecutive") for i in range(len(members) - 1)]
            links += [(members[0], m, "first") for m in members[2:]]  # first→second is already a consecutive pair
            for a, b, kind in links:
                if frozenset((a, b)) in seen:  # overlapping groups (non-exclusive) meet the same pair again
                    repeated += 1
                    continue
                seen.add(frozenset((a, b)))
                pairs.append({"pair_id": pair_id(a, b), "ref_id": a, "tgt_id": b, "group_id": gid, "kind": kind,
                              "similarity": float(emb[row_of[a]] @ emb[row_of[b]])})
        ctx.write_table("groups", pa.Table.from_pylist(group_rows, schema=GROUPS))
        ctx.write_table("pairs", pa.Table.from_pylist(pairs, schema=PAIRS))
        paired = {i for p in pairs for i in (p["ref_id"], p["tgt_id"])}
        ctx.scratch["stats"] = {"images": len(ids), "groups": len(group_rows), "pairs": len(pairs),
                                "grouped_images": sum(len(g["members"]) for g in group_rows),
                                "exclusive": ctx.params.pairing.exclusive, "repeated_pairs_dropped": repeated,
                                "paired_images": len(paired),
                                # MTCIR: 3.4M pairs / 423K images ≈ 8 (collm.txt §4.1)
                                "pairs_per_image": round(len(pairs) / len(ids), 3) if ids else None,
                                "pairs_per_paired_image": round(len(pairs) / len(paired), 3) if paired else None}

    def stats(self, ctx: Context) -> dict:
        return ctx.scratch["stats"]


def pair_groups(store: ArtifactStore, collection: Artifact, embeddings: Artifact, cfg: PairingConfig) -> Artifact:
    return execute(PairGroups, store, {"collection": collection, "embeddings": embeddings},
                   PairGroupsParams(pairing=cfg))


def build_groups(ids: list[str], emb: np.ndarray, cfg: PairingConfig) -> list[tuple[list[str], list[float]]]:
    """The CIRR-style groups: [(member ids, similarity of each member to the first)]."""
    n = len(ids)
    if n == 0:
        return []
    from cirflow.retrieval.topk import topk  # torch: here, so `cirflow build --plan` never imports it

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
