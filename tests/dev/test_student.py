"""The pretrained student base and its LoRA recipe (no Ray; ~1 min on 2 CPU cores).

The base is pretrained once per module (~20-30 s). The LoRA check is short on purpose: it
only shows that the adapter learns ``date`` on this base clearly beyond the untrained
adapter; the recipe's full numbers come from ``python -m llmvm_ray.dev.student``.
"""

from __future__ import annotations

import re

import pytest

from llmvm_ray.dev.student import (
    STUDENT_LORA_RECIPE,
    distill_check,
    make_student_base,
    pretraining_corpus,
)

_WRITTEN = re.compile(
    r"(January|February|March|April|May|June|July|August|September|October"
    r"|November|December) (\d{1,2}), (\d{4})"
)
_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")


@pytest.fixture(scope="module")
def student_base(tmp_path_factory):
    losses: list[float] = []
    path = make_student_base(
        tmp_path_factory.mktemp("student"), progress=lambda step, loss: losses.append(loss)
    )
    return path, losses


def test_corpus_has_dates_but_never_the_date_mapping():
    docs = pretraining_corpus(5000, seed=0)
    assert docs == pretraining_corpus(5000, seed=0)
    written = [d for d in docs if _WRITTEN.search(d)]
    iso = [d for d in docs if _ISO.search(d)]
    assert len(written) > 200 and len(iso) > 200
    assert any("month 03" in d for d in docs)
    assert any(d.startswith("Reverse the letters") or "Sort the digits" in d for d in docs)
    # No document shows one date in both formats, and a written date is never a prompt.
    assert not [d for d in docs if _WRITTEN.search(d) and _ISO.search(d)]
    assert not [d for d in docs if re.search(r"Input: [A-Z][a-z]+ \d", d)]


def test_base_round_trips_with_auto_classes(student_base):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmvm_ray.dev.tiny import TEACHER_HIDDEN_SIZE, build_tiny_model

    path, losses = student_base
    assert losses and losses[-1] < losses[0] / 3, "pretraining must lower the LM loss"
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama"
    assert tokenizer.eos_token and tokenizer.pad_token and tokenizer.chat_template
    # Same tokenizer family as the teacher: identical ids for task text.
    teacher_tok = AutoTokenizer.from_pretrained(
        build_tiny_model(path.parent / "teacher", hidden_size=TEACHER_HIDDEN_SIZE)
    )
    text = "Input: March 5, 2021\nOutput: 2021-03-05"
    assert tokenizer(text)["input_ids"] == teacher_tok(text)["input_ids"]
    with torch.inference_mode():
        out = model.generate(**tokenizer("the date is", return_tensors="pt"), max_new_tokens=8)
    assert out.shape[1] > 3


def test_short_lora_run_learns_date_beyond_the_untrained_adapter(student_base, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmvm_ray.config import TrainConfig
    from llmvm_ray.dev.tasks import make_examples
    from llmvm_ray.dev.tiny import evaluate

    TrainConfig.model_validate(STUDENT_LORA_RECIPE)  # the recipe is valid fine-tune settings
    path, _ = student_base
    # PEFT starts LoRA's B at zero: an untrained adapter answers exactly like the base.
    untrained = evaluate(path, "date", n=100, instruction=False)
    assert untrained < 0.05, "the base must not know the date task already"

    adapter = tmp_path / "adapter"
    trained = distill_check(path, n=64, max_steps=300, eval_n=100, adapter_dir=adapter)
    assert trained.steps == 300
    assert trained.accuracy >= untrained + 0.5, trained

    # The saved adapter (LoRA on attention and MLP) works in PEFT mixed-adapter batches.
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(path), adapter, adapter_name="date"
    )
    model.eval()
    prompts = [e["prompt"] for e in make_examples("date", 4, seed=7, instruction=False)]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    greedy = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.inference_mode():
        mixed = model.generate(**enc, adapter_names=["date", "__base__"] * 2, **greedy)
        tuned = model.generate(**enc, **greedy)
        with model.disable_adapter():
            base = model.generate(**enc, **greedy)
    width = enc["input_ids"].shape[1]

    def texts(out):
        return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)

    mixed, tuned, base = texts(mixed), texts(tuned), texts(base)
    assert mixed == [tuned[0], base[1], tuned[2], base[3]]
    assert mixed[0] != base[0] or mixed[2] != base[2]
