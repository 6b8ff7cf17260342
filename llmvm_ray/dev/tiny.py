"""Tiny offline models: build one from nothing, teach it a task, measure it.

No weights are ever downloaded. ``build_tiny_model`` trains a byte-level BPE tokenizer on
generated task text and saves a randomly initialised 2-layer Llama or GPT-2 as an ordinary
Hugging Face folder, so every code path that loads "a real model" (engine, Serve, LoRA
training) can be exercised in seconds. ``train_on_task`` then turns such a folder into a
*competent teacher* for one of ``llmvm_ray.dev.tasks``, which is what end-to-end
distillation tests need: a teacher whose answers are right, so a student's accuracy means
something.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from llmvm_ray.config import TrainConfig
from llmvm_ray.dev.tasks import TASK_NAMES, Task, get_task
from llmvm_ray.train.data import Example, collate

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

Arch = Literal["llama", "gpt2"]

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
ROLE_NAMES = ("system", "user", "assistant")
ROLE_TOKENS = tuple(f"<|{role}|>" for role in ROLE_NAMES)

# Each message is "<|role|>\n{content}</s>\n"; generation starts after "<|assistant|>\n" and
# the model ends its turn with EOS, which every engine already treats as a stop token.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

TEACHER_HIDDEN_SIZE = 128
"""Hidden size ``make_teacher`` uses: 64 learns the date task far more slowly
(benchmarks/RESULTS.md, "Figures behind design choices") and 4 x 256 is slower to the same
accuracy (shared/ENVIRONMENT.md). Untrained models default to 64: faster, and accuracy is
moot."""

# Fixed extra text for the tokenizer corpus. Its words are known words, but BPE merges need
# a pair seen twice, so only those that recur in the corpus become whole tokens. Changing
# this text changes the tokenizer, and every accuracy measured with it (teacher steps,
# dev.student's recipe) would have to be measured again.
_EXTRA_CORPUS = (
    "You are a helpful assistant.",
    "Hello! How can I help you today?",
    "The quick brown fox jumps over the lazy dog.",
    '{"name": "value", "number": 123, "items": [1, 2, 3], "ok": true}',
)


def build_tiny_model(
    out_dir: str | Path,
    arch: Arch = "llama",
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 256,
    seed: int = 0,
    corpus_tasks: Sequence[str | Task] = TASK_NAMES,
) -> Path:
    """Save a random tiny causal LM and its tokenizer to ``out_dir``; return the folder.

    The folder reloads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` like any hub model.
    The tokenizer is byte-level BPE (every string encodes, so guided output and chat work),
    prepends BOS like Llama's, has EOS and PAD and a Jinja chat template. ``vocab_size`` is
    an upper bound: merges only form inside known words (see ``_build_tokenizer``), so the
    default corpus gives 393 tokens. The same arguments give byte-identical files.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    # A Task object (not only a registered name) lets callers bring their own corpus.
    tasks = [get_task(t) if isinstance(t, str) else t for t in corpus_tasks]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(vocab_size, tasks, seed)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config: Any
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=max_position_embeddings,
            tie_word_embeddings=True,
            **ids,
        )
        model_cls: Any = LlamaForCausalLM
    elif arch == "gpt2":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_position_embeddings,
            # No dropout, like the Llama config: a tiny model trained for a few hundred
            # steps on endless fresh data underfits, it never overfits.
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=True,
            **ids,
        )
        model_cls = GPT2LMHeadModel
    else:
        raise ValueError(f"unknown arch {arch!r}; expected 'llama' or 'gpt2'")

    # fork_rng: seeding must not disturb the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _tokenizer_corpus(tasks: Iterable[Task], seed: int, per_task: int = 2000) -> Iterator[str]:
    """Generated text the BPE merges are learned from: prompts, completions, scaffolding."""
    rng = random.Random(seed)
    for task in tasks:
        yield task.instruction
        for _ in range(per_task):
            x, y = task.sample(rng)
            yield task.format_prompt(x) + task.format_completion(y)
    for role in ROLE_NAMES:
        yield f"<|{role}|>\n"
    yield from _EXTRA_CORPUS


def _known_words(tasks: Sequence[Task], seed: int) -> list[str]:
    """Words that get whole-word BPE tokens: scaffolding, instructions, frequent inputs.

    A word is known when it appears in the fixed text (instructions, prompt scaffolding, chat
    roles, ``_EXTRA_CORPUS``) or in at least 1 % of a task's sampled examples (month names).
    Random task strings (the words of ``reverse``) are rare, so they stay spelled out.
    """
    from collections import Counter

    fixed = [t.format_prompt("") for t in tasks] + [*ROLE_NAMES, *_EXTRA_CORPUS]
    words = {w for text in fixed for w in re.findall(r"[^\W\d_]+", text)}
    rng = random.Random(seed)
    per_task = 500
    for task in tasks:
        counts: Counter[str] = Counter()
        for _ in range(per_task):
            x, y = task.sample(rng)
            counts.update(set(re.findall(r"[^\W\d_]+", f"{x} {y}")))
        words.update(w for w, c in counts.items() if c >= per_task // 100)
    return sorted(words, key=lambda w: (-len(w), w))


def _build_tokenizer(vocab_size: int, tasks: Sequence[Task], seed: int) -> Any:
    """Train byte-level BPE and wrap it as a transformers fast tokenizer.

    Pre-tokenization keeps known words (see ``_known_words``) whole, with GPT-2's leading
    space, and splits everything else into single characters, so BPE merges only ever form
    inside known words. Unknown strings and every number are therefore spelled character by
    character. That is deliberate: with ordinary BPE a 2-layer model could not learn to
    reverse random words (merges like "zk" hide the letters; benchmarks/RESULTS.md,
    "Figures behind design choices"), while per-character digits and letters let it learn
    date, reverse and sort in seconds.
    Bytes are the base alphabet, so any string still encodes.
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS]
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(byte_alphabet) + len(specials):
        raise ValueError(
            f"vocab_size must be at least {len(byte_alphabet) + len(specials)} "
            f"(256 bytes + {len(specials)} special tokens), got {vocab_size}"
        )
    words = _known_words(tasks, seed)
    # Oniguruma syntax: (?m:.) is "any character including newline".
    pattern = r" ?\b(?:" + "|".join(map(re.escape, words)) + r")\b|(?m:.)"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=byte_alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(tasks, seed), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, tok.token_to_id(BOS_TOKEN))],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=list(ROLE_TOKENS),
        model_max_length=None,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _load(model_dir_or_model: str | Path | PreTrainedModel, tokenizer: Any = None) -> Any:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(model_dir_or_model, str | Path):
        model = AutoModelForCausalLM.from_pretrained(model_dir_or_model)
        tok = tokenizer or AutoTokenizer.from_pretrained(model_dir_or_model)
    else:
        model = model_dir_or_model
        tok = tokenizer or AutoTokenizer.from_pretrained(model.name_or_path)
    return model, tok


def _encode_examples(
    tokenizer: Any, task: Task, rng: random.Random, n: int, instruction: bool
) -> list[Example]:
    """``n`` fresh training examples: prompt ids with BOS, completion ids with EOS.

    Prompt and completion are tokenized separately, exactly as at serving time where the
    prompt is encoded alone and the completion generated after it.
    """
    pairs = [task.sample_split(rng, "train") for _ in range(n)]
    prompts = tokenizer([task.format_prompt(x, instruction=instruction) for x, _ in pairs])
    texts = [task.format_completion(y) for _, y in pairs]
    completions = tokenizer(texts, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    return [
        Example(p, c + [eos], text)
        for p, c, text in zip(prompts["input_ids"], completions["input_ids"], texts, strict=True)
    ]


def fit(
    model: Any,
    next_batch: Callable[[], dict[str, torch.Tensor]],
    params: TrainConfig,
    *,
    steps: int,
    seed: int | None,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """The one plain PyTorch loop of the dev models (teacher training, student pretraining,
    the student recipe's LoRA check); returns the last step's loss.

    AdamW on the trainable parameters with ``params``' learning rate, weight decay and
    clipping, and the fine-tune pipeline's schedule (``train.strategy.lr_factor``), so a
    recipe measured here carries over to ``llmvm_ray.train``. ``next_batch()`` gives a
    ``train.data.collate`` batch; ``progress(step, loss)`` is called after every step
    (1-based). With a ``seed`` the loop runs seeded in a forked RNG, so the caller's global
    torch RNG is untouched; ``None`` leaves seeding to a caller that also seeds what it built
    (a LoRA adapter whose dropout continues that stream). The model is left in eval mode.
    """
    import contextlib

    import torch

    from llmvm_ray.train.strategy import lr_factor

    loss_value = float("nan")
    with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(params, steps))
        for step in range(steps):
            loss = model(**next_batch()).loss
            loss.backward()
            if params.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = float(loss.item())
            if progress is not None:
                progress(step + 1, loss_value)
    model.eval()
    return loss_value


def cosine_schedule(lr: float, warmup: int, weight_decay: float = 0.0) -> TrainConfig:
    """What the dev builders train from scratch with: linear warm-up, then cosine decay to
    10 % of ``lr`` (the decay turns a noisy ~90 % into ~100 % in the last steps), clip 1.0."""
    return TrainConfig(
        lr=lr,
        warmup_steps=warmup,
        lr_schedule="cosine",
        min_lr_ratio=0.1,
        weight_decay=weight_decay,
        max_grad_norm=1.0,
    )


def train_on_task(
    model_dir: str | Path,
    task: Task | str,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    instruction: bool = True,
    warmup_steps: int | None = None,
    eval_n: int = 200,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Train the model in ``model_dir`` on ``task``, save it back, return held-out accuracy.

    ``fit`` with ``cosine_schedule`` (warm-up ``steps // 20`` by default), loss on completion
    tokens only, EOS appended so the model learns to stop. Fresh training examples are drawn
    every step from the task's training split, so there is nothing to overfit.
    ``progress(step, loss)`` is called after every step (1-based). ``instruction=False``
    trains a student-style model on the dynamic prompt only.
    """

    task = get_task(task) if isinstance(task, str) else task
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    model, tokenizer = _load(model_dir)
    rng = random.Random(seed)
    warmup = max(1, steps // 20) if warmup_steps is None else warmup_steps
    fit(
        model,
        lambda: collate(
            _encode_examples(tokenizer, task, rng, batch_size, instruction), tokenizer.pad_token_id
        ),
        cosine_schedule(lr, warmup),
        steps=steps,
        seed=seed,
        progress=progress,
    )
    model.save_pretrained(model_dir)
    return evaluate(model, task, n=eval_n, instruction=instruction, tokenizer=tokenizer)


def generate_greedy(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy completions (special tokens dropped) for ``prompts``, batched, left-padded."""
    import torch

    saved_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer(
                    list(prompts[start : start + batch_size]), return_tensors="pt", padding=True
                )
                gen = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                new = gen[:, enc["input_ids"].shape[1] :]
                outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = saved_side
    return outputs


def evaluate(
    model_dir_or_model: str | Path | PreTrainedModel,
    task: Task | str,
    *,
    n: int = 200,
    seed: int = 12345,
    instruction: bool = True,
    tokenizer: Any = None,
    batch_size: int = 100,
) -> float:
    """Greedy exact-match accuracy on ``n`` held-out examples (never seen in training).

    Held-out inputs are disjoint from training inputs by construction (see ``tasks``), so
    the seed only picks which held-out examples are used.
    """
    from llmvm_ray.dev.tasks import make_examples

    task = get_task(task) if isinstance(task, str) else task
    model, tok = _load(model_dir_or_model, tokenizer)
    model.eval()
    examples = make_examples(task, n, seed, instruction=instruction, split="heldout")
    longest = max(
        len(ids)
        for ids in tok([e["completion"] for e in examples], add_special_tokens=False)["input_ids"]
    )
    predictions = generate_greedy(
        model,
        tok,
        [e["prompt"] for e in examples],
        max_new_tokens=longest + 2,
        batch_size=batch_size,
    )
    correct = sum(task.score(p, e["target"]) for p, e in zip(predictions, examples, strict=True))
    return correct / max(1, n)


def make_teacher(
    out_dir: str | Path,
    task: Task | str,
    *,
    arch: Arch = "llama",
    steps: int | None = None,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Build a tiny model at teacher size and train it on ``task``; return its accuracy.

    ``steps`` defaults to ``task.teacher_steps``, measured to pass 95 % on 2 CPU cores.
    """
    task = get_task(task) if isinstance(task, str) else task
    build_tiny_model(out_dir, arch, hidden_size=TEACHER_HIDDEN_SIZE, seed=seed)
    return train_on_task(
        out_dir, task, steps=steps or task.teacher_steps, seed=seed, progress=progress
    )
