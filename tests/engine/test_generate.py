"""Engine.generate on tiny random models: seeds, batching, stops, lengths, usage."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from llmvm_ray.engine import Engine
from tests.engine.helpers import long_sample, req, texts

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Input: 3 1 2\nOutput:",
    "You are a helpful assistant.",
]


def mixed_requests() -> list:
    """Different prompts (so different padding), seeds, temperatures, top_p and lengths."""
    return [
        req("s1", PROMPTS[0], seed=1, max_tokens=12),
        req("s2", PROMPTS[1], seed=2, max_tokens=7, temperature=0.7, top_p=0.9),
        req("g", PROMPTS[2], temperature=0, max_tokens=10),
        req("s3", PROMPTS[3], seed=3, max_tokens=15, temperature=1.3),
        req("n3", PROMPTS[2], seed=4, max_tokens=9, n=3, top_p=0.5),
        req("pen", PROMPTS[1], seed=5, max_tokens=12, frequency_penalty=1.0, presence_penalty=0.5),
        req("bias", PROMPTS[0], seed=6, max_tokens=8, logit_bias=((5, 4.0), (6, -100.0))),
    ]


def test_seeded_rows_are_identical_alone_and_in_any_batch(engine: Engine) -> None:
    requests = mixed_requests()
    alone = {r.request_id: texts(engine.generate([r]))[r.request_id] for r in requests}
    batched = texts(engine.generate(requests))
    reversed_ = texts(engine.generate(list(reversed(requests))))
    shuffled = requests[:]
    random.Random(0).shuffle(shuffled)
    assert alone == batched == reversed_ == texts(engine.generate(shuffled))


def test_different_seeds_give_different_text(engine: Engine) -> None:
    outs = texts(engine.generate([req(f"r{s}", seed=s, max_tokens=10) for s in range(5)]))
    assert len({t[0] for t in outs.values()}) == 5


def test_temperature_zero_is_hf_greedy(engine: Engine, tiny_llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    for prompt in PROMPTS[:2]:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        results = engine.generate(
            [req(f"t{s}", prompt, temperature=0, seed=s, max_tokens=8) for s in range(3)]
        )
        assert {r.choices[0].text for r in results} == {expected}


@pytest.mark.parametrize("presence, frequency", [(0.0, 1.5), (1.0, 0.0), (-0.5, 0.8)])
def test_penalties_match_a_reference_greedy_loop(
    engine: Engine, tiny_llama: Path, presence: float, frequency: float
) -> None:
    """OpenAI's penalties, checked against a plain loop: the full sequence through the model
    each step, every generated token's logit lowered by presence + frequency x count."""
    from collections import Counter

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ids = tokenizer(PROMPTS[0], return_tensors="pt")["input_ids"]
    counts: Counter[int] = Counter()
    generated: list[int] = []
    with torch.inference_mode():
        for _ in range(16):
            logits = model(input_ids=ids).logits[0, -1].float()
            for token, times in counts.items():
                logits[token] -= presence + frequency * times
            token = int(logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            generated.append(token)
            counts[token] += 1
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    expected = tokenizer.decode(generated, skip_special_tokens=True)
    plain = req("plain", PROMPTS[0], temperature=0, max_tokens=16)
    penalized = req(
        "pen",
        PROMPTS[0],
        temperature=0,
        max_tokens=16,
        presence_penalty=presence,
        frequency_penalty=frequency,
    )
    out = texts(engine.generate([plain, penalized]))
    assert out["pen"] == [expected]
    assert out["plain"] != out["pen"]  # the random model repeats itself; penalties change that


def test_logit_bias_forces_a_token(engine: Engine, tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    token = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" the")[0])
    forced = req("f", PROMPTS[0], seed=1, max_tokens=6, logit_bias=((token, 100.0),))
    result = engine.generate([forced])[0]
    assert result.choices[0].text == tokenizer.decode([token] * 6)
    plain = engine.generate([req("p", PROMPTS[0], temperature=0, max_tokens=1)])[0]
    first = tokenizer.encode(plain.choices[0].text, add_special_tokens=False)[0]
    banned = req("b", PROMPTS[0], temperature=0, max_tokens=1, logit_bias=((first, -100.0),))
    assert engine.generate([banned])[0].choices[0].text != plain.choices[0].text


def test_n_choices_differ_and_choice_zero_matches_n_1(engine: Engine) -> None:
    many = engine.generate([req("n", seed=11, n=4, max_tokens=10)])[0]
    one = engine.generate([req("one", seed=11, max_tokens=10)])[0]
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert len({c.text for c in many.choices}) == 4
    assert many.choices[0].text == one.choices[0].text


