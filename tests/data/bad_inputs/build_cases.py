"""Regenerate the bad-input corpus (issue 9): one folder per case under tests/data/bad_inputs/, plus cases.yaml.

    .venv/bin/python tests/data/bad_inputs/build_cases.py

Every case starts from valid records (the first few of the real annotation slices in tests/data/benchmarks, a
valid run config, valid predictions) and adds ONE defect, so the expected error names exactly that defect.
Placeholders in argv and in the case files are filled in by tests/test_bad_inputs.py:
  {case}   the case folder, copied to <tmp>/work/data (so '../../outside' lands in <tmp>/outside)
  {tmp}    the test's temporary folder (stores and --out folders go there)
  {slices} tests/data/benchmarks        {corpus} this folder (for _models/)
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SLICES = HERE.parent / "benchmarks"
CASES: list[dict] = []


def _load(rel: str):
    return json.loads((SLICES / rel).read_text())


def _bytes(data, pretty: bool) -> bytes:
    return (json.dumps(data, indent=4) if pretty else json.dumps(data)).encode()


def case(cid: str, argv: list[str], expect: list[str], files: dict[str, bytes | str], *, exit: int = 2,
         subprocess: bool = False, kind: str) -> None:
    folder = HERE / cid
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    entry = {"id": cid, "kind": kind, "argv": argv, "exit": exit, "expect": expect}
    if subprocess:
        entry["subprocess"] = True
    CASES.append(entry)


def _edit(records: list, i: int, fn) -> list:
    """A copy of `records` with fn applied to record i (the one defect of a case)."""
    out = copy.deepcopy(records)
    fn(out[i])
    return out


def _pair(cap: str, spl: str, caps: list, split, pretty: bool):
    """files(captions=None, split=None) -> the two files of a case; bytes are written as given."""
    def files(c=None, s=None) -> dict:
        return {cap: c if isinstance(c, bytes) else _bytes(caps if c is None else c, pretty),
                spl: s if isinstance(s, bytes) else _bytes(split if s is None else s, pretty)}
    return files


def non_utf8(data: bytes, needle: bytes) -> tuple[bytes, int]:
    """`data` with a Latin-1 byte 0xe9 put inside the first `needle`; returns (bytes, offset of that byte)."""
    at = data.index(needle) + 1
    return data[:at] + b"\xe9" + data[at:], at


# ------------------------------------------------------------------------------------------------ CIRR

def cirr_cases() -> None:
    caps = _load("cirr/captions/cap.rc2.val.json")[:2]
    split_all = _load("cirr/image_splits/split.rc2.val.json")
    used = {x for r in caps for x in [r["reference"], r["target_hard"], *r["img_set"]["members"]]}
    split = {k: v for k, v in split_all.items() if k in used}
    CAP, SPL = "captions/cap.rc2.val.json", "image_splits/split.rc2.val.json"
    ingest = ["ingest", "cirr", "--data-root", "{case}", "--out", "{tmp}/out", "--skip-image-check"]

    files = _pair(CAP, SPL, caps, split, pretty=False)

    def with_rec(i: int, fn) -> list:
        return _edit(caps, i, fn)

    case("cirr_missing_pairid", ingest, ["cap.rc2.val.json", "record 1", "'pairid'", "missing"],
         files(with_rec(1, lambda r: r.pop("pairid"))), kind="annotation")
    case("cirr_missing_reference", ingest, ["cap.rc2.val.json", "record 0", "'reference'", "missing"],
         files(with_rec(0, lambda r: r.pop("reference"))), kind="annotation")
    case("cirr_caption_not_string", ingest, ["cap.rc2.val.json", "record 1", "'caption'", "expected string"],
         files(with_rec(1, lambda r: r.update(caption=42))), kind="annotation")
    case("cirr_pairid_string", ingest, ["cap.rc2.val.json", "record 0", "'pairid'", "expected integer"],
         files(with_rec(0, lambda r: r.update(pairid=str(r["pairid"])))), kind="annotation")
    case("cirr_pairid_bool", ingest, ["cap.rc2.val.json", "record 0", "'pairid'", "boolean"],
         files(with_rec(0, lambda r: r.update(pairid=True))), kind="annotation")
    case("cirr_members_five", ingest, ["cap.rc2.val.json", "record 0", "img_set.members", "expected 6 entries"],
         files(with_rec(0, lambda r: r["img_set"]["members"].pop())), kind="annotation")
    case("cirr_members_not_strings", ingest, ["cap.rc2.val.json", "record 1", "img_set.members", "list of strings"],
         files(with_rec(1, lambda r: r["img_set"]["members"].__setitem__(5, 7))), kind="annotation")
    case("cirr_reference_not_member", ingest, ["cap.rc2.val.json", "record 0", "does not contain the reference"],
         files(with_rec(0, lambda r: r["img_set"]["members"].remove(r["reference"]) or
                        r["img_set"]["members"].append(r["target_hard"]))), kind="annotation")
    case("cirr_unknown_target_image", ingest, ["cap.rc2.val.json", "record 1", "'target_hard'", "dev-0-0-img9", "is not a key"],
         files(with_rec(1, lambda r: r.update(target_hard="dev-0-0-img9"))), kind="annotation")
    case("cirr_unknown_reference_image", ingest, ["cap.rc2.val.json", "record 0", "'reference'", "is not a key"],
         files(with_rec(0, lambda r: (r["img_set"]["members"].__setitem__(
             r["img_set"]["members"].index(r["reference"]), "dev-0-0-img9"), r.update(reference="dev-0-0-img9")))),
         kind="annotation")
    case("cirr_duplicate_pairid", ingest, ["cap.rc2.val.json", "record 1", "duplicate pairid"],
         files(with_rec(1, lambda r: r.update(pairid=caps[0]["pairid"]))), kind="annotation")
    case("cirr_missing_target_hard", ingest, ["cap.rc2.val.json", "record 0", "'target_hard'", "missing"],
         files(with_rec(0, lambda r: r.pop("target_hard"))), kind="annotation")
    case("cirr_missing_img_set", ingest, ["cap.rc2.val.json", "record 1", "'img_set'", "missing"],
         files(with_rec(1, lambda r: r.pop("img_set"))), kind="annotation")
    case("cirr_target_soft_list", ingest, ["cap.rc2.val.json", "record 0", "'target_soft'", "expected object"],
         files(with_rec(0, lambda r: r.update(target_soft=[]))), kind="annotation")
    case("cirr_record_not_object", ingest, ["cap.rc2.val.json", "record 1", "expected an object"],
         files(caps[:1] + ["not a record"]), kind="annotation")
    data, at = non_utf8(_bytes(caps, False), b'"caption": "')
    case("cirr_captions_not_utf8", ingest, ["cap.rc2.val.json", "not UTF-8", f"offset {at}"], files(data), kind="annotation",
         subprocess=True)
    data, at = non_utf8(_bytes(split, False), b"./dev/")
    case("cirr_split_not_utf8", ingest, ["split.rc2.val.json", "not UTF-8", f"offset {at}"], files(s=data), kind="annotation")
    case("cirr_captions_truncated_json", ingest, ["cap.rc2.val.json", "not valid JSON"],
         files(_bytes(caps, False)[:-40]), kind="annotation")
    case("cirr_captions_object", ingest, ["cap.rc2.val.json", "expected a JSON array at top level"],
         files({"queries": caps}), kind="annotation")
    case("cirr_split_list", ingest, ["split.rc2.val.json", "expected a JSON object at top level"],
         files(s=list(split)), kind="annotation")
    first = next(iter(split))
    case("cirr_split_path_escape", ingest[:-1], ["split.rc2.val.json", repr(first), "leaves the image root"],
         files(s=dict(split, **{first: "./dev/../../../outside/secret.png"})), kind="annotation")
    case("cirr_split_path_escape_skip_check", ingest, ["split.rc2.val.json", "../outside.png", "leaves the image root"],
         files(s=dict(split, **{first: "../outside.png"})), kind="annotation")
    case("cirr_split_path_not_string", ingest, ["split.rc2.val.json", repr(first), "relative path string"],
         files(s=dict(split, **{first: 12})), kind="annotation")
    case("cirr_empty_captions", ingest, ["cap.rc2.val.json", "no queries"], files([]), kind="annotation", subprocess=True)
    case("cirr_captions_missing_file", ingest, ["cap.rc2.val.json", "annotation file not found"],
         {SPL: _bytes(split, False)}, kind="annotation")
    case("cirr_unknown_split", ingest + ["--split", "dev"], ["cirr", "unknown split 'dev'"], files(), kind="annotation")
    case("cirr_images_missing", ingest[:-1], ["images are missing", "dev-"], files(), kind="annotation")
    case("cirr_captions_folder", ingest, ["cap.rc2.val.json", "cannot read annotation file"],
         {CAP + "/keep": b"", SPL: _bytes(split, False)}, kind="annotation")


# ------------------------------------------------------------------------------------------------ CIRCO

def circo_cases() -> None:
    recs = _load("circo/annotations/val.json")[:3]
    ANN = "annotations/val.json"
    ingest = ["ingest", "circo", "--data-root", "{case}", "--out", "{tmp}/out", "--skip-image-check"]

    def with_rec(i: int, fn) -> dict:
        return {ANN: _bytes(_edit(recs, i, fn), True)}

    case("circo_missing_id", ingest, ["val.json", "record 2", "'id'", "missing"], with_rec(2, lambda r: r.pop("id")), kind="annotation")
    case("circo_reference_string", ingest, ["val.json", "record 0", "'reference_img_id'", "expected integer"],
         with_rec(0, lambda r: r.update(reference_img_id="../../x")), kind="annotation")
    case("circo_gt_first_not_target", ingest, ["val.json", "record 1", "'gt_img_ids'", "first entry must be target_img_id"],
         with_rec(1, lambda r: r.update(gt_img_ids=[1, *r["gt_img_ids"]])), kind="annotation")
    case("circo_gt_string", ingest, ["val.json", "record 1", "'gt_img_ids'", "expected integer COCO ids"],
         with_rec(1, lambda r: r["gt_img_ids"].append("../x")), kind="annotation")
    case("circo_duplicate_id", ingest, ["val.json", "record 2", "duplicate id"], with_rec(2, lambda r: r.update(id=0)), kind="annotation")
    case("circo_aspects_not_strings", ingest, ["val.json", "record 0", "'semantic_aspects'", "list of strings"],
         with_rec(0, lambda r: r.update(semantic_aspects=[1])), kind="annotation")
    case("circo_missing_caption", ingest, ["val.json", "record 1", "'relative_caption'", "missing"],
         with_rec(1, lambda r: r.pop("relative_caption")), kind="annotation")
    case("circo_target_float", ingest, ["val.json", "record 0", "'target_img_id'", "expected integer"],
         with_rec(0, lambda r: r.update(target_img_id=1.5)), kind="annotation")
    case("circo_gt_not_list", ingest, ["val.json", "record 2", "'gt_img_ids'", "expected array"],
         with_rec(2, lambda r: r.update(gt_img_ids=r["target_img_id"])), kind="annotation")
    data, at = non_utf8(_bytes(recs, True), b'"relative_caption": "')
    case("circo_not_utf8", ingest, ["val.json", "not UTF-8", f"offset {at}"], {ANN: data}, kind="annotation", subprocess=True)
    case("circo_empty", ingest, ["val.json", "no queries"], {ANN: b"[]"}, kind="annotation")
    case("circo_object", ingest, ["val.json", "expected a JSON array"], {ANN: _bytes({"0": recs[0]}, True)}, kind="annotation")
    case("circo_truncated", ingest, ["val.json", "not valid JSON"], {ANN: _bytes(recs, True)[:100]}, kind="annotation")
    case("circo_missing_file", ingest + ["--split", "test"], ["test.json", "annotation file not found"], {ANN: _bytes(recs, True)},
         kind="annotation")
    case("circo_utf16", ingest, ["val.json", "not UTF-8", "offset 0"], {ANN: json.dumps(recs).encode("utf-16")}, kind="annotation")
    case("circo_images_missing", ingest[:-1], ["images are missing", "unlabeled2017"], {ANN: _bytes(recs, True)}, kind="annotation")


# ------------------------------------------------------------------------------------------------ Fashion-IQ

def fashioniq_cases() -> None:
    caps = _load("fashioniq/captions/cap.dress.val.json")[:3]
    used = [x for r in caps for x in (r["target"], r["candidate"])]
    split = list(dict.fromkeys(used))
    CAP, SPL = "captions/cap.dress.val.json", "image_splits/split.dress.val.json"
    ingest = ["ingest", "fashioniq", "--category", "dress", "--data-root", "{case}", "--out", "{tmp}/out", "--skip-image-check"]

    files = _pair(CAP, SPL, caps, split, pretty=True)

    def with_rec(i: int, fn) -> dict:
        return files(_edit(caps, i, fn))

    case("fiq_missing_candidate", ingest, ["cap.dress.val.json", "record 1", "'candidate'", "missing"],
         with_rec(1, lambda r: r.pop("candidate")), kind="annotation")
    case("fiq_one_caption", ingest, ["cap.dress.val.json", "record 0", "'captions'", "expected 2 entries"],
         with_rec(0, lambda r: r["captions"].pop()), kind="annotation")
    case("fiq_captions_string", ingest, ["cap.dress.val.json", "record 2", "'captions'", "expected array"],
         with_rec(2, lambda r: r.update(captions="is red")), kind="annotation")
    case("fiq_caption_not_string", ingest, ["cap.dress.val.json", "record 2", "'captions'", "list of strings"],
         with_rec(2, lambda r: r.update(captions=["is red", None])), kind="annotation")
    case("fiq_unknown_target", ingest, ["cap.dress.val.json", "record 1", "'target'", "B000000000", "is not listed"],
         with_rec(1, lambda r: r.update(target="B000000000")), kind="annotation")
    case("fiq_target_int", ingest, ["cap.dress.val.json", "record 0", "'target'", "expected string"],
         with_rec(0, lambda r: r.update(target=12)), kind="annotation")
    case("fiq_missing_target", ingest, ["cap.dress.val.json", "record 2", "'target'", "missing"],
         with_rec(2, lambda r: r.pop("target")), kind="annotation")
    case("fiq_duplicate_asin", ingest, ["split.dress.val.json", f"record {len(split)}", "duplicate ASIN"],
         files(s=split + [split[0]]), kind="annotation")
    case("fiq_asin_escape", ingest, ["split.dress.val.json", f"record {len(split)}", "leaves the image folder"],
         files(s=split + ["../../../outside/secret"]), kind="annotation", subprocess=True)
    case("fiq_asin_escape_used", ingest, ["split.dress.val.json", "record 0", "leaves the image folder"],
         files([dict(caps[0], candidate="../x")] + caps[1:], ["../x", *split]), kind="annotation")
    case("fiq_asin_int", ingest, ["split.dress.val.json", "record 1", "expected an ASIN string"],
         files(s=[split[0], 7, *split[1:]]), kind="annotation")
    data, at = non_utf8(_bytes(caps, True), b'"captions": [\n            "')
    case("fiq_captions_not_utf8", ingest, ["cap.dress.val.json", "not UTF-8", f"offset {at}"], files(data), kind="annotation")
    data, at = non_utf8(_bytes(split, True), b'"B')
    case("fiq_split_not_utf8", ingest, ["split.dress.val.json", "not UTF-8", f"offset {at}"], files(s=data), kind="annotation")
    case("fiq_empty_captions", ingest, ["cap.dress.val.json", "no queries"], files([]), kind="annotation")
    case("fiq_split_object", ingest, ["split.dress.val.json", "expected a JSON array"], files(s={"a": split}), kind="annotation")
    case("fiq_unknown_category", ["ingest", "fashioniq", "--category", "all", "--data-root", "{case}", "--out", "{tmp}/out"],
         ["fashioniq", "unknown category 'all'"], files(), kind="annotation")
    case("fiq_no_category", ["ingest", "fashioniq", "--data-root", "{case}", "--out", "{tmp}/out"],
         ["fashioniq", "category is required"], files(), kind="annotation")
    case("fiq_truncated", ingest, ["cap.dress.val.json", "not valid JSON"], files(_bytes(caps, True)[:-3]), kind="annotation")
    case("fiq_images_missing", ingest[:-1], ["images are missing", "images/"], files(), kind="annotation")


# ------------------------------------------------------------------------------------------------ GeneCIS

def genecis_cases() -> None:
    attr = _load("genecis/genecis/focus_attribute.json")[:2]
    obj = _load("genecis/genecis/focus_object.json")[:2]
    FA, FO = "genecis/focus_attribute.json", "genecis/focus_object.json"
    ia = ["ingest", "genecis", "--task", "focus_attribute", "--data-root", "{case}", "--out", "{tmp}/out", "--skip-image-check"]
    io = ["ingest", "genecis", "--task", "focus_object", "--data-root", "{case}", "--out", "{tmp}/out", "--skip-image-check"]

    def dump(x) -> bytes:
        return json.dumps(x, indent=4, sort_keys=True).encode()

    def a(i: int, fn) -> dict:
        return {FA: dump(_edit(attr, i, fn))}

    def o(i: int, fn) -> dict:
        return {FO: dump(_edit(obj, i, fn))}

    case("genecis_image_id_escape", ia[:-1], ["focus_attribute.json", "record 1", "reference.image_id", "leaves the image folder"],
         a(1, lambda r: r["reference"].update(image_id="../../../outside/secret")), kind="annotation", subprocess=True)
    case("genecis_gallery_image_id_escape", ia, ["focus_attribute.json", "record 0", "gallery[2].image_id", "leaves the image folder"],
         a(0, lambda r: r["gallery"][2].update(image_id="../../etc/passwd")), kind="annotation")
    case("genecis_missing_condition", ia, ["focus_attribute.json", "record 1", "'condition'", "missing"],
         a(1, lambda r: r.pop("condition")), kind="annotation")
    case("genecis_bbox_three", ia, ["focus_attribute.json", "record 0", "target.instance_bbox", "[x, y, w, h]"],
         a(0, lambda r: r["target"]["instance_bbox"].pop()), kind="annotation")
    case("genecis_bbox_string", ia, ["focus_attribute.json", "record 0", "reference.instance_bbox", "[x, y, w, h]"],
         a(0, lambda r: r["reference"]["instance_bbox"].__setitem__(0, "10")), kind="annotation")
    case("genecis_image_id_int", ia, ["focus_attribute.json", "record 1", "target.image_id", "expected string"],
         a(1, lambda r: r["target"].update(image_id=5)), kind="annotation")
    case("genecis_gallery_not_list", ia, ["focus_attribute.json", "record 0", "'gallery'", "expected array"],
         a(0, lambda r: r.update(gallery=r["target"])), kind="annotation")
    case("genecis_reference_not_object", ia, ["focus_attribute.json", "record 1", "'reference'", "expected object"],
         a(1, lambda r: r.update(reference="2345")), kind="annotation")
    case("genecis_missing_target", ia, ["focus_attribute.json", "record 0", "'target'", "missing"],
         a(0, lambda r: r.pop("target")), kind="annotation")
    case("genecis_val_image_id_string", io, ["focus_object.json", "record 1", "reference.val_image_id", "expected integer"],
         o(1, lambda r: r["reference"].update(val_image_id="../../x")), kind="annotation")
    case("genecis_object_missing_id", io, ["focus_object.json", "record 0", "gallery[0].val_image_id", "missing"],
         o(0, lambda r: r["gallery"][0].pop("val_image_id")), kind="annotation")
    data, at = non_utf8(dump(attr), b'"condition": "')
    case("genecis_not_utf8", ia, ["focus_attribute.json", "not UTF-8", f"offset {at}"], {FA: data}, kind="annotation")
    case("genecis_empty", ia, ["focus_attribute.json", "no queries"], {FA: b"[]"}, kind="annotation")
    case("genecis_object_top", io, ["focus_object.json", "expected a JSON array"], {FO: dump({"samples": obj})}, kind="annotation")
    case("genecis_truncated", io, ["focus_object.json", "not valid JSON"], {FO: dump(obj)[:50]}, kind="annotation")
    case("genecis_unknown_task", ["ingest", "genecis", "--task", "focus_scene", "--data-root", "{case}", "--out", "{tmp}/out"],
         ["genecis", "unknown task 'focus_scene'"], {FO: dump(obj)}, kind="annotation")
    case("genecis_images_missing", io[:-1], ["images are missing", "val2017"], {FO: dump(obj)}, kind="annotation")


# ------------------------------------------------------------------------------------------------ predictions

def prediction_cases() -> None:
    cirr_caps = _load("cirr/captions/cap.rc2.val.json")
    cirr_gallery = list(_load("cirr/image_splits/split.rc2.val.json"))
    circo = _load("circo/annotations/val.json")
    fiq = _load("fashioniq/captions/cap.dress.val.json")
    fiq_gallery = _load("fashioniq/image_splits/split.dress.val.json")
    gen = _load("genecis/genecis/focus_object.json")

    def cirr_recall() -> dict:
        out = {"version": "rc2", "metric": "recall"}
        for r in cirr_caps:
            out[str(r["pairid"])] = [g for g in cirr_gallery if g != r["reference"]][:50]
        return out

    def cirr_subset() -> dict:
        out = {"version": "rc2", "metric": "recall_subset"}
        for r in cirr_caps:
            out[str(r["pairid"])] = [m for m in r["img_set"]["members"] if m != r["reference"]][:3]
        return out

    circo_ok = {str(r["id"]): list(range(1, 51)) for r in circo}
    fiq_ok = {str(i): fiq_gallery[:50] for i in range(len(fiq))}
    gen_ok = {str(i): list(range(len(r["gallery"]) + 1)) for i, r in enumerate(gen)}
    ev_cirr = ["evaluate", "cirr", "--data-root", "{slices}/cirr", "--predictions", "{case}/recall.json"]
    ev_circo = ["evaluate", "circo", "--data-root", "{slices}/circo", "--predictions", "{case}/circo.json"]
    ev_fiq = ["evaluate", "fashioniq", "--category", "dress", "--data-root", "{slices}/fashioniq", "--predictions", "{case}/dress.json"]
    ev_gen = ["evaluate", "genecis", "--task", "focus_object", "--data-root", "{slices}/genecis", "--predictions", "{case}/focus_object.json"]

    def dup_key(d: dict, key: str) -> bytes:
        """JSON text with `key` written twice (the second list differs): json.load would keep the last."""
        text = json.dumps(d)
        extra = json.dumps({key: list(reversed(d[key]))})[1:-1]
        return (text[:-1] + ", " + extra + "}").encode()

    q0 = str(cirr_caps[0]["pairid"])
    r = cirr_recall()
    case("pred_cirr_duplicate_key", ev_cirr, ["recall.json", f"key '{q0}' appears more than once"], {"recall.json": dup_key(r, q0)},
         kind="predictions", subprocess=True)
    case("pred_cirr_no_version", ev_cirr, ["recall.json", '"version" must be "rc2"'],
         {"recall.json": json.dumps({k: v for k, v in r.items() if k != "version"})}, kind="predictions")
    case("pred_cirr_wrong_metric", ev_cirr, ["recall.json", '"metric" must be "recall"'],
         {"recall.json": json.dumps(dict(r, metric="recall_subset"))}, kind="predictions")
    case("pred_cirr_49_entries", ev_cirr, ["recall.json", f"query {q0}: 49 entries, expected 50"],
         {"recall.json": json.dumps(dict(r, **{q0: r[q0][:49]}))}, kind="predictions")
    case("pred_cirr_unknown_ids", ev_cirr, ["recall.json", f"query {q0}", "not in the gallery", "dev-0-0-img9"],
         {"recall.json": json.dumps(dict(r, **{q0: r[q0][:49] + ["dev-0-0-img9"]}))}, kind="predictions")
    case("pred_cirr_missing_query", ev_cirr, ["recall.json", "missing 1 of", q0],
         {"recall.json": json.dumps({k: v for k, v in r.items() if k != q0})}, kind="predictions")
    case("pred_cirr_extra_key", ev_cirr, ["recall.json", "not query ids", "99999999"],
         {"recall.json": json.dumps(dict(r, **{"99999999": r[q0]}))}, kind="predictions")
    case("pred_cirr_contains_reference", ev_cirr, ["recall.json", f"query {q0}", "contains the reference image"],
         {"recall.json": json.dumps(dict(r, **{q0: [cirr_caps[0]["reference"], *r[q0][:49]]}))}, kind="predictions")
    case("pred_cirr_duplicate_entries", ev_cirr, ["recall.json", f"query {q0}", "duplicate entries"],
         {"recall.json": json.dumps(dict(r, **{q0: r[q0][:49] + r[q0][:1]}))}, kind="predictions")
    case("pred_cirr_list_not_list", ev_cirr, ["recall.json", f"query {q0}", "expected a list"],
         {"recall.json": json.dumps(dict(r, **{q0: "dev-1-1-img0"}))}, kind="predictions")
    data, at = non_utf8(json.dumps(r).encode(), b'"dev-')
    case("pred_cirr_not_utf8", ev_cirr, ["recall.json", "not valid JSON"], {"recall.json": data}, kind="predictions")
    case("pred_cirr_truncated", ev_cirr, ["recall.json", "not valid JSON"], {"recall.json": json.dumps(r)[:-10]}, kind="predictions")
    case("pred_cirr_top_list", ev_cirr, ["recall.json", "expected a JSON object"], {"recall.json": json.dumps([r])}, kind="predictions")
    case("pred_cirr_missing_file", ev_cirr, ["recall.json", "file not found"], {"README": "no predictions here\n"}, kind="predictions")
    s = cirr_subset()
    ev_sub = ev_cirr + ["--subset-predictions", "{case}/recall_subset.json"]
    case("pred_cirr_subset_two", ev_sub, ["recall_subset file", f"query {q0}: 2 entries, expected 3"],
         {"recall.json": json.dumps(r), "recall_subset.json": json.dumps(dict(s, **{q0: s[q0][:2]}))}, kind="predictions")
    case("pred_cirr_subset_non_member", ev_sub, ["recall_subset file", f"query {q0}", "not img_set members"],
         {"recall.json": json.dumps(r), "recall_subset.json": json.dumps(dict(s, **{q0: s[q0][:2] + ["dev-0-0-img9"]}))},
         kind="predictions")
    case("pred_cirr_subset_duplicate_key", ev_sub, ["recall_subset.json", f"key '{q0}' appears more than once"],
         {"recall.json": json.dumps(r), "recall_subset.json": dup_key(s, q0)}, kind="predictions")
    case("pred_subset_for_circo", ev_circo + ["--subset-predictions", "{case}/circo.json"],
         ["--subset-predictions is only for cirr"], {"circo.json": json.dumps(circo_ok)}, kind="predictions")
    case("pred_circo_duplicate_key", ev_circo, ["circo.json", "key '0' appears more than once"],
         {"circo.json": dup_key(circo_ok, "0")}, kind="predictions")
    case("pred_circo_wrong_count", ev_circo, ["circo.json", "query 1: 51 entries, expected 50"],
         {"circo.json": json.dumps(dict(circo_ok, **{"1": list(range(1, 52))}))}, kind="predictions")
    case("pred_circo_wrong_type", ev_circo, ["circo.json", "query 2", "entries of the wrong type"],
         {"circo.json": json.dumps(dict(circo_ok, **{"2": [1.5] + list(range(2, 51))}))}, kind="predictions")
    case("pred_circo_duplicate_entries", ev_circo, ["circo.json", "query 0", "duplicate entries"],
         {"circo.json": json.dumps(dict(circo_ok, **{"0": [1] * 50}))}, kind="predictions")
    case("pred_circo_missing_queries", ev_circo, ["circo.json", "missing 2 of"],
         {"circo.json": json.dumps({k: v for k, v in circo_ok.items() if k not in ("3", "4")})}, kind="predictions")
    case("pred_fiq_too_short", ev_fiq, ["dress.json", "query 0: 49 entries, expected at least 50"],
         {"dress.json": json.dumps(dict(fiq_ok, **{"0": fiq_gallery[:49]}))}, kind="predictions")
    case("pred_fiq_unknown_asin", ev_fiq, ["dress.json", "query 3", "not in the gallery", "B000000000"],
         {"dress.json": json.dumps(dict(fiq_ok, **{"3": fiq_gallery[:49] + ["B000000000"]}))}, kind="predictions")
    case("pred_fiq_duplicate_key", ev_fiq, ["dress.json", "key '2' appears more than once"],
         {"dress.json": dup_key(fiq_ok, "2")}, kind="predictions")
    case("pred_genecis_out_of_range", ev_gen, ["focus_object.json", "query 1", "positions outside"],
         {"focus_object.json": json.dumps(dict(gen_ok, **{"1": [0, 1, 99]}))}, kind="predictions")
    case("pred_genecis_wrong_type", ev_gen, ["focus_object.json", "query 0", "entries of the wrong type"],
         {"focus_object.json": json.dumps(dict(gen_ok, **{"0": ["first", "second", "third"]}))}, kind="predictions")
    case("pred_genecis_duplicate_key", ev_gen, ["focus_object.json", "key '1' appears more than once"],
         {"focus_object.json": dup_key(gen_ok, "1")}, kind="predictions")
    case("pred_genecis_too_short", ev_gen, ["focus_object.json", "query 2: 2 entries, expected at least 3"],
         {"focus_object.json": json.dumps(dict(gen_ok, **{"2": [0, 1]}))}, kind="predictions")


# ------------------------------------------------------------------------------------------------ configs

BASE = {
    "name": "bad-input",
    "store": "{tmp}/store",
    "output_dir": "{tmp}/runs",
    "benchmark": {"name": "cirr", "data_root": "{slices}/cirr", "split": "val", "check_images": False},
    "mllm": {"backend": "transformers", "model": "{corpus}/_models/mllm", "device": "cpu"},
    "encoder": {"model": "local-dir:{corpus}/_models/clip", "device": "cpu", "num_workers": 0},
}


def _set(cfg: dict, dotted: str, value) -> dict:
    cfg = copy.deepcopy(cfg)
    *head, last = dotted.split(".")
    node = cfg
    for h in head:
        node = node.setdefault(h, {})
    if value is _DELETE:
        node.pop(last)
    else:
        node[last] = value
    return cfg


_DELETE = object()


def config_cases() -> None:
    run = ["run", "{case}/config.yaml"]

    def cfg(**changes) -> dict:
        out = BASE
        for dotted, value in changes.items():
            out = _set(out, dotted.replace("__", "."), value)
        return {"config.yaml": yaml.safe_dump(out, sort_keys=False)}

    def field(cid: str, dotted: str, value, expect: list[str], method: str | None = None, **kw) -> None:
        changes = {dotted.replace(".", "__"): value} | ({"method": method} if method else {})
        case(cid, run, ["config.yaml", *expect], cfg(**changes), kind="config", **kw)

    field("cfg_embed_shard_size_zero", "embed.shard_size", 0, ["'embed.shard_size'", "greater than or equal to 1"])
    field("cfg_compose_shard_size_negative", "compose.shard_size", -5, ["'compose.shard_size'", "greater than or equal to 1"])
    field("cfg_caption_shard_size_zero", "caption.shard_size", 0, ["'caption.shard_size'", "greater than or equal to 1"])
    field("cfg_rewrite_shard_size_zero", "rewrite.shard_size", 0, ["rewrite.shard_size'", "greater than or equal to 1"],
          method="cirevl")
    field("cfg_reference_caption_shard_size_zero", "reference_caption.shard_size", 0,
          ["reference_caption.shard_size'", "greater than or equal to 1"], method="cirevl")
    field("cfg_retrieve_k_zero", "retrieve.k", 0, ["'retrieve.k'", "greater than or equal to 1"], subprocess=True)
    field("cfg_retrieve_k_negative", "retrieve.k", -1, ["'retrieve.k'", "greater than or equal to 1"])
    field("cfg_nprobe_zero", "retrieve.index.nprobe", 0, ["'retrieve.index.nprobe'", "greater than or equal to 1"])
    field("cfg_nlist_zero", "retrieve.index.nlist", 0, ["'retrieve.index.nlist'", "greater than or equal to 1"])
    field("cfg_encoder_batch_size_zero", "encoder.batch_size", 0, ["'encoder.batch_size'", "greater than or equal to 1"])
    field("cfg_encoder_workers_negative", "encoder.num_workers", -1, ["'encoder.num_workers'", "greater than or equal to 0"])
    field("cfg_mllm_batch_size_zero", "mllm.batch_size", 0, ["'mllm.batch_size'", "greater than or equal to 1"])
    field("cfg_mllm_concurrency_zero", "mllm.concurrency", 0, ["'mllm.concurrency'", "greater than or equal to 1"])
    field("cfg_executor_workers_zero", "executor.workers", 0, ["'executor.workers'", "greater than or equal to 1"])
    field("cfg_ldre_n_captions_zero", "ldre.n_captions", 0, ["ldre.n_captions'", "greater than or equal to 1"], method="ldre")
    field("cfg_ldre_k_zero", "ldre.k", 0, ["ldre.k'", "greater than or equal to 1"], method="ldre")
    field("cfg_sampling_temperature_negative", "compose.sampling.temperature", -1.0,
          ["'compose.sampling.temperature'", "greater than or equal to 0"])
    field("cfg_max_tokens_zero", "caption.sampling.max_tokens", 0, ["'caption.sampling.max_tokens'"])
    field("cfg_k_string", "retrieve.k", "fifty", ["'retrieve.k'", "valid integer"])
    field("cfg_name_escape", "name", "../../x", ["'name'", "plain name"], subprocess=True)
    field("cfg_name_slash", "name", "runs/a", ["'name'", "plain name"])
    field("cfg_name_dotdot", "name", "..", ["'name'", "not a usable folder name"])
    field("cfg_name_empty", "name", "", ["'name'", "must not be empty"])
    field("cfg_name_backslash", "name", "..\\x", ["'name'", "plain name"])
    field("cfg_unknown_top_key", "shard_size", 4, ["'shard_size'", "Extra inputs are not permitted"])
    field("cfg_unknown_nested_key", "compose.shard_sizes", 4, ["'compose.shard_sizes'", "Extra inputs are not permitted"])
    field("cfg_unknown_benchmark", "benchmark.name", "cirrr", ["'benchmark.name'"])
    field("cfg_unknown_method", "method", "pefuse2", ["pefuse2"])
    field("cfg_unknown_mode", "mode", "t2x", ["'mode'"])
    field("cfg_i2i_without_diffusion", "mode", "i2i", ["mode i2i generates query images"])
    field("cfg_http_without_server", "mllm", {"backend": "http", "model": "qwen"},
          ["'mllm'", "needs base_url", "server_command"], subprocess=True)
    field("cfg_llm_http_without_server", "llm", {"backend": "http", "model": "qwen"}, ["'llm'", "needs base_url"])
    field("cfg_secret_in_storage_options", "storage_options", {"secret": "x"}, ["storage_options.secret", "environment"])
    field("cfg_missing_encoder", "encoder", _DELETE, ["'encoder'", "Field required"])
    field("cfg_missing_benchmark_root", "benchmark.data_root", _DELETE, ["'benchmark.data_root'", "Field required"])
    field("cfg_encoder_local_dir_missing", "encoder.model", "local-dir:{case}/no-such-clip",
          ["encoder.model", "no-such-clip", "not found"], subprocess=True)
    field("cfg_encoder_local_dir_no_config", "encoder.model", "local-dir:{corpus}/_models/mllm",
          ["encoder.model", "no open_clip_config.json"])
    field("cfg_encoder_checkpoint_missing", "encoder.pretrained", "{case}/weights.safetensors",
          ["encoder.pretrained", "weights.safetensors", "not found"])
    field("cfg_encoder_tokenizer_missing", "encoder.tokenizer", "{case}/tok", ["encoder.tokenizer", "not found"])
    field("cfg_mllm_folder_missing", "mllm.model", "{case}/no-such-qwen", ["mllm.model", "no-such-qwen", "not found"])
    field("cfg_mllm_folder_no_config", "mllm.model", "{corpus}/_models/clip", ["mllm.model", "no config.json"])
    field("cfg_mllm_hub_id_offline", "mllm.model", "no-such-org/no-such-model",
          ["mllm.model", "no-such-org/no-such-model", "HF_HUB_OFFLINE"])
    field("cfg_llm_folder_missing", "llm", {"backend": "transformers", "model": "./no-such-llm"}, ["llm.model", "not found"])
    case("cfg_store_is_file", run, ["config.yaml", "store", "is a file, not a folder"],
         {**cfg(store="{case}/store.txt"), "store.txt": "a file where the store should be\n"}, kind="config", subprocess=True)
    case("cfg_output_dir_is_file", run, ["config.yaml", "output_dir", "is a file, not a folder"],
         {**cfg(output_dir="{case}/runs.txt"), "runs.txt": "a file where the run folders should be\n"}, kind="config")
    case("cfg_output_dir_under_file", run, ["config.yaml", "output_dir", "cannot be created", "runs.txt"],
         {**cfg(output_dir="{case}/runs.txt/deeper"), "runs.txt": "a file\n"}, kind="config")
    case("cfg_store_and_output_dir_files", run, ["config.yaml", "store", "(and 1 more", "output_dir"],
         {**cfg(store="{case}/a.txt", output_dir="{case}/a.txt"), "a.txt": "x\n"}, kind="config")
    case("cfg_benchmark_root_escape", run, ["split.rc2.val.json", "leaves the image root"],
         {**cfg(**{"benchmark__data_root": "{case}/cirr"}),
          "cirr/captions/cap.rc2.val.json": (SLICES / "cirr/captions/cap.rc2.val.json").read_bytes(),
          "cirr/image_splits/split.rc2.val.json": _escaping_split()}, kind="config")
    case("cfg_benchmark_empty", run, ["cap.rc2.val.json", "no queries"],
         {**cfg(**{"benchmark__data_root": "{case}/cirr"}), "cirr/captions/cap.rc2.val.json": b"[]",
          "cirr/image_splits/split.rc2.val.json": (SLICES / "cirr/image_splits/split.rc2.val.json").read_bytes()}, kind="config")
    case("cfg_benchmark_missing_root", run, ["cap.rc2.val.json", "annotation file not found"],
         cfg(**{"benchmark__data_root": "{case}/nowhere"}), kind="config")
    case("cfg_prompt_missing", run, ["no-such-prompt.txt"], cfg(**{"compose__prompt": "{case}/no-such-prompt.txt"}), kind="config")
    text = yaml.safe_dump(BASE, sort_keys=False).encode()
    data, at = non_utf8(text, b"name: bad")
    case("cfg_not_utf8", run, ["config.yaml", "not UTF-8", f"offset {at}"], {"config.yaml": data}, kind="config", subprocess=True)
    case("cfg_utf16", run, ["config.yaml", "not UTF-8", "offset 0"], {"config.yaml": text.decode().encode("utf-16")}, kind="config")
    case("cfg_not_yaml", run, ["config.yaml", "not valid YAML"], {"config.yaml": "name: [unclosed\n"}, kind="config")
    case("cfg_top_level_list", run, ["config.yaml", "expected a mapping"], {"config.yaml": "- name: x\n"}, kind="config")
    case("cfg_missing_file", ["run", "{case}/nope.yaml"], ["nope.yaml", "config file not found"], {"README": "empty\n"}, kind="config")
    case("cfg_is_folder", ["run", "{case}/conf"], ["conf", "is a folder"], {"conf/keep": ""}, kind="config")
    # other commands reading configs
    compare = {"name": "cmp", "base": BASE, "modes": ["t2i"]}
    case("cmp_name_escape", ["compare", "{case}/compare.yaml"], ["compare.yaml", "'name'", "plain name"],
         {"compare.yaml": yaml.safe_dump(dict(compare, name="../../cmp"), sort_keys=False)}, kind="config")
    case("cmp_base_k_zero", ["compare", "{case}/compare.yaml"], ["compare.yaml", "'base.retrieve.k'"],
         {"compare.yaml": yaml.safe_dump(dict(compare, base=_set(BASE, "retrieve.k", 0)), sort_keys=False)}, kind="config")
    case("cmp_fusion_name_escape", ["compare", "{case}/compare.yaml"], ["compare.yaml", "'fusions.0.name'", "plain name"],
         {"compare.yaml": yaml.safe_dump(dict(compare, fusions=[{"name": "../f", "terms": {"t2i": 1.0}}]), sort_keys=False)},
         kind="config")
    case("cmp_not_utf8", ["compare", "{case}/compare.yaml"], ["compare.yaml", "not UTF-8"],
         {"compare.yaml": non_utf8(yaml.safe_dump(compare, sort_keys=False).encode(), b"name: cmp")[0]}, kind="config")
    refine = {"method": "refine", "name": "ref", "store": "{tmp}/store", "output_dir": "{tmp}/runs",
              "benchmark": BASE["benchmark"], "mllm": BASE["mllm"], "encoder": BASE["encoder"]}
    case("refine_embed_shard_size_zero", run, ["config.yaml", "'embed_shard_size'", "greater than or equal to 1"],
         {"config.yaml": yaml.safe_dump(dict(refine, embed_shard_size=0), sort_keys=False)}, kind="config")
    case("refine_name_escape", run, ["config.yaml", "'name'", "plain name"],
         {"config.yaml": yaml.safe_dump(dict(refine, name="../../r"), sort_keys=False)}, kind="config")
    case("refine_store_is_file", run, ["config.yaml", "store", "is a file"],
         {"config.yaml": yaml.safe_dump(dict(refine, store="{case}/s.txt"), sort_keys=False), "s.txt": "x\n"}, kind="config")
    build = {"method": "build_mvft", "name": "b", "store": "{tmp}/store", "collection": {"kind": "list", "uri": "{case}/list.txt"},
             "mllm": {"backend": "http", "model": "m", "base_url": "http://127.0.0.1:9/v1"}}
    case("build_name_escape", ["build", "mvft", "{case}/build.yaml"], ["build.yaml", "'name'", "plain name"],
         {"build.yaml": yaml.safe_dump(dict(build, name="../b"), sort_keys=False)}, kind="config")
    case("build_shard_size_zero", ["build", "mvft", "{case}/build.yaml"], ["build.yaml", "'check_shard_size'"],
         {"build.yaml": yaml.safe_dump(dict(build, check_shard_size=0), sort_keys=False)}, kind="config")
    case("build_http_without_server", ["build", "mvft", "{case}/build.yaml"], ["build.yaml", "'mllm'", "needs base_url"],
         {"build.yaml": yaml.safe_dump(dict(build, mllm={"backend": "http", "model": "m"}), sort_keys=False)}, kind="config")
    case("build_release_name_escape", ["build", "mvft", "{case}/build.yaml"], ["build.yaml", "'release.name'", "plain name"],
         {"build.yaml": yaml.safe_dump(dict(build, release={"out_dir": "{tmp}/rel", "name": "../../rel"}), sort_keys=False)},
         kind="config")


def _escaping_split() -> bytes:
    split = _load("cirr/image_splits/split.rc2.val.json")
    first = next(iter(split))
    split[first] = "./dev/../../../outside/secret.png"
    return json.dumps(split).encode()


def main() -> None:
    for p in HERE.iterdir():
        if p.is_dir() and not p.name.startswith("_"):
            shutil.rmtree(p)
    cirr_cases()
    circo_cases()
    fashioniq_cases()
    genecis_cases()
    prediction_cases()
    config_cases()
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    header = ("# The bad-input corpus (issue 9), written by build_cases.py: one folder per case, one defect each.\n"
              "# argv runs `cirflow <argv>`; the one-line error must contain every `expect` substring; exit is the\n"
              "# exit code. subprocess: true runs it through `python -m cirflow.cli.main` instead of in-process.\n")
    (HERE / "cases.yaml").write_text(header + yaml.safe_dump({"cases": CASES}, sort_keys=False, width=200))
    print(f"{len(CASES)} cases")


if __name__ == "__main__":
    main()
