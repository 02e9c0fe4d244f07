"""Layout schema: parsing and validation of LLM answers (valid, malformed, partially valid, empty, bad boxes,
too many instances), the request schema against our own JSON checker, and enrich_layout."""

from __future__ import annotations

import json

import pytest

from cirflow.models.mllm.protocol import ChatResult, check_json_answer, parse_json_output
from cirflow.schemas.layout import MAX_INSTANCES, Layout, load_layout, parse_layout
from cirflow.tasks.ip_cir.plan_layout import DEFAULT_SIZE_STATS, enrich_layout, raw_answer, split_template


def inst(label="dog", box=(0.1, 0.2, 0.5, 0.9), reference="image", **kw) -> dict:
    return {"label": label, "category": kw.pop("category", label), "description": f"a {label}", "box": list(box),
            "reference": reference, **kw}


def answer(*instances, scene="a dog on a beach") -> str:
    return json.dumps({"scene": scene, "instances": list(instances)})


def test_valid_layout_round_trips():
    p = parse_layout(answer(inst(), inst("ball", (0.6, 0.6, 0.7, 0.7), "text")))
    assert p.ok and p.error is None and p.dropped == []
    assert [i.label for i in p.layout.instances] == ["dog", "ball"]
    assert p.layout.instances[1].reference == "text" and p.layout.instances[0].box == [0.1, 0.2, 0.5, 0.9]
    assert load_layout(p.layout.model_dump_json()) == p.layout


def test_fenced_answer_is_accepted():
    assert parse_layout("```json\n" + answer(inst()) + "\n```").ok


@pytest.mark.parametrize("text", ["", "not json", '{"scene": "x", "instances": [', "[1, 2]", None])
def test_malformed_answers_are_rejected_with_a_reason(text):
    p = parse_layout(text)
    assert not p.ok and p.layout is None and p.error


def test_partially_valid_keeps_good_instances_and_records_why_others_went():
    bad = [inst("cat", (0.5, 0.2, 0.4, 0.9)),  # x1 > x2
           inst("cow", (0.1, 0.6, 0.5, 0.3)),  # y1 > y2
           inst("car", (0.1, 0.2, 1.5, 0.9)),  # out of range
           inst("bus", (0.1, 0.2, 0.5)),  # three numbers
           inst("man", reference="both"),  # unknown reference
           {"label": "tree", "box": [0, 0, 1, 1], "reference": "text"}]  # no category / description
    p = parse_layout(answer(inst(), *bad, inst("ball", (0.6, 0.6, 0.7, 0.7), "text")))
    assert p.ok and [i.label for i in p.layout.instances] == ["dog", "ball"]
    assert len(p.dropped) == 6
    assert [d.split(":")[0] for d in p.dropped] == [f"instances[{i}]" for i in range(1, 7)]
    assert "x1=0.5 must be < x2=0.4" in p.dropped[0] and "y1=0.6 must be < y2=0.3" in p.dropped[1]
    assert "less than or equal to 1" in p.dropped[2] and "at least 4" in p.dropped[3]
    assert "'image' or 'text'" in p.dropped[4] and "category" in p.dropped[5] and "description" in p.dropped[5]


def test_layout_with_too_few_valid_instances_is_invalid():
    only_bad = answer(inst("cat", (0.5, 0.2, 0.4, 0.9)))
    p = parse_layout(only_bad)
    assert not p.ok and "0 valid instance(s) of 1" in p.error and len(p.dropped) == 1
    two = answer(inst(), inst("cat", (0.5, 0.2, 0.4, 0.9)), inst("ball", (0.6, 0.6, 0.7, 0.7)))
    assert parse_layout(two, min_instances=2).ok
    p = parse_layout(two, min_instances=3)
    assert not p.ok and "need at least 3" in p.error


@pytest.mark.parametrize("value", [{"scene": "x", "instances": []}, {"scene": "", "instances": [inst()]},
                                   {"instances": [inst()]}, {"scene": "x"}, {"scene": "x", "instances": {"a": 1}}])
def test_empty_or_missing_parts_are_invalid(value):
    p = parse_layout(json.dumps(value))
    assert not p.ok and p.error


