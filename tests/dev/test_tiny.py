"""Tiny offline models: they reload as ordinary HF folders, are deterministic, have what
serving needs (pad/eos/chat template), and a short run on a task really teaches them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmvm_ray.dev.tiny import build_tiny_model, evaluate, train_on_task


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        arch: build_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch, seed=0)
        for arch in ("llama", "gpt2")
    }


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_round_trips_with_auto_classes(built: dict[str, Path], arch: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = built[arch]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch
    assert model.config.vocab_size == len(tok)
    assert model.config.num_hidden_layers == 2
    assert model.config.eos_token_id == tok.eos_token_id
    enc = tok("Input: March 5, 2021\nOutput:", return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= enc["input_ids"].shape[1] + 5


def test_tokenizer_has_what_serving_needs(built: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["llama"])
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    ids = tok("hello")["input_ids"]
    assert ids[0] == tok.bos_token_id  # BOS is prepended, like Llama's tokenizer
    text = 'héllo 世界 {"a": [1, 2.5e-3]}\n\ttabs'  # byte-level: anything encodes losslessly
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(tok.bos_token) and "hi" in rendered
    assert rendered.endswith("<|assistant|>\n")
    ids = tok.apply_chat_template(chat, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert tok.decode(ids) == rendered


def test_digits_and_task_words_are_spelled_out(built: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["llama"])
    pieces = tok.tokenize(" 2021-03-05 qzkfab")
    assert "".join(pieces).replace("Ġ", " ") == " 2021-03-05 qzkfab"
    assert all(len(p.replace("Ġ", "")) <= 1 for p in pieces)
    assert len(tok.tokenize("Reverse the letters of the word.")) <= 8  # known words merge


def test_build_is_deterministic(tmp_path: Path, built: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    again = build_tiny_model(tmp_path / "again", "llama", seed=0)
    other = build_tiny_model(tmp_path / "other", "llama", seed=1)
    first = built["llama"]
    assert (again / "tokenizer.json").read_bytes() == (first / "tokenizer.json").read_bytes()
    a, b = load_file(first / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    c = load_file(other / "model.safetensors")
    assert any(not a[k].equal(c[k]) for k in a)


def test_build_does_not_touch_global_rng(tmp_path: Path) -> None:
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", "gpt2", seed=4)
    assert torch.rand(3).equal(expected)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="arch"):
        build_tiny_model(tmp_path / "x", "bert")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_model(tmp_path / "y", hidden_size=30, num_heads=4)
    with pytest.raises(KeyError, match="available tasks"):
        build_tiny_model(tmp_path / "z", corpus_tasks=("nope",))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Train on one intra-op thread: barely slower on an idle 2-core machine, but with two
    threads every other busy process (Ray, parallel test runs) makes torch's spinning
    OpenMP workers crawl: one measured run went from ~10 s to ~290 s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_short_training_teaches_date(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "teacher", "llama", hidden_size=128, seed=0)
    untrained = evaluate(model_dir, "date", n=100)
    losses: list[tuple[int, float]] = []
    trained = train_on_task(
        model_dir,
        "date",
        steps=150,
        batch_size=32,  # measured: 98.6-100 % held-out with these settings (2 seeds)
        eval_n=100,
        progress=lambda step, loss: losses.append((step, loss)),
    )
    assert untrained <= 0.05
    assert trained >= 0.5, (untrained, trained)
    assert [s for s, _ in losses] == list(range(1, 151))
    assert losses[-1][1] < losses[0][1] / 5
    # The trained weights were saved back: a fresh load scores the same.
    assert evaluate(model_dir, "date", n=100) == trained
