"""The tolerant parser and validation, over the kinds of output real teachers write."""

from __future__ import annotations

import json

import pytest

from llmvm_ray.synthesis import encoding as enc
from llmvm_ray.synthesis.records import load_seeds, validate
from llmvm_ray.synthesis.templates import TemplateSet, check_template, resolve_family

D = "<END>"


def pairs(parsed: enc.Parsed) -> list[tuple[str, str]]:
    return [(r["prompt"], r["completion"]) for r in parsed.records]


def test_code_fence_with_prose_around_it():
    text = (
        "Sure! Here are 2 new examples:\n\n```json\n"
        '[{"prompt": "Input: May 3, 1999\\nOutput:", "completion": " 1999-05-03"},\n'
        ' {"prompt": "Input: June 1, 2001\\nOutput:", "completion": " 2001-06-01"}]\n'
        "```\nLet me know if you need more!"
    )
    out = enc.parse(text, "json", D)
    assert pairs(out) == [
        ("Input: May 3, 1999\nOutput:", " 1999-05-03"),
        ("Input: June 1, 2001\nOutput:", " 2001-06-01"),
    ]
    assert out.failures == [] and not out.truncated


def test_json_lines_and_numbered_objects():
    text = (
        '1. {"prompt": "a", "completion": "b"}\n'
        '2) {"prompt": "c", "completion": "d"}\n'
        '- {"prompt": "e", "completion": "f"}\n'
        '{"prompt": "g", "completion": "h"}\n'
    )
    assert pairs(enc.parse(text, "json", D)) == [("a", "b"), ("c", "d"), ("e", "f"), ("g", "h")]


def test_truncated_array_keeps_every_complete_object():
    full = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    text = json.dumps(full)[:-20]  # cut inside the last object
    out = enc.parse(text, "json", D, truncated=True)
    assert pairs(out) == [("p0", "c0"), ("p1", "c1")]
    assert out.truncated and len(out.failures) == 1
    assert out.generated == 3


def test_malformed_object_in_the_middle_is_skipped_not_fatal():
    text = (
        '[{"prompt": "a", "completion": "b"}, {"prompt": "x", completion: oops}, '
        '{"prompt": "c", "completion": "d"}]'
    )
    out = enc.parse(text, "json", D)
    assert pairs(out) == [("a", "b"), ("c", "d")]
    assert len(out.failures) == 1


def test_key_aliases_wrappers_and_braces_inside_strings():
    text = json.dumps(
        {
            "examples": [
                {"Input": "What is {x}?", "Output": 'a "quoted" } brace'},
                {"question": "q2", "answer": "a2"},
            ]
        }
    )
    assert pairs(enc.parse(text, "json", D)) == [
        ("What is {x}?", 'a "quoted" } brace'),
        ("q2", "a2"),
    ]


def test_objects_without_the_fields_are_counted_as_failures():
    out = enc.parse('[{"foo": 1}, {"prompt": "a", "completion": "b"}]', "json", D)
    assert pairs(out) == [("a", "b")] and len(out.failures) == 1


@pytest.mark.parametrize(
    "garbage",
    ["", "I cannot help with that.", "{{{{", "[[[", '{"prompt": "unterminated', "\x00\xff" * 50],
)
def test_garbage_yields_nothing_and_never_raises(garbage):
    for encoding in ("json", "delimited"):
        out = enc.parse(garbage, encoding, D)
        assert out.records == []


def test_delimited_roundtrip_and_truncated_tail():
    examples = [
        {"prompt": "Line one\nline two", "completion": ' has "quotes" and {braces}'},
        {"prompt": "p2", "completion": "c2"},
    ]
    text = enc.format_examples("delimited", examples, D)
    assert pairs(enc.parse(text, "delimited", D)) == [
        (e["prompt"], e["completion"]) for e in examples
    ]
    cut = text + "\n### PROMPT\nhalf an exam"
    out = enc.parse(cut, "delimited", D, truncated=True)
    assert len(out.records) == 2 and out.truncated and len(out.failures) == 1


def test_delimited_last_record_without_delimiter_is_kept_when_not_truncated():
    text = "### PROMPT\na\n### COMPLETION\nb\n<END>\n### PROMPT\nc\n### COMPLETION\nd\n"
    assert pairs(enc.parse(text, "delimited", D)) == [("a", "b"), ("c", "d")]
    assert len(enc.parse(text, "delimited", D, truncated=True).records) == 1


def test_labelled_numbered_plain_text():
    text = (
        "Here you go:\n1. Prompt: What is 2+2?\n   Completion: 4\n"
        "2. Prompt: Capital of France?\n   Completion: Paris\n"
    )
    assert pairs(enc.parse(text, "json", D)) == [
        ("What is 2+2?", "4"),
        ("Capital of France?", "Paris"),
    ]


