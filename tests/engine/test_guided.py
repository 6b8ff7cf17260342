"""Guided output with llguidance: always valid across seeds, per row, in mixed batches."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from llmvm_ray.engine import Engine, GuidedSpec
from llmvm_ray.engine.guided import FLOAT_REGEX, INTEGER_REGEX
from llmvm_ray.errors import InvalidRequestError
from tests.engine.helpers import req, texts

SEEDS = range(10)

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "user", "guest"]},
        "active": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
    },
    "required": ["name", "age", "role", "active"],
    "additionalProperties": False,
}


def guided_batch(engine: Engine, spec: GuidedSpec, max_tokens: int = 48) -> list:
    results = engine.generate(
        [
            req(f"s{seed}", "Answer:", seed=seed, max_tokens=max_tokens, guided=spec)
            for seed in SEEDS
        ]
    )
    for result in results:
        assert result.choices[0].finish_reason == "stop", result  # grammar completed
    return [r.choices[0].text for r in results]


def test_choices(engine: Engine) -> None:
    options = ("yes", "no", 'it "depends"', "naïve ✓")
    outs = guided_batch(engine, GuidedSpec(choices=options))
    assert set(outs) <= set(options)
    assert len(set(outs)) > 1  # the seeds really sample among the choices


def test_regex(engine: Engine) -> None:
    pattern = r"[0-9]{3}-[a-z]{2,5}"
    for text in guided_batch(engine, GuidedSpec(regex=pattern)):
        assert re.fullmatch(pattern, text), text


def test_integer(engine: Engine) -> None:
    for text in guided_batch(engine, GuidedSpec(type="integer")):
        assert re.fullmatch(INTEGER_REGEX, text), text
        int(text)


def test_float(engine: Engine) -> None:
    for text in guided_batch(engine, GuidedSpec(type="float")):
        assert re.fullmatch(FLOAT_REGEX, text), text
        float(text)


def test_json_schema(engine: Engine) -> None:
    outs = guided_batch(engine, GuidedSpec(json_schema=PERSON_SCHEMA), max_tokens=120)
    for text in outs:
        jsonschema.validate(json.loads(text), PERSON_SCHEMA)


def test_any_json_object(engine: Engine) -> None:
    text = engine.generate(
        [req("o", "Answer:", temperature=0, max_tokens=40, guided=GuidedSpec(json_schema={}))]
    )[0].choices[0]
    # greedy on a random model may not close the object within max_tokens; if it does, it
    # is an object
    if text.finish_reason == "stop":
        assert isinstance(json.loads(text.text), dict)
    assert text.text.startswith("{")


def test_constrained_and_free_rows_share_a_batch(engine: Engine) -> None:
    requests = [
        req("free", seed=1, max_tokens=12),
        req("re", seed=1, max_tokens=12, guided=GuidedSpec(regex="[a-c]{4}")),
        req("int", "Input: 5 2\nOutput:", seed=2, max_tokens=24, guided=GuidedSpec(type="integer")),
        req("json", seed=3, max_tokens=120, n=2, guided=GuidedSpec(json_schema=PERSON_SCHEMA)),
    ]
    alone = {r.request_id: texts(engine.generate([r]))[r.request_id] for r in requests}
    assert texts(engine.generate(requests)) == alone
    assert texts(engine.generate(requests[::-1])) == alone
    assert re.fullmatch("[a-c]{4}", alone["re"][0])
    assert not re.fullmatch("[a-c]{4}", alone["free"][0])


def test_guided_counts_the_eos_that_ends_it(engine: Engine, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    result = engine.generate(
        [req("c", temperature=0, max_tokens=20, guided=GuidedSpec(choices=("abcdef",)))]
    )[0]
    choice = result.choices[0]
    assert choice.text == "abcdef"
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokens = len(tokenizer("abcdef", add_special_tokens=False)["input_ids"])
    assert tokens <= choice.completion_tokens <= len("abcdef") + 1


def test_gpt2_guided(gpt2_engine: Engine) -> None:
    for text in guided_batch(gpt2_engine, GuidedSpec(regex=r"(red|green|blue)-[0-9]{2}")):
        assert re.fullmatch(r"(red|green|blue)-[0-9]{2}", text), text


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        (GuidedSpec(regex="(unclosed"), "guided_regex"),
        (GuidedSpec(regex="a(?=b)"), "guided_regex"),  # look-ahead: not a regular language
        (GuidedSpec(regex=""), "guided_regex"),
        (GuidedSpec(json_schema={"type": "nonsense"}), "guided_json"),
        (GuidedSpec(json_schema={"$ref": "#/definitions/missing"}), "guided_json"),
        (GuidedSpec(json_schema={"type": "string", "pattern": "(("}), "guided_json"),
        (GuidedSpec(choices=()), "guided_choice"),
        (GuidedSpec(choices=("ok", "")), "guided_choice"),
    ],
)
def test_invalid_constraints_are_rejected(engine: Engine, spec: GuidedSpec, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        engine.validate(req("bad", guided=spec))
    assert info.value.param == param
    with pytest.raises(InvalidRequestError):
        engine.generate([req("ok"), req("bad", guided=spec)])
