"""Incremental detokenizing: the text of a growing completion, a short window per token.

Decoding a row's whole completion at every step makes a row cost O(n²) in its length. Like
vLLM's and TGI's incremental detokenizers, ``IncrementalDecoder`` decodes only the latest
tokens each step, yet returns what a decode of the whole completion returns:

- The text the tokens after ``read`` add is the decode of ``ids[prefix:]`` minus the decode
  of ``ids[prefix:read]``. Starting the window before them keeps what a decoder does at the
  start of a sequence (SentencePiece drops its leading space, WordPiece puts no space
  before it) out of their text.
- ``read`` moves up only once the text does not end in U+FFFD: a byte-level BPE token can
  hold the first bytes of a character that later tokens complete, and until then that
  character decodes as U+FFFD.
- ``prefix`` then moves up to the old ``read``, unless the tokens in between added only
  whitespace: alone they may decode to nothing, and the check below needs text to compare.
- Where the window's decode does not begin with the decode of its older part, the decoder
  is not local there (byte fallback turns a whole run of byte tokens into U+FFFD once one
  of them is invalid), and that step decodes the whole completion, as every step did before.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDecoder:
    """The decoded text of a token sequence as tokens are appended (see module docstring).

    Decodes with ``skip_special_tokens=True`` and no clean-up of spaces, the flags the engine
    has always decoded completions with.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # where the window decoded each step starts
        self._read = 0  # _ids[: _read] decoded to _stable
        self._stable = ""

    def append(self, token: int) -> str:
        """Append ``token``; return the text of all tokens so far."""
        ids = self._ids
        ids.append(token)
        window = self._decode(ids[self._prefix :])
        known = self._decode(ids[self._prefix : self._read]) if self._read > self._prefix else ""
        local = window.startswith(known)
        text = self._stable + window[len(known) :] if local else self._decode(ids)
        added = text[len(self._stable) :]
        if added and not text.endswith(REPLACEMENT_CHAR):
            if not added.isspace():
                self._prefix = self._read
            self._stable, self._read = text, len(ids)
        return text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