def test_unseeded_requests_report_a_seed_that_reproduces_them(engine: Engine) -> None:
    first = engine.generate([req("r", max_tokens=10)])[0]
    again = engine.generate([req("r", max_tokens=10, seed=first.seed)])[0]
    assert again.seed == first.seed
    assert again.choices[0].text == first.choices[0].text


def test_per_row_max_tokens_and_usage(engine: Engine) -> None:
    results = engine.generate(
        # greedy: a random tiny model's argmax never is EOS, so both rows run to their limit
        [
            req("short", temperature=0, max_tokens=3),
            req("long", PROMPTS[1], temperature=0, max_tokens=20),
        ]
    )
    by_id = {r.request_id: r for r in results}
    for rid, limit in (("short", 3), ("long", 20)):
        choice = by_id[rid].choices[0]
        assert choice.finish_reason == "length"
        assert choice.completion_tokens == limit
        assert by_id[rid].completion_tokens == limit
    assert by_id["short"].prompt_tokens == engine.count_tokens("Hello world")
    assert by_id["long"].prompt_tokens == engine.validate(req("x", PROMPTS[1]))


def test_stop_strings_trim_the_text(engine: Engine) -> None:
    seed, full = long_sample(engine)
    stop = full[8:10]
    stopped = engine.generate([req("s", seed=seed, max_tokens=24, stop=("never-there", stop))])
    choice = stopped[0].choices[0]
    assert choice.text == full[: full.index(stop)]
    assert choice.finish_reason == "stop"
    assert 1 <= choice.completion_tokens < 24


def test_stop_in_one_row_does_not_touch_the_others(engine: Engine) -> None:
    seed, full = long_sample(engine)
    stop = full[6:8]
    results = engine.generate(
        [
            req("stopped", seed=seed, max_tokens=24, stop=(stop,)),
            req("free", seed=seed, max_tokens=24),
        ]
    )
    assert texts(results) == {"stopped": [full[: full.index(stop)]], "free": [full]}


def test_abort_stops_only_that_request(engine: Engine) -> None:
    results = engine.generate(
        [req("gone", seed=1, max_tokens=30), req("kept", temperature=0, max_tokens=30)],
        should_abort=lambda request_id: request_id == "gone",
    )
    gone, kept = results
    assert gone.choices[0].finish_reason == "stop"
    assert gone.choices[0].completion_tokens == 0  # flagged before it started: never decoded
    assert kept.choices[0].finish_reason == "length"
    assert kept.choices[0].completion_tokens == 30


def test_empty_batch(engine: Engine) -> None:
    assert engine.generate([]) == []


def test_duplicate_request_ids_are_refused(engine: Engine) -> None:
    with pytest.raises(ValueError):
        engine.generate([req("same"), req("same")])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_requests_longer_together_than_the_context_still_run(
    arch: str, engine: Engine, gpt2_engine: Engine
) -> None:
    # Together they span more than GPT-2's 256 learned positions; they still share a batch
    # because every row counts its own positions (padding never shifts them).
    engine = engine if arch == "llama" else gpt2_engine
    limit = engine.max_model_len
    long_prompt = " ".join(["word"] * 200)
    prompt_len = engine.count_tokens(long_prompt)
    assert prompt_len + 200 > limit  # cannot share one padded batch
    requests = [
        req("long-prompt", long_prompt, temperature=0, max_tokens=limit - prompt_len),
        req("long-output", temperature=0, max_tokens=200),
    ]
    before = engine.stats()["prefills"]
    results = engine.generate(requests)
    assert engine.stats()["prefills"] == before + 1  # one batch
    assert [r.choices[0].completion_tokens for r in results] == [limit - prompt_len, 200]
    alone = {r.request_id: texts(engine.generate([r]))[r.request_id] for r in requests}
    assert texts(results) == alone


def test_gpt2_architecture(gpt2_engine: Engine) -> None:
    requests = [req("a", seed=1, max_tokens=8), req("b", PROMPTS[1], temperature=0, max_tokens=8)]
    alone = {r.request_id: texts(gpt2_engine.generate([r]))[r.request_id] for r in requests}
    assert texts(gpt2_engine.generate(requests[::-1])) == alone
    assert gpt2_engine.max_model_len == 256


def test_concurrent_callers_get_their_own_results(engine: Engine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    batches = [[req(f"{b}-{i}", seed=b * 10 + i, max_tokens=8) for i in range(3)] for b in range(4)]
    expected = [texts(engine.generate(batch)) for batch in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda batch: texts(engine.generate(batch)), batches))
    assert got == expected


def test_importing_the_engine_package_is_free() -> None:
    import subprocess
    import sys

    code = (
        "import sys, llmvm_ray.engine; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
