"""Guided output (choices, regex, integer, float, JSON schema) with llguidance.

Why llguidance: on this stack it was the only library measured 100 % valid on every
constraint and vocabulary, it constrains rows of one batch independently, and it costs about
1.3x a plain decoding step (see ENVIRONMENT.md). Everything is expressed as an llguidance
grammar string; ``Guidance.compile`` builds, validates and caches it (validation is what turns
a bad regex or schema into a 400 before any decoding starts).

``GuidedRows`` holds one ``LLMatcher`` per constrained row of a running batch (other rows
untouched). Each step it fills the allowed-token bitmask of the constrained rows and applies
it eagerly (llguidance's own ``apply_token_bitmask_inplace`` is ``torch.compile``d and costs
~4.6 s on first use); once ``RowSampler`` has chosen, ``advance`` feeds every matcher its
row's token. Once a row's grammar is complete (the matcher is stopped) only EOS is allowed,
so the row ends with finish reason ``stop``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from llmvm_ray.engine.types import GuidedSpec
from llmvm_ray.errors import InvalidRequestError

if TYPE_CHECKING:
    import llguidance

logger = logging.getLogger(__name__)

# LLM-VM's type="integer" / type="float". Digit counts are bounded so a constrained row always
# completes within a known number of tokens instead of spelling digits until max_tokens.
INTEGER_REGEX = r"0|-?[1-9][0-9]{0,17}"
FLOAT_REGEX = r"-?(0|[1-9][0-9]{0,17})\.[0-9]{1,17}"

# JSON is generated compactly with json.dumps-style separators and no other whitespace:
# with free whitespace, weak models fill objects with spaces and newlines until max_tokens.
JSON_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
)

_GRAMMAR_CACHE_SIZE = 256


def _param_for(spec: GuidedSpec) -> str:
    """The request field an error about ``spec`` points at."""
    if spec.choices is not None:
        return "guided_choice"
    if spec.json_schema is not None:
        return "guided_json"
    return "guided_regex"


class Guidance:
    """Per-engine guided-output state: the llguidance tokenizer and a grammar cache.

    The ``LLTokenizer`` is built once, on first use (it takes a while for a large vocabulary:
    benchmarks/RESULTS.md, "Figures behind design choices").
    Thread-safe: ``compile`` may run in request threads while a batch decodes.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self._hf_tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_token_ids = list(eos_token_ids)
        self._lock = threading.Lock()
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._executor: llguidance.LLExecutor | None = None
        self._cache: OrderedDict[tuple[str, str], str] = OrderedDict()

    def lltokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._lltokenizer is None:
                import llguidance
                import llguidance.hf

                if not self._eos_token_ids:
                    raise InvalidRequestError("guided output needs a model with an EOS token")
                try:
                    self._lltokenizer = llguidance.hf.from_tokenizer(
                        self._hf_tokenizer,
                        n_vocab=max(self._vocab_size, len(self._hf_tokenizer)),
                        eos_token=self._eos_token_ids,
                    )
                except ValueError as exc:  # slow (non-Rust) tokenizers are not supported
                    raise InvalidRequestError(
                        f"guided output is not available for this model: {exc}"
                    ) from exc
                self._executor = llguidance.LLExecutor()
            return self._lltokenizer

    def compile(self, spec: GuidedSpec) -> str:
        """The llguidance grammar for ``spec``; InvalidRequestError if it is invalid."""
        from llguidance import LLMatcher

        key, build = self._recipe(spec)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        param = _param_for(spec)
        try:
            grammar = build()
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"invalid {param}: {exc}", param=param) from exc
        try:
            lltokenizer = self.lltokenizer()
        except InvalidRequestError as exc:
            raise InvalidRequestError(exc.message, param=param) from exc
        is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, lltokenizer)
        if is_error:
            raise InvalidRequestError(f"invalid {param}: {messages[0].strip()}", param=param)
        with self._lock:
            self._cache[key] = grammar
            while len(self._cache) > _GRAMMAR_CACHE_SIZE:
                self._cache.popitem(last=False)
        return grammar

    def rows(self) -> GuidedRows:
        """Fresh (stateful) matchers for one running batch."""
        lltokenizer = self.lltokenizer()
        assert self._executor is not None
        return GuidedRows(lltokenizer, self._executor)

    @staticmethod
    def _recipe(spec: GuidedSpec) -> tuple[tuple[str, str], Callable[[], str]]:
        from llguidance import LLMatcher

        if spec.choices is not None:
            choices = spec.choices
            if not choices or not all(isinstance(c, str) and c for c in choices):
                raise InvalidRequestError(
                    "guided_choice needs at least one choice and no empty strings",
                    param="guided_choice",
                )
            # JSON string literals are valid Lark literals: this escapes quotes, backslashes
            # and control characters in the choices.
            lark = "start: " + " | ".join(json.dumps(c) for c in choices)
            return ("choices", json.dumps(list(choices))), lambda: LLMatcher.grammar_from_lark(lark)
        if spec.regex is not None:
            regex = spec.regex
            if not isinstance(regex, str) or not regex:
                raise InvalidRequestError("guided_regex must not be empty", param="guided_regex")
            return ("regex", regex), lambda: LLMatcher.grammar_from_regex(regex)
        if spec.type is not None:
            if spec.type not in ("integer", "float"):
                raise InvalidRequestError(
                    f"type must be 'integer' or 'float', got {spec.type!r}", param="type"
                )
            regex = INTEGER_REGEX if spec.type == "integer" else FLOAT_REGEX
            return ("regex", regex), lambda: LLMatcher.grammar_from_regex(regex)
        schema = spec.json_schema or {"type": "object"}  # {} means "any JSON object"
        if not isinstance(schema, dict):
            raise InvalidRequestError("guided_json must be a JSON object", param="guided_json")
        try:
            text = json.dumps(schema, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"invalid guided_json: {exc}", param="guided_json") from exc
        return ("json", text), lambda: LLMatcher.grammar_from_json_schema(
            text, defaults=dict(JSON_OPTIONS)
        )


