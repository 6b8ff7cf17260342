"""IncrementalDecoder gives, at every step, the text a decode of the whole completion gives.

Property-style: many seeded random token sequences (whole and cut-off multi-byte characters,
stray bytes that are invalid UTF-8, special tokens) for four tokenizers. The tiny model's
byte-level BPE is what the engine tests run; the byte tokenizer is ``test_tracking``'s; the
SentencePiece-style and WordPiece ones decode a window differently at its start (a dropped
leading space, no joining space), which is what the window's prefix is for, and byte
fallback is not local (one invalid byte turns a whole run of byte tokens into U+FFFD).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmvm_ray.engine import tracking
from llmvm_ray.engine.detokenizing import IncrementalDecoder
from llmvm_ray.engine.tracking import RowTracker
from tests.engine.helpers import ByteTokenizer
from tests.engine.test_tracking import plan

SNIPPETS = ("é", "€", "😀", "中文", " hello", " the", "ab", " .", "n't", "\n")


@dataclass
class Case:
    """A tokenizer, how to spell text in its ids, and its special and EOS ids."""

    tokenizer: Any
    encode: Callable[[str], list[int]]
    vocab_size: int
    specials: tuple[int, ...]
    eos: int

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def random_ids(self, rng: random.Random) -> list[int]:
        ids: list[int] = []
        for _ in range(rng.randint(1, 30)):
            kind = rng.random()
            if kind < 0.45:
                ids.append(rng.randrange(self.vocab_size))
            elif kind < 0.85:
                spelled = self.encode(rng.choice(SNIPPETS))
                ids += spelled[: rng.randint(1, len(spelled))] if kind < 0.6 else spelled
            else:
                ids.append(rng.choice(self.specials))
        return ids


def _fast(tok: Any, **specials: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def _byte_case(_: Path) -> Case:
    return Case(ByteTokenizer(), lambda s: list(s.encode()), 260, (256, 257, 258), 256)


def _tiny_bpe_case(tiny_llama: Path) -> Case:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    encode = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    return Case(tok, encode, len(tok), tuple(tok.all_special_ids), tok.eos_token_id)


def _sentencepiece_case(_: Path) -> Case:
    """Llama-2-style decoding: "▁" is a space, byte fallback, the first space stripped."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    pieces = ["▁", "▁the", "▁a", "a", "b", "é", "▁中", "文", "▁.", "."]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *byte_tokens, *pieces])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    fast = _fast(tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.add_tokens([AddedToken("<tool>", special=False)])

    def encode(text: str) -> list[int]:
        text = text.replace(" ", "▁")
        if text in vocab:
            return [vocab[text]]
        return [vocab[f"<0x{b:02X}>"] for b in text.encode()]

    return Case(fast, encode, len(fast), (0, 1, 2), 2)


def _wordpiece_case(_: Path) -> Case:
    """BERT-style decoding: a space before each token but the first, "##" joins."""
    from tokenizers import Tokenizer, decoders, models

    words = ["[UNK]", "[CLS]", "[SEP]", "the", "a", "##s", "##é", ".", "n't", "中", "##文", "😀"]
    vocab = {t: i for i, t in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = _fast(tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    encode = lambda s: [vocab.get(s.strip(), vocab["the"])]  # noqa: E731
    return Case(fast, encode, len(fast), (0, 1, 2), 2)


@pytest.fixture(
    scope="module",
    params=[_byte_case, _tiny_bpe_case, _sentencepiece_case, _wordpiece_case],
    ids=["bytes", "tiny-bpe", "sentencepiece", "wordpiece"],
)
def case(request: pytest.FixtureRequest, tiny_llama: Path) -> Case:
    return request.param(Path(tiny_llama))


def test_incremental_text_is_the_full_decode_at_every_step(case: Case) -> None:
    for seed in range(300):
        ids = case.random_ids(random.Random(seed))
        decoder = IncrementalDecoder(case.tokenizer)
        for k, token in enumerate(ids, 1):
            assert decoder.append(token) == case.decode(ids[:k]), (seed, ids[:k])


@pytest.mark.parametrize("build", [_sentencepiece_case, _wordpiece_case])
def test_the_window_start_is_decoded_in_context(build: Callable[[Path], Case]) -> None:
    """Decoded alone, these tokens lose the space their context gives them."""
    case = build(Path())
    ids = [t for s in (" the", " the", " .", "n't", " the") for t in case.encode(s)]
    assert "".join(case.decode([t]) for t in ids) != case.decode(ids)
    decoder = IncrementalDecoder(case.tokenizer)
    texts = [decoder.append(t) for t in ids]
    assert texts == [case.decode(ids[:k]) for k in range(1, len(ids) + 1)]


class FullDecoder:
    """The decoding ``IncrementalDecoder`` replaced: the whole completion, every step."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer, self._ids = tokenizer, []

    def append(self, token: int) -> str:
        self._ids.append(token)
        return self._tokenizer.decode(
            self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )


def _run(case: Case, rows: list[list[int]], stops: tuple[str, ...], max_tokens: int) -> list:
    """Every step's deltas, then each row's (text, finish reason, tokens)."""
    tracker = RowTracker([plan(stops, max_tokens)] * len(rows), case.tokenizer, [case.eos])
    out: list = []
    for step in range(max(map(len, rows))):
        live = [row for row, ids in enumerate(rows) if step < len(ids)]
        tracker.step(live, [rows[row][step] for row in live])
        out.append(tracker.take_deltas())
    tracker.finish_all("length")
    out.append(tracker.take_deltas())
    return out + [
        (tracker.text(r), tracker.finish_reason(r), tracker.completion_tokens(r))
        for r in range(len(rows))
    ]


def test_rows_stream_stop_and_finish_as_with_full_decodes(
    case: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same deltas, texts, finish reasons and token counts as decoding the whole completion
    each step (stop strings are cut from the decoded text, so they span tokens)."""
    rng = random.Random(0)
    for seed in range(200):
        rows = [case.random_ids(random.Random(seed * 2 + i)) for i in range(2)]
        text = case.decode(rows[0])
        starts = rng.sample(range(len(text)), min(len(text), rng.randint(0, 2)))
        stops = tuple(text[i : i + rng.randint(1, 3)] for i in starts)
        max_tokens = rng.randint(1, max(map(len, rows)) + 3)
        incremental = _run(case, rows, stops, max_tokens)
        with monkeypatch.context() as patch:
            patch.setattr(tracking, "IncrementalDecoder", FullDecoder)
            assert incremental == _run(case, rows, stops, max_tokens), (seed, rows, stops)
