"""The OpenAI-compatible API through real Ray Serve HTTP and the official, unmodified
``openai`` client: completions, chat, streaming, seeds, adapters, guided output."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from tests.conftest import API_KEY

pytestmark = pytest.mark.ray

PROMPT = "March 5, 2021 ->"


def test_models_list_bases_and_adapters(client):
    ids = {m.id for m in client.models.list().data}
    assert ids == {"tiny", "tiny:a1", "tiny:a2"}


def test_completion_shape_usage_and_metadata(client):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.model == "tiny"
    assert len(r.choices) == 1 and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    meta = r.llmvm
    assert meta["base_model"] == "tiny" and meta["adapter"] is None
    assert meta["served_by"] == "base" and meta["latency_ms"] > 0
    assert isinstance(meta["seed"], int)
    assert meta["completion_tokens"] == r.usage.completion_tokens


def test_seed_determinism_alone_and_under_concurrency(client):
    def sample(seed):
        r = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=seed
        )
        return r.choices[0].text

    alone = sample(7)
    assert sample(7) == alone
    # Sent concurrently, the requests share batches with other seeds; text must not change.
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(sample, [7, 8, 9, 7, 10, 11, 7, 12]))
    assert texts[0] == texts[3] == texts[6] == alone
    assert len(set(texts)) > 1


def test_unseeded_response_reports_a_replayable_seed(client):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=1.0)
    seed = r.llmvm["seed"]
    again = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=10, temperature=1.0, seed=seed
    )
    assert again.choices[0].text == r.choices[0].text


def test_presence_and_frequency_penalties(client):
    """OpenAI's penalties reach the engine (checked against a reference loop in
    tests/engine): greedy text changes with them, deterministically, streamed or not."""
    plain = dict(model="tiny", prompt=PROMPT, max_tokens=16, temperature=0)
    penalized = dict(plain, frequency_penalty=1.5, presence_penalty=0.5)
    base = client.completions.create(**plain).choices[0].text
    text = client.completions.create(**penalized).choices[0].text
    assert text != base
    assert client.completions.create(**penalized).choices[0].text == text
    chunks = list(client.completions.create(stream=True, **penalized))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    chat = dict(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=16)
    chat_plain = client.chat.completions.create(temperature=0, **chat)
    chat_pen = client.chat.completions.create(temperature=0, frequency_penalty=2.0, **chat)
    assert chat_pen.choices[0].message.content != chat_plain.choices[0].message.content


def test_logit_bias_through_the_client(client, tiny_llama):
    """``logit_bias`` keys are the model's token ids: +100 on one makes every sampled token
    that one, whatever the seed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    token = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" the")[0])
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=4, temperature=1.0)
    for seed in (3, 4):
        r = client.completions.create(seed=seed, logit_bias={str(token): 100}, **kwargs)
        assert r.choices[0].text == tokenizer.decode([token] * 4)
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        logit_bias={str(token): 100},
    )
    assert chat.choices[0].message.content == tokenizer.decode([token] * 3)


def test_n_choices_and_prompt_lists(client):
    r = client.completions.create(
        model="tiny", prompt=["a b", "c d"], n=2, max_tokens=4, temperature=1.0, seed=3
    )
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]


def test_streaming_completion_matches_non_streaming(client):
    kwargs = dict(model="tiny", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=21)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].llmvm["seed"] == 21


def test_stream_usage_chunk(client):
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_chat_and_chat_streaming(client):
    messages = [
        {"role": "system", "content": "You format dates."},
        {"role": "user", "content": "March 5, 2021"},
    ]
    kwargs = dict(model="tiny", messages=messages, max_tokens=10, temperature=0.8, seed=5)
    r = client.chat.completions.create(**kwargs)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens > 0
    stream = list(client.chat.completions.create(stream=True, **kwargs))
    assert stream[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == r.choices[0].message.content


def test_stop_sequences_are_trimmed(client):
    base = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, temperature=0)
    text = base.choices[0].text
    if len(text) < 3:
        pytest.skip("the tiny model produced too little text to cut")
    stop = text[2:4] if text[2:4].strip() else text[1:3]
    r = client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop]
    )
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].text
    assert text.startswith(r.choices[0].text)


