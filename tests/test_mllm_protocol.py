"""Shared pieces: JSON-answer validation, image reading/downscaling, the config contract."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel, ValidationError

from cirflow.models.mllm.http import build_body, encode_image
from cirflow.models.mllm.protocol import ChatRequest, check_json_answer, downscale, load_image, parse_json_output
from cirflow.schemas.mllm import MLLMConfig, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {
        "caption": {"type": "string", "minLength": 1},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "kind": {"enum": ["add", "remove", "change"]},
    },
    "required": ["caption", "kind"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "text",
    [
        '{"caption": "a red car", "kind": "change"}',
        '  {"caption": "x", "kind": "add", "confidence": 0.5, "tags": ["a", "b"]}\n',
        '```json\n{"caption": "x", "kind": "remove"}\n```',  # one fence is tolerated
    ],
)
def test_valid_answers(text):
    value, err = parse_json_output(text, SCHEMA)
    assert err is None and value["caption"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("og oat what", "invalid JSON"),
        ('{"caption": "x", "kind": "add"', "invalid JSON"),  # truncated (max_tokens hit)
        ("", "invalid JSON"),
        ('{"caption": "x"}', "missing required property 'kind'"),
        ('{"caption": "x", "kind": "paint"}', "is not one of"),
        ('{"caption": "", "kind": "add"}', "minLength"),
        ('{"caption": "x", "kind": "add", "confidence": 2}', "maximum"),
        ('{"caption": "x", "kind": "add", "tags": ["a", 1]}', "$.tags[1]: expected string"),
        ('{"caption": "x", "kind": "add", "tags": ["a", "b", "c", "d"]}', "maxItems"),
        ('{"caption": "x", "kind": "add", "extra": 1}', "unexpected properties ['extra']"),
        ('["caption"]', "expected object"),
        ('{"caption": "x", "kind": "add"} trailing', "invalid JSON"),
    ],
)
def test_invalid_answers_say_why(text, reason):
    value, err = parse_json_output(text, SCHEMA)
    assert value is None and reason in err, err


def test_pydantic_generated_schema_with_refs_and_optional():
    class Edit(BaseModel):
        attribute: str
        value: str | None = None

    class Answer(BaseModel):
        edits: list[Edit]
        target: str

    schema = Answer.model_json_schema()  # uses $defs/$ref and anyOf[..., null]
    ok = json.dumps({"edits": [{"attribute": "color", "value": None}], "target": "a red car"})
    assert parse_json_output(ok, schema)[1] is None
    bad = json.dumps({"edits": [{"value": "red"}], "target": "a red car"})
    assert "$.edits[0]: missing required property 'attribute'" in parse_json_output(bad, schema)[1]


def test_unsupported_keyword_is_not_silently_accepted():
    _, err = parse_json_output('{"a": 1}', {"type": "object", "patternProperties": {"^a": {"type": "string"}}})
    assert "unsupported schema keyword 'patternProperties'" in err
    _, err = parse_json_output("{}", {"$ref": "https://example.com/schema.json"})
    assert "unusable JSON schema" in err


def test_check_json_answer_keeps_raw_text_and_normalises():
    text, err = check_json_answer("not json", SCHEMA)
    assert text is None and "raw text: 'not json'" in err
    text, err = check_json_answer('```\n{"kind": "add",  "caption": "x"}\n```', SCHEMA)
    assert err is None and json.loads(text) == {"kind": "add", "caption": "x"}
    assert check_json_answer("free text", None) == ("free text", None)


def test_load_image_converts_and_downscales(tmp_path):
    p = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((300, 200, 4), np.uint8)).save(p)
    img = load_image(str(p), max_pixels=10_000)
    assert img.mode == "RGB" and img.size[0] * img.size[1] <= 10_000
    assert abs(img.size[0] / img.size[1] - 200 / 300) < 0.02
    assert load_image(f"file://{p}").size == (200, 300)  # fsspec URL, no downscale
    small = Image.new("RGB", (10, 10))
    assert downscale(small, 100) is small


def test_encode_image_keeps_jpeg_bytes_and_pngs_the_rest(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    jpg = tmp_path / "a.jpg"
    Image.fromarray(arr).save(jpg, quality=90)
    url = encode_image(str(jpg))
    assert url.startswith("data:image/jpeg;base64,") and base64.b64decode(url.split(",", 1)[1]) == jpg.read_bytes()
    url = encode_image(str(jpg), max_pixels=600)  # needs downscaling: re-encoded losslessly
    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.size[0] * img.size[1] <= 600


def test_request_body_fields():
    cfg = MLLMConfig(backend="http", model="m", base_url="http://x/v1")
    s = SamplingParams(temperature=0.1, top_p=0.9, top_k=50, max_tokens=64, seed=3)  # PEFUSE's settings
    body = build_body(cfg, ChatRequest(id="a", prompt="p", images=(), system="sys", sampling=s, json_schema=SCHEMA), [])
    assert body["messages"][0] == {"role": "system", "content": "sys"}
    assert body["messages"][1]["content"] == [{"type": "text", "text": "p"}]
    assert (body["temperature"], body["top_p"], body["top_k"], body["max_tokens"], body["seed"]) == (0.1, 0.9, 50, 64, 3)
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert body["structured_outputs"] == {"json": SCHEMA}
    plain = build_body(cfg, ChatRequest(id="a", prompt="p"), ["data:image/png;base64,AA"])
    assert "top_k" not in plain and "response_format" not in plain and "structured_outputs" not in plain
    assert plain["messages"][0]["content"][0] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
    strict = cfg.model_copy(update={"api_flavor": "openai"})
    body = build_body(strict, ChatRequest(id="a", prompt="p", json_schema=SCHEMA), [])
    assert "structured_outputs" not in body and "response_format" in body
    with pytest.raises(ValueError, match="top_k=50 needs api_flavor='vllm'"):
        build_body(strict, ChatRequest(id="a", prompt="p", sampling=s), [])


def test_config_contract():
    with pytest.raises(ValidationError):
        MLLMConfig(backend="http", model="m", base_urll="typo")
    with pytest.raises(ValidationError):
        SamplingParams(temprature=0.5)
    a = MLLMConfig(backend="http", model="Qwen/Qwen2.5-VL-7B-Instruct", revision="abc", base_url="http://h:1/v1",
                   api_key_env="KEY", concurrency=64, timeout_s=5)  # fmt: skip
    b = MLLMConfig(backend="transformers", model="Qwen/Qwen2.5-VL-7B-Instruct", revision="abc", batch_size=2)
    assert a.key_fields() == b.key_fields() == {"model": "Qwen/Qwen2.5-VL-7B-Instruct", "revision": "abc", "dtype": "auto"}
    assert b.model_copy(update={"max_image_pixels": 1000}).key_fields()["max_image_pixels"] == 1000
    assert ChatRequest(id="x", prompt="p").sampling == SamplingParams()