class GuidedRows:
    """Masks constrained rows to their grammar's allowed tokens (see module docstring).
    Rows are named by the caller's ids; rows never ``add`` ed here are unconstrained."""

    def __init__(self, lltokenizer: llguidance.LLTokenizer, executor: llguidance.LLExecutor):
        self._lltokenizer = lltokenizer
        self._executor = executor
        self._eos = int(lltokenizer.eos_token)
        self._matchers: dict[int, llguidance.LLMatcher] = {}
        self._words = (lltokenizer.vocab_size + 31) // 32
        self._shifts = torch.arange(32, dtype=torch.int32)

    def __bool__(self) -> bool:
        return bool(self._matchers)

    def add(self, row: int, grammar: str) -> None:
        from llguidance import LLMatcher

        self._matchers[row] = LLMatcher(self._lltokenizer, grammar)

    def drop(self, row: int) -> None:
        self._matchers.pop(row, None)

    def mask(self, scores: torch.Tensor, rows: Sequence[int]) -> None:
        """Set to -inf, in place, every token the grammar of ``rows[i]`` forbids in
        ``scores[i]``."""
        at = [i for i, row in enumerate(rows) if row in self._matchers]
        if not at:
            return
        matchers = [self._matchers[rows[i]] for i in at]
        bitmask = torch.zeros((len(at), self._words), dtype=torch.int32)
        # What llguidance.torch.fill_next_token_bitmask_par does; that module is not imported
        # because importing it runs a torch.compile decorator (dynamo start-up; see
        # benchmarks/RESULTS.md, "Figures behind design choices").
        self._executor.unsafe_compute_mask_ptr(
            [(matcher, i) for i, matcher in enumerate(matchers)],
            bitmask.data_ptr(),
            bitmask.shape[1] * bitmask.element_size(),
            len(at),
        )
        allowed = ((bitmask.unsqueeze(-1) >> self._shifts) & 1).view(len(at), -1).bool()
        for i, matcher in enumerate(matchers):
            if matcher.is_stopped() or matcher.is_error():  # grammar complete (or broken): end
                allowed[i].zero_()
                allowed[i, self._eos] = True
        vocab = scores.shape[-1]
        if allowed.shape[1] < vocab:  # logits wider than the tokenizer: extra ids never allowed
            allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]))
        allowed = allowed[:, :vocab].to(scores.device, non_blocking=True)
        index = torch.tensor(at, device=scores.device)
        scores[index] = scores[index].masked_fill(~allowed, float("-inf"))

    def advance(self, rows: Sequence[int], tokens: Sequence[int]) -> None:
        """Feed each constrained row's matcher the token the row just took."""
        for row, token in zip(rows, tokens, strict=True):
            matcher = self._matchers.get(row)
            if matcher is None or matcher.is_stopped() or matcher.is_error():
                continue
            if not matcher.consume_token(token):
                logger.warning("guided row %d left its grammar: %s", row, matcher.get_error())