def test_adapters_change_output_and_are_reported(client):
    def run(model):
        r = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
        return r.choices[0].text, r.llmvm

    base, _ = run("tiny")
    a1, meta = run("tiny:a1")
    a2, _ = run("tiny:a2")
    assert meta["adapter"] == "a1" and meta["served_by"] == "adapter"
    assert a1 != base and a2 != a1
    # Mixed concurrently (one replica, shared batches): each row as if alone.
    with ThreadPoolExecutor(6) as pool:
        mixed = list(pool.map(lambda m: run(m)[0], ["tiny", "tiny:a1", "tiny:a2"] * 2))
    assert mixed == [base, a1, a2] * 2


def test_guided_choice_regex_json_and_number(client):
    def complete(**extra):
        r = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=40, temperature=1.0, seed=4, extra_body=extra
        )
        return r.choices[0].text

    assert complete(guided_choice=["yes", "no"]) in ("yes", "no")
    import re

    assert re.fullmatch(r"[0-9]{3}-[a-z]+", complete(guided_regex=r"[0-9]{3}-[a-z]+"))
    int(complete(guided_type="integer"))
    float(complete(guided_type="float"))
    schema = {
        "type": "object",
        "properties": {"year": {"type": "integer"}, "ok": {"type": "boolean"}},
        "required": ["year", "ok"],
        "additionalProperties": False,
    }
    r = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=60,
        temperature=1.0,
        seed=4,
        extra_body={"guided_json": schema},
    )
    jsonschema.validate(json.loads(r.choices[0].text), schema)


def test_chat_response_format_json_schema(client):
    schema = {
        "type": "object",
        "properties": {"date": {"type": "string", "maxLength": 10}},
        "required": ["date"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "March 5, 2021"}],
        max_tokens=60,
        temperature=0.7,
        seed=1,
        response_format={"type": "json_schema", "json_schema": {"name": "d", "schema": schema}},
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_direct_ingress_answers_like_the_proxy(client, direct_url):
    """The ingress replica's own HTTP port is the same API: same auth, same seeded text,
    streaming included, and on loopback like the proxy."""
    import openai

    assert direct_url.startswith("http://127.0.0.1:")
    direct = openai.OpenAI(base_url=f"{direct_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
    request = {"model": "tiny:a1", "prompt": PROMPT, "max_tokens": 10, "seed": 5}
    expected = client.completions.create(**request).choices[0].text
    assert direct.completions.create(**request).choices[0].text == expected
    streamed = direct.completions.create(**request, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected
    stranger = openai.OpenAI(base_url=f"{direct_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_requests_join_a_running_batch_over_http(client):
    """Continuous batching through Serve: while one long completion decodes, staggered
    requests (streamed or not, base or adapter, free or guided) join its batch, finish
    before it, and get exactly the text each gets alone."""
    import threading
    import time

    def create(model, stream=False, **kwargs):
        params = {"model": model, "prompt": PROMPT, "max_tokens": 10, "temperature": 1.0}
        response = client.completions.create(**{**params, **kwargs, "stream": stream})
        if stream:
            return "".join(chunk.choices[0].text for chunk in response if chunk.choices)
        return response.choices[0].text

    joiners = [
        ("tiny", {"seed": 1}),
        ("tiny:a1", {"seed": 2}),
        ("tiny", {"seed": 3, "stream": True}),
        ("tiny:a2", {"seed": 4, "stream": True}),
        ("tiny", {"seed": 5, "extra_body": {"guided_regex": "[a-z]{3,6}"}}),
    ]
    alone = [create(model, **kwargs) for model, kwargs in joiners]
    finished: dict[str, float] = {}
    started = threading.Event()

    def long_request() -> None:
        stream = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=200, temperature=0, stream=True
        )  # greedy: no early EOS on this model
        for _ in stream:
            started.set()
        finished["long"] = time.monotonic()

    runner = threading.Thread(target=long_request)
    runner.start()
    assert started.wait(30)  # the long request is decoding
    with ThreadPoolExecutor(len(joiners)) as pool:
        futures = []
        for model, kwargs in joiners:
            futures.append(pool.submit(create, model, **kwargs))
            time.sleep(0.005)  # staggered: they arrive at different steps
        texts = [future.result() for future in futures]
    finished["joiners"] = time.monotonic()
    runner.join(60)
    assert texts == alone
    assert finished["joiners"] < finished["long"], "the joiners waited for the long batch"