def test_each_encoding_falls_back_to_the_other():
    as_json = json.dumps([{"prompt": "a", "completion": "b"}])
    as_delim = enc.format_examples("delimited", [{"prompt": "a", "completion": "b"}], D)
    assert pairs(enc.parse(as_json, "delimited", D)) == [("a", "b")]
    assert pairs(enc.parse(as_delim, "json", D)) == [("a", "b")]


def test_guided_schema_accepts_exactly_the_rendered_format():
    import jsonschema

    examples = [{"prompt": "p", "completion": "c"}] * 2
    jsonschema.validate(json.loads(enc.format_examples("json", examples, D)), enc.json_schema(2))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"prompt": "p"}], enc.json_schema(2))


def test_validation_reasons():
    kw = dict(delim=D, max_prompt_chars=20, max_completion_chars=20, seed_prompts={"seed"})
    assert validate({"prompt": "p", "completion": " c<END>"}, **kw) == (
        {"prompt": "p", "completion": " c"},
        None,
    )
    assert validate({"prompt": " ", "completion": "c"}, **kw)[1] == "empty prompt"
    assert validate({"prompt": "p", "completion": ""}, **kw)[1] == "empty completion"
    assert validate({"prompt": "p", "completion": 4}, **kw)[1].startswith("prompt and")
    assert "longer" in validate({"prompt": "p" * 21, "completion": "c"}, **kw)[1]
    assert validate({"prompt": "seed ", "completion": "c"}, **kw)[1] == "copies a seed prompt"
    assert "delimiter" in validate({"prompt": "a<END>b", "completion": "c"}, **kw)[1]


def test_seed_loading_rejects_bad_rows_with_reasons():
    seeds, bad = load_seeds(
        [
            {"prompt": "a", "completion": "b"},
            {"prompt": "", "completion": "b"},
            {"prompt": "a"},
            {"id": "x", "prompt": "c", "completion": "d"},
            {"id": "x", "prompt": "e", "completion": "f"},
        ]
    )
    assert [s.id for s in seeds] == ["row-0", "x"]
    assert [b["error"] for b in bad] == [
        "seed has no non-empty string 'prompt'",
        "seed has no non-empty string 'completion'",
        "duplicate seed id 'x'",
    ]


def test_templates_per_family_rotate_and_accept_overrides():
    completion = TemplateSet.build(resolve_family("auto", "completions"))
    chat = TemplateSet.build(resolve_family("auto", "chat"))
    assert completion.family == "completion" and chat.family == "chat"
    names = {completion.render(i, "ctx", "EX", 3, "as JSON").template for i in range(6)}
    assert names == {"completion/0", "completion/1", "completion/2"}
    r = chat.render(0, "ctx", "EX", 3, "as JSON")
    assert r.system and "EX" in r.prompt and "3" in r.prompt
    assert completion.render(0, "", "EX", 1, "f").system == ""
    custom = TemplateSet.build("chat", ["Do {n}: {examples}"], system="S")
    assert custom.render(5, "c", "EX", 2, "f") == custom.render(0, "c", "EX", 2, "f")
    assert custom.render(0, "c", "EX", 2, "f").prompt == "Do 2: EX"
    with pytest.raises(Exception, match="prompt_variants"):
        check_template("no examples field {n}")
    with pytest.raises(Exception, match="prompt_variants"):
        check_template("{examples} {unknown}")


def test_the_tiny_synthesis_teacher_is_trained_on_exactly_what_the_synthesizer_sends():
    import random

    from llmvm_ray.config import SynthesisConfig
    from llmvm_ray.dev.tasks import get_task
    from llmvm_ray.synthesis.records import Seed
    from llmvm_ray.synthesis.synthesizer import Synthesizer, TaskInput, UnitPlan
    from tests.support.synth_teacher import check_example, synthesis_pair

    task = get_task("date")
    for encoding in ("guided_json", "json", "delimited"):
        for variant in range(3):
            prompt, answer, shots = synthesis_pair(
                task, random.Random(variant), k=2, n=2, encoding=encoding, variant=variant
            )
            seeds = tuple(Seed(f"s{i}", **shot) for i, shot in enumerate(shots))
            synth = Synthesizer(
                SynthesisConfig(seed_examples=2, seed_batch_size=2, seed=0),
                teacher=None,
                encoding=encoding,
                templates=TemplateSet.build("completion"),
                run_id="r",
            )
            plan = UnitPlan(task="date", unit=variant, seed_ids=("s0", "s1"), variant=variant)
            call, template = synth.call(TaskInput("date", task.instruction, seeds), plan, 0)
            assert (call.context, call.prompt) == ("", prompt)
            assert template == f"completion/{variant}"
            records = enc.parse(answer, encoding, D).records
            assert len(records) == 2 and all(check_example(task, r) for r in records)