def test_too_many_instances():
    many = [inst(f"o{i}", (0.01 * i, 0.1, 0.01 * i + 0.05, 0.2)) for i in range(MAX_INSTANCES + 1)]
    p = parse_layout(answer(*many))
    assert not p.ok and f"more than the {MAX_INSTANCES} allowed" in p.error
    assert parse_layout(answer(*many[:MAX_INSTANCES])).ok
    # invalid instances do not count towards the cap
    many[3]["box"] = [0.9, 0.1, 0.2, 0.2]
    p = parse_layout(answer(*many))
    assert p.ok and len(p.layout.instances) == MAX_INSTANCES and len(p.dropped) == 1


def test_request_schema_is_checkable_by_our_json_validator():
    schema = Layout.model_json_schema()
    assert "obox" not in json.dumps(schema)  # never asked of the LLM
    good = answer(inst(), inst("ball", (0.6, 0.6, 0.7, 0.7), "text"))
    value, err = parse_json_output(good, schema)
    assert err is None and value["scene"] == "a dog on a beach"
    _, err = parse_json_output(answer(inst("car", (0.1, 0.2, 1.5, 0.9))), schema)
    assert err and "maximum" in err and "unsupported" not in err
    _, err = parse_json_output(answer(inst(reference="both")), schema)
    assert err and "not one of" in err


def test_raw_text_is_recovered_from_a_schema_rejection():
    raw = 'garbage; raw text: "quoted" \'x\' \n end'
    text, err = check_json_answer(raw, Layout.model_json_schema())
    assert text is None
    assert raw_answer(ChatResult("q", None, "failed", err, 0.1, 1)) == raw
    assert raw_answer(ChatResult("q", "ok text", "ok", None, 0.1, 1)) == "ok text"
    assert raw_answer(ChatResult("q", None, "failed", "HTTP 500: boom", 0.1, 1)) is None


def test_templates_split_into_system_and_user():
    from cirflow.prompts import load_template

    for bench in ("cirr", "circo", "fashioniq"):
        system, user = split_template(load_template("plan_layout", bench)[0])
        assert "four steps" in system and '"instances"' in system
        assert "{modification}" in user and "{caption}" in user and "{" not in system.replace("{\"", "")
        assert ("{shared_concept}" in user) == (bench == "circo")
        for line in system.splitlines():  # every few-shot answer is itself a valid layout
            if line.startswith("Answer: {"):
                assert parse_layout(line.removeprefix("Answer: ")).ok, line
    assert split_template("just {modification}") == ("", "just {modification}")


def test_enrich_moves_boxes_towards_category_statistics_and_keeps_the_original():
    lay = parse_layout(answer(inst("dog", (0.1, 0.1, 0.3, 0.9)), inst("thing", (0.2, 0.2, 0.4, 0.4)))).layout
    out = enrich_layout(lay, DEFAULT_SIZE_STATS, strength=0.5)
    dog, thing = out.instances
    assert dog.obox == [0.1, 0.1, 0.3, 0.9] and thing.obox is None and thing.box == [0.2, 0.2, 0.4, 0.4]
    wc, ac = DEFAULT_SIZE_STATS["dog"]
    w, a = 0.5 * 0.2 + 0.5 * wc, 0.5 * (0.2 / 0.8) + 0.5 * ac
    x1, y1, x2, y2 = dog.box
    assert x2 - x1 == pytest.approx(w, abs=1e-3) and (x2 - x1) / (y2 - y1) == pytest.approx(a, abs=1e-2)
    assert (x1 + x2) / 2 == pytest.approx(0.2, abs=1e-3)  # centre kept (fits inside the image here)
    assert all(0 <= v <= 1 for v in dog.box)
    assert enrich_layout(lay, DEFAULT_SIZE_STATS, strength=0.0).instances[0].box == pytest.approx(lay.instances[0].box)
    full = enrich_layout(lay, {"dog": (0.9, 0.3)}, strength=1.0).instances[0]  # taller than the image: shrunk
    assert full.box[0] >= 0 and full.box[3] <= 1
    assert (full.box[2] - full.box[0]) / (full.box[3] - full.box[1]) == pytest.approx(0.3, abs=1e-2)
    stored = load_layout(out.model_dump_json(exclude_none=True))
    assert stored.instances[0].obox == [0.1, 0.1, 0.3, 0.9]
