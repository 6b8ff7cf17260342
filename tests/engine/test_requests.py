"""Request validation, token counting and chat rendering."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from llmvm_ray.engine import Engine
from llmvm_ray.engine.prompting import render_chat
from llmvm_ray.errors import InvalidRequestError
from tests.engine.helpers import req

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
]


@pytest.mark.parametrize(
    ("request_kwargs", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"max_tokens": 10_000}, "max_tokens"),  # prompt + max_tokens > max_model_len
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
        ({"n": 0}, "n"),
        ({"stop": ("",)}, "stop"),
        ({"seed": 1.5}, "seed"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.1}, "frequency_penalty"),
        ({"frequency_penalty": math.inf}, "frequency_penalty"),
        ({"logit_bias": ((10**6, 1.0),)}, "logit_bias"),  # outside the vocabulary
        ({"logit_bias": ((5, 101.0),)}, "logit_bias"),
        ({"logit_bias": ((5, 1.0), (5, 2.0))}, "logit_bias"),
        ({"logit_bias": ((-1, 1.0),)}, "logit_bias"),
        ({"logit_bias": tuple((i, 1.0) for i in range(301))}, "logit_bias"),
    ],
)
def test_invalid_parameters(engine: Engine, request_kwargs: dict, param: str) -> None:
    prompt = request_kwargs.pop("prompt", "Hello world")
    request = req("bad", prompt, **request_kwargs)
    with pytest.raises(InvalidRequestError) as info:
        engine.validate(request)
    assert info.value.param == param
    assert info.value.status == 400
    with pytest.raises(InvalidRequestError):
        engine.generate([request])


def test_context_limit_is_exact(engine: Engine) -> None:
    prompt_tokens = engine.count_tokens("Hello world")
    room = engine.max_model_len - prompt_tokens
    assert engine.validate(req("ok", max_tokens=room)) == prompt_tokens
    with pytest.raises(InvalidRequestError):
        engine.validate(req("too-long", max_tokens=room + 1))


def test_without_max_tokens_a_request_gets_what_fits(engine: Engine) -> None:
    """vLLM's rule for a request that named no max_tokens: the default is a cap, lowered to
    the room the prompt leaves; a prompt that fills the context is refused naming it."""
    prompt_tokens = engine.count_tokens("Hello world")
    room = engine.max_model_len - prompt_tokens
    capped = req("fit", max_tokens=room + 50, fit_max_tokens=True, temperature=0.0)
    assert engine.validate(capped) == prompt_tokens
    [result] = engine.generate([capped])
    assert result.choices[0].completion_tokens <= room
    within = req("cap", max_tokens=3, fit_max_tokens=True, temperature=0.0)
    assert engine.generate([within])[0].choices[0].completion_tokens <= 3
    huge = "Hello world " * engine.max_model_len
    with pytest.raises(InvalidRequestError) as info:
        engine.validate(req("full", huge, max_tokens=4, fit_max_tokens=True))
    assert info.value.param == "prompt"


def test_validate_returns_prompt_tokens(engine: Engine) -> None:
    assert engine.validate(req("x", "Hello world")) == engine.count_tokens("Hello world")
    assert engine.model_name == "tiny"


def test_chat_template(engine: Engine) -> None:
    prompt = engine.render_chat(MESSAGES)
    assert prompt == "<s><|system|>\nBe brief.</s>\n<|user|>\nHi there</s>\n<|assistant|>\n"
    # the template renders BOS itself: encoding must not add a second one
    plain = engine.count_tokens("Hello")
    with_bos = engine.count_tokens("<s>Hello")
    assert with_bos == plain
    result = engine.generate([req("chat", prompt, seed=1, max_tokens=4)])[0]
    assert result.prompt_tokens == engine.count_tokens(prompt)


def test_chat_fallback_without_template(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = None
    assert render_chat(tokenizer, MESSAGES) == "system: Be brief.\nuser: Hi there\nassistant:"


def test_malformed_messages(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError) as info:
        engine.render_chat([{"role": "user"}])
    assert info.value.param == "messages"
