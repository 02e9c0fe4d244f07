"""Benchmark rules (metrics-and-methods A) on synthetic QUERIES/IMAGES-shaped data, plus the FAISS kinds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cirflow.retrieval.index import build_index, load_index, save_index, search
from cirflow.retrieval.rules import rank_from_scores, rank_queries, ranking_info, score_matrix
from cirflow.schemas.index import IndexConfig
from cirflow.schemas.tables import QUERIES, RANKINGS


def _unit(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _queries(rows: list[dict]) -> pa.Table:
    base = {f.name: None for f in QUERIES}
    base |= {"modification": "m", "captions": [], "target_ids": [], "members": [], "candidate_ids": []}
    return pa.Table.from_pylist([base | r for r in rows], schema=QUERIES)


@pytest.fixture(scope="module")
def cirr():
    rng = np.random.default_rng(0)
    n_img, n_q = 80, 40
    ids = [f"dev-{i}-img" for i in range(n_img)]
    in_gallery = np.ones(n_img, bool)
    in_gallery[-5:] = False  # a few images outside the split's gallery
    rows = []
    for qi in range(n_q):
        members = [ids[j] for j in rng.choice(n_img - 5, 6, replace=False)]
        rows.append({"query_id": str(qi), "reference_id": members[rng.integers(6)], "members": members,
                     "target_ids": [members[0]]})
    return _queries(rows), _unit(rng, n_q), ids, _unit(rng, n_img), in_gallery


def _searle(q, img, ids, in_gallery, refs, members, k):
    """SEARLE validate.py procedure: full argsort, remove the reference by mask, subset = members in that order."""
    gal = np.flatnonzero(in_gallery)
    names = np.asarray(ids)[gal]
    order = np.argsort(-(q @ img[gal].T), axis=1, kind="stable")
    ranked = names[order]
    ranked = ranked[ranked != np.asarray(refs)[:, None]].reshape(len(q), -1)
    subset = [[n for n in row if n in set(m)] for row, m in zip(ranked, members)]
    return ranked[:, :k].tolist(), subset


def test_cirr_matches_searle_procedure(cirr):
    queries, q, ids, img, in_gallery = cirr
    out = rank_queries("cirr", queries, q, ids, img, in_gallery, k=10)
    assert out.schema.equals(RANKINGS)
    refs = queries.column("reference_id").to_pylist()
    members = queries.column("members").to_pylist()
    ranked, subset = _searle(q, img, ids, in_gallery, refs, members, 10)
    assert out.column("ranked_ids").to_pylist() == ranked
    assert out.column("subset_ids").to_pylist() == subset
    for ref, row, sub, m in zip(refs, ranked, out.column("subset_ids").to_pylist(), members):
        assert ref not in row and ref not in sub and len(sub) == 5 and set(sub) == set(m) - {ref}
    gallery = {i for i, g in zip(ids, in_gallery) if g}
    assert all(set(r) <= gallery for r in ranked)
    info = ranking_info(out)
    assert info["reference_removed"] and info["search"]["kind"] == "exact" and info["benchmark"] == "cirr"


def test_cirr_all_ties_follow_image_order(cirr):
    # a zero query scores every image 0: the documented rule (image index asc) decides everything,
    # which is also what SEARLE's procedure gives with a stable argsort
    queries, q, ids, img, in_gallery = cirr
    zero = np.zeros_like(q)
    out = rank_queries("cirr", queries, zero, ids, img, in_gallery, k=10)
    refs = queries.column("reference_id").to_pylist()
    members = queries.column("members").to_pylist()
    ranked, subset = _searle(zero, img, ids, in_gallery, refs, members, 10)
    assert out.column("ranked_ids").to_pylist() == ranked
    assert out.column("subset_ids").to_pylist() == subset
    pos = {x: i for i, x in enumerate(ids)}
    assert all(sub == sorted(sub, key=pos.get) for sub in subset)


def test_cirr_scores_are_the_similarities(cirr):
    queries, q, ids, img, in_gallery = cirr
    out = rank_queries("cirr", queries, q, ids, img, in_gallery, k=5)
    pos = {x: i for i, x in enumerate(ids)}
    for qi, (row, sc) in enumerate(zip(out.column("ranked_ids").to_pylist(), out.column("scores").to_pylist())):
        np.testing.assert_allclose(sc, [q[qi] @ img[pos[x]] for x in row], rtol=1e-5, atol=1e-6)
        assert sc == sorted(sc, reverse=True)


def test_rank_from_scores_equals_rank_queries(cirr):
    queries, q, ids, img, in_gallery = cirr
    a = rank_queries("cirr", queries, q, ids, img, in_gallery, k=10)
    b = rank_from_scores("cirr", queries, score_matrix(q, img), ids, in_gallery, k=10)
    c = rank_queries("cirr", queries, None, ids, None, in_gallery, k=10, query_scores_override=score_matrix(q, img))
    for col in ("ranked_ids", "subset_ids"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist() == c.column(col).to_pylist()
    assert ranking_info(b)["scores"] == "matrix"


def test_circo_reference_kept_unless_flag():
    rng = np.random.default_rng(3)
    ids = [str(100 + i) for i in range(60)]
    img = _unit(rng, 60)
    refs = [5, 17, 42]
    q = img[refs] + 0.01 * _unit(rng, 3)  # each query sits on its reference: the reference ranks first
    queries = _queries([{"query_id": str(i), "reference_id": ids[r]} for i, r in enumerate(refs)])
    keep = rank_queries("circo", queries, q, ids, img, np.ones(60, bool), k=50)
    drop = rank_queries("circo", queries, q, ids, img, np.ones(60, bool), k=50, circo_exclude_reference=True)
    for r, kept, dropped in zip(refs, keep.column("ranked_ids").to_pylist(), drop.column("ranked_ids").to_pylist()):
        assert kept[0] == ids[r] and len(kept) == 50
        assert ids[r] not in dropped and len(dropped) == 50 and dropped[:49] == kept[1:]
    assert ranking_info(keep)["circo_exclude_reference"] is False
    assert ranking_info(drop)["circo_exclude_reference"] is True and ranking_info(drop)["reference_removed"]
    assert keep.column("subset_ids").to_pylist() == [[], [], []]


def test_fashioniq_ranks_only_the_category_gallery():
    rng = np.random.default_rng(4)
    ids = [f"B{i:04d}" for i in range(30)]
    img = _unit(rng, 30)
    in_gallery = np.arange(30) % 2 == 0
    q = img[[1, 3]]  # query equal to a non-gallery image: that image must not appear
    queries = _queries([{"query_id": "0", "reference_id": ids[0]}, {"query_id": "1", "reference_id": ids[2]}])
    out = rank_queries("fashioniq", queries, q, ids, img, in_gallery, k=50)
    gallery = {x for x, g in zip(ids, in_gallery) if g}
    for row in out.column("ranked_ids").to_pylist():
        assert len(row) == 15 and set(row) == gallery  # k clipped to the gallery size, reference kept


def _genecis_case(rng, n_cand=10, n_q=6):
    ids = [f"vg{i}" for i in range(40)]
    img = _unit(rng, 40)
    rows = [{"query_id": str(i), "reference_id": ids[i],
             "candidate_ids": [ids[j] for j in rng.choice(np.arange(10, 40), n_cand, replace=False)]} for i in range(n_q)]
    return _queries(rows), ids, img


def test_genecis_all_equal_scores_put_the_target_last():
    queries, ids, img = _genecis_case(np.random.default_rng(5))
    out = rank_queries("genecis/focus_attribute", queries, np.zeros((6, 16), np.float32), ids, img,
                       np.zeros(40, bool))
    for row in out.column("ranked_ids").to_pylist():
        assert row == [str(p) for p in range(9, -1, -1)]  # equal scores: descending position, target "0" last
    assert "target last" in ranking_info(out)["tie_rule"]


def test_genecis_ranks_all_candidates_by_score():
    queries, ids, img = _genecis_case(np.random.default_rng(6))
    pos = {x: i for i, x in enumerate(ids)}
    cands = queries.column("candidate_ids").to_pylist()
    q = np.stack([img[pos[c[0]]] for c in cands])  # each query equals its target
    out = rank_queries("genecis", queries, q, ids, img, np.zeros(40, bool), k=3)
    for qi, (row, sc) in enumerate(zip(out.column("ranked_ids").to_pylist(), out.column("scores").to_pylist())):
        assert row[0] == "0" and sorted(row, key=int) == [str(p) for p in range(10)]
        expect = sorted((float(q[qi] @ img[pos[c]]) for c in cands[qi]), reverse=True)
        np.testing.assert_allclose(sc, expect, rtol=1e-5, atol=1e-6)


def test_absent_images_score_minus_inf_and_are_counted(cirr):
    queries, q, ids, img, in_gallery = cirr
    members = queries.column("members").to_pylist()
    refs = queries.column("reference_id").to_pylist()
    gone = next(m for m in members[0] if m != refs[0])  # a non-reference member of query 0 failed to embed
    keep = [i for i, x in enumerate(ids) if x not in (gone, refs[1])]  # and query 1's reference too
    out = rank_queries("cirr", queries, q, [ids[i] for i in keep], img[keep], in_gallery[keep], k=10)
    sub0 = out.column("subset_ids").to_pylist()[0]
    assert len(sub0) == 5 and sub0[-1] == gone
    assert all(gone not in r for r in out.column("ranked_ids").to_pylist())
    info = ranking_info(out)
    assert info["missing_images"] == 2 and gone in info["missing_examples"]

    gq, gids, gimg = _genecis_case(np.random.default_rng(9))
    target0 = gq.column("candidate_ids").to_pylist()[0][0]
    keep = [i for i, x in enumerate(gids) if x != target0]
    pos = {x: i for i, x in enumerate(gids)}
    qv = np.stack([gimg[pos[c[0]]] for c in gq.column("candidate_ids").to_pylist()])
    g_out = rank_queries("genecis", gq, qv, [gids[i] for i in keep], gimg[keep], np.zeros(len(keep), bool))
    first = g_out.column("ranked_ids").to_pylist()[0]
    assert first[-1] == "0" and g_out.column("scores").to_pylist()[0][-1] == float("-inf")


def test_faiss_flat_equals_exact(cirr):
    queries, q, ids, img, in_gallery = cirr
    exact = rank_queries("cirr", queries, q, ids, img, in_gallery, k=20)
    flat = rank_queries("cirr", queries, q, ids, img, in_gallery, k=20, index_cfg=IndexConfig(kind="flat"))
    assert flat.column("ranked_ids").to_pylist() == exact.column("ranked_ids").to_pylist()
    assert flat.column("subset_ids").to_pylist() == exact.column("subset_ids").to_pylist()
    assert ranking_info(flat)["search"] == {"kind": "flat", "approximate": False, "gpu": False}


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_return_k_results(kind):
    rng = np.random.default_rng(7)
    ids = [str(i) for i in range(2000)]
    img = _unit(rng, 2000, 32)
    queries = _queries([{"query_id": str(i), "reference_id": ids[i]} for i in range(25)])
    cfg = IndexConfig(kind=kind, nlist=16, nprobe=16, ef_search=64)
    out = rank_queries("circo", queries, _unit(rng, 25, 32), ids, img, np.ones(2000, bool), k=30, index_cfg=cfg)
    assert all(len(r) == 30 and len(set(r)) == 30 for r in out.column("ranked_ids").to_pylist())
    info = ranking_info(out)["search"]
    assert info["kind"] == kind and info["approximate"] is True
    if kind == "ivf":
        assert info["nlist"] == 16 and info["nprobe"] == 16  # nprobe = nlist: searches every list


def test_index_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(8)
    g, q = _unit(rng, 500, 32), _unit(rng, 10, 32)
    index = build_index(g, IndexConfig(kind="flat"))
    expect = search(index, q, 7)
    for path in (str(tmp_path / "flat.faiss"), "memory://cirflow-test/flat.faiss"):
        save_index(index, path)
        got = search(load_index(path), q, 7)
        np.testing.assert_array_equal(got[1], expect[1])
        np.testing.assert_array_equal(got[0], expect[0])
