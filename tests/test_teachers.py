"""A remote teacher that misbehaves, through the real ``openai`` SDK and a real HTTP server:
every answer is checked before it is used, so nothing malformed is ever recorded."""

from __future__ import annotations

import asyncio

import pytest

from llmvm_ray.engine.types import SamplingParams
from llmvm_ray.teachers import (
    OpenAITeacher,
    TeacherCall,
    TeacherError,
    TeacherTimeout,
    TeacherUnavailable,
)
from tests.support.stub_teacher import StubTeacher

CALL = TeacherCall("Add one.\n", "What is 1 plus one?", SamplingParams(max_tokens=8, seed=1))


def ask(stub: StubTeacher, api: str = "completions", timeout_s: float = 30.0):
    teacher = OpenAITeacher(
        base_url=stub.url, model="stub", api_key=None, api=api, timeout_s=timeout_s, max_retries=0
    )

    async def main():
        try:
            return await teacher.complete(CALL)
        finally:
            await teacher.close()

    return asyncio.run(main())


@pytest.mark.parametrize("api", ["completions", "chat"])
@pytest.mark.parametrize(
    ("behaviour", "says"),
    [
        ("null_text", "answered no text"),
        ("no_choices", "answered without choices"),
        ("bad_finish", "finish_reason 'tool_calls'"),
        ("bad_usage", "answered usage"),
        ("500", "answered 500: boom"),
    ],
)
def test_a_malformed_or_failed_answer_is_a_502_naming_the_teacher(api, behaviour, says):
    with StubTeacher([behaviour]) as stub, pytest.raises(TeacherError) as info:
        ask(stub, api)
    error = info.value
    assert type(error) is TeacherError and error.status == 502
    assert "teacher 'stub'" in error.message and says in error.message, error.message


def test_overload_is_a_503_with_the_upstreams_retry_after():
    with StubTeacher(["503"]) as stub, pytest.raises(TeacherUnavailable) as info:
        ask(stub)
    assert info.value.status == 503 and info.value.retry_after_s == 7.0
    with StubTeacher(["429"]) as stub, pytest.raises(TeacherUnavailable) as info:
        ask(stub)
    assert info.value.retry_after_s == 0.0 and "429" in info.value.message


def test_a_slow_teacher_is_a_504_and_a_good_one_answers():
    with StubTeacher(["slow"], slow_s=3.0) as stub, pytest.raises(TeacherTimeout) as info:
        ask(stub, timeout_s=0.5)
    assert info.value.status == 504
    with StubTeacher(["good"]) as stub:
        answer = ask(stub, "chat")
    assert answer.text.startswith("[") and answer.finish_reason == "stop"
    assert (answer.prompt_tokens, answer.completion_tokens) == (1, 1)
