"""JSON-schema constrained decoding (models/mllm/constrained.py): a random-weight tiny model, decoding under a
schema in the in-process transformers backend, answers JSON that validates against the schema within its token
budget (IP-CIR's layout request schema included: four numbers in [0, 1] per box); the switch turns it off; the
http backend sends the schema as a strict `response_format` unless switched off."""

from __future__ import annotations

import json

import pytest

from cirflow.models.mllm.constrained import UnsupportedSchema, compile_schema
from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.http import build_body
from cirflow.models.mllm.protocol import ChatRequest, parse_json_output
from cirflow.schemas.layout import parse_layout
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.tasks.ip_cir.plan_layout import TEXT_CAPS, request_schema

CHOICE = {"title": "choice", "type": "object", "additionalProperties": False, "required": ["choice", "why"],
          "properties": {"choice": {"type": "integer", "enum": [1, 2, 3, -1]},
                         "why": {"type": "string", "minLength": 2, "maxLength": 5},
                         "score": {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 2.5},
                                             {"type": "null"}]},
                         "tags": {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2}}}


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return str(tiny_models["mllm"])


def _cfg(model: str, **kw) -> MLLMConfig:
    return MLLMConfig(backend="transformers", model=model, device="cpu", dtype="float32", **kw)


def test_random_tiny_model_answers_schema_valid_json(tiny):
    layout = request_schema({k: 12 for k in TEXT_CAPS})
    reqs = [ChatRequest(id=f"g{i}", prompt=f"Answer {i} in JSON.", json_schema=CHOICE, sampling=SamplingParams(
                temperature=0.0, max_tokens=40)) for i in range(3)]  # fmt: skip
    reqs += [ChatRequest(id=f"s{i}", prompt="Plan the layout as JSON.", json_schema=layout,
                         sampling=SamplingParams(temperature=1.0, max_tokens=140, seed=i)) for i in range(3)]
    with load_mllm(_cfg(tiny, structured_outputs=True)) as m:
        res = m.generate(reqs, progress=False)
    for req, r in zip(reqs, res):
        assert r.status == "ok", r.error
        value, err = parse_json_output(r.text, req.json_schema)  # the whole schema, ranges and lengths included
        assert err is None and value is not None, (err, r.text)
    for r in res[3:]:
        doc = json.loads(r.text)
        assert all(len(i["box"]) == 4 and all(0 <= v <= 1 for v in i["box"]) for i in doc["instances"])
        assert len(doc["scene"]) <= 12 and all(len(i["label"]) <= 12 for i in doc["instances"])
        # a box may still be unordered (no JSON schema says x1 < x2): parse_layout drops such instances
        parsed = parse_layout(r.text)
        assert parsed.ok or "must be <" in "; ".join(parsed.dropped)


def test_switched_off_or_too_small_a_budget_generates_freely(tiny):
    schema = {"type": "object", "properties": {"edit": {"type": "string"}}, "required": ["edit"]}
    # '{"edit":""}' needs 11 characters: 12 tokens fit it, 6 do not
    fits = ChatRequest(id="a", prompt="Answer in JSON.", json_schema=schema, sampling=SamplingParams(max_tokens=12))
    small = ChatRequest(id="b", prompt="Answer in JSON.", json_schema=schema, sampling=SamplingParams(max_tokens=6))
    with load_mllm(_cfg(tiny, structured_outputs=True)) as m:
        on = m.generate([fits, small], progress=False)
        assert m.describe()["structured_outputs"] is True  # forced on in process: its own key
    with load_mllm(_cfg(tiny)) as m:  # in process the default is off (the pure-Python decoder is slow on big vocabularies)
        assert not m.cfg.constrains_json() and "structured_outputs" not in m.describe()
        off = m.generate([fits], progress=False)[0]
    assert on[0].status == "ok" and json.loads(on[0].text).keys() == {"edit"}
    for r in (on[1], off):  # a random model left free never writes the JSON: failed, raw text kept
        assert r.status == "failed" and r.text is None and "raw text: " in r.error
    # forcing the switch against the backend's default is part of the key: answers decoded either way are never
    # mixed in one artifact; each backend's default keeps the key it had before the switch existed
    assert _cfg(tiny, structured_outputs=True).key_fields()["structured_outputs"] is True
    assert "structured_outputs" not in _cfg(tiny, structured_outputs=False).key_fields()
    served = MLLMConfig(backend="http", model=tiny, base_url="http://x/v1", dtype="float32")
    assert _cfg(tiny).key_fields() == served.key_fields()


def test_schema_subset_and_bounds():
    g = compile_schema(request_schema())
    assert g.value_min(g.root) < 160  # the shortest layout answer: one instance with one-character texts
    def feed(states, text):
        for ch in text:
            states = frozenset(n for s in states for n in g.advance(s, ch))
        return states

    box = feed(g.start(), '{"scene":"a","instances":[{"label":"b","category":"c","description":"d","box":[0.5,1')
    assert box and feed(box, ".0,") and feed(box, "]") == frozenset()  # 1.0 fits; a box has four numbers
    for bad in (".2", "0", "5", "e"):  # 1.2 > 1; 10 and 15 > 1; no exponents
        assert feed(box, bad) == frozenset(), bad
    cap = TEXT_CAPS["scene"]
    assert feed(g.start(), '{"scene":"' + "x" * cap) and not feed(g.start(), '{"scene":"' + "x" * (cap + 1))
    for unsupported in ({"type": "string", "pattern": "^a"}, {"type": "array", "items": {}}, True):
        with pytest.raises(UnsupportedSchema):
            compile_schema(unsupported)


def test_http_body_carries_a_strict_schema_unless_switched_off():
    cfg = MLLMConfig(backend="http", model="m", base_url="http://x/v1")
    req = ChatRequest(id="a", prompt="p", json_schema=CHOICE)
    body = build_body(cfg, req, [])
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "choice", "schema": CHOICE, "strict": True}}
    assert body["structured_outputs"] == {"json": CHOICE}
    off = build_body(cfg.model_copy(update={"structured_outputs": False}), req, [])
    assert "response_format" not in off and "structured_outputs" not in off
    # http keys are unchanged by default (the schema was always sent); switching it off changes them
    assert "structured_outputs" not in cfg.key_fields()
    assert cfg.model_copy(update={"structured_outputs": False}).key_fields()["structured_outputs"] is False
