"""How examples travel to and from the teacher, and a parser that survives real output.

Three encodings:

- ``guided_json``: the examples as a JSON array, and the teacher is *constrained* to a JSON
  schema (``guided_json``, which our engine and vLLM understand), so every finished answer
  parses. Only for teachers we host or that support guided decoding.
- ``json``: the same text format, unconstrained. Remote teachers wrap it in code fences,
  number it, emit JSON lines instead of an array, add prose, or stop mid-object; the parser
  below recovers every complete object and counts what it could not read.
- ``delimited``: LLM-VM's shape: plain sections ``### PROMPT`` / ``### COMPLETION`` ending with
  the delimiter (``synthesis.example_delim``, ``<END>``). No quoting, so completions with
  quotes or newlines need no escaping, at the price of markers that could occur in data.

``benchmarks/synthesis.py`` measures parse success of ``json`` vs ``delimited`` on real
teacher output; neither loops: parsing is one pass and returns what it found.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

Encoding = Literal["guided_json", "json", "delimited"]
ENCODINGS: tuple[Encoding, ...] = ("guided_json", "json", "delimited")

PROMPT_KEYS = ("prompt", "input", "question", "instruction", "query")
COMPLETION_KEYS = ("completion", "response", "output", "answer", "target")

PROMPT_MARK = "### PROMPT"
COMPLETION_MARK = "### COMPLETION"

_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_LABELLED = re.compile(
    r"(?:^|\n)\s*(?:\d+[.)]\s*|[-*]\s*)?(?:prompt|input|question)\s*:\s*(?P<p>.*?)\n\s*"
    r"(?:completion|response|output|answer)\s*:\s*(?P<c>.*?)(?=\n\s*(?:\d+[.)]\s*|[-*]\s*)?"
    r"(?:prompt|input|question)\s*:|\n\s*\n|\Z)",
    re.DOTALL | re.IGNORECASE,
)


@dataclass
class Parsed:
    """What one teacher answer held: decoded records and the fragments that did not decode."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def generated(self) -> int:
        """Records the teacher wrote, as far as can be told (decoded or not)."""
        return len(self.records) + len(self.failures)


def json_schema(n: int, max_prompt_chars: int = 4000, max_completion_chars: int = 4000) -> dict:
    """The ``guided_json`` schema: an array of 1..n objects with non-empty string prompt and
    completion, bounded by the validation limits so a constrained answer is never invalid
    for its length and a weak teacher cannot run a string on until ``max_tokens``."""
    item = {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": max_prompt_chars},
            "completion": {"type": "string", "minLength": 1, "maxLength": max_completion_chars},
        },
        "required": ["prompt", "completion"],
        "additionalProperties": False,
    }
    return {"type": "array", "items": item, "minItems": 1, "maxItems": max(1, n)}


def format_instruction(encoding: Encoding, delim: str) -> str:
    """The words a template puts in ``{format}``."""
    if encoding == "delimited":
        return (
            f'each written as "{PROMPT_MARK}", the prompt, "{COMPLETION_MARK}", the completion '
            f'and "{delim}" on its own line'
        )
    return 'as a JSON array of objects with the keys "prompt" and "completion"'


def format_examples(encoding: Encoding, examples: list[dict[str, Any]], delim: str) -> str:
    """Seed examples written in the encoding the teacher should answer in."""
    if encoding == "delimited":
        return "\n".join(
            f"{PROMPT_MARK}\n{e['prompt']}\n{COMPLETION_MARK}\n{e['completion']}\n{delim}"
            for e in examples
        )
    pairs = [{"prompt": e["prompt"], "completion": e["completion"]} for e in examples]
    return json.dumps(pairs, ensure_ascii=False)


def parse(text: str, encoding: Encoding, delim: str, truncated: bool = False) -> Parsed:
    """Decode a teacher answer. ``truncated`` (finish_reason ``length``) marks the tail as
    suspect: a delimited last record without its delimiter is dropped and counted (a JSON
    object that decodes is complete by construction)."""
    if encoding == "delimited":
        out = parse_delimited(text, delim, truncated)
        if not out.records:  # a teacher that answered in JSON anyway is still read
            alt = parse_json(text, truncated)
            if alt.records:
                return alt
        return out
    out = parse_json(text, truncated)
    if not out.records:
        alt = parse_delimited(text, delim, truncated)
        if alt.records:
            return alt
    return out


# -- JSON, tolerant --------------------------------------------------------------------------


def _pair(obj: Any) -> dict[str, Any] | None:
    """``{"prompt", "completion"}`` from an object using any common key names, else None."""
    if not isinstance(obj, dict):
        return None
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    prompt = next((lowered[k] for k in PROMPT_KEYS if k in lowered), None)
    completion = next((lowered[k] for k in COMPLETION_KEYS if k in lowered), None)
    if prompt is None or completion is None:
        return None
    return {"prompt": prompt, "completion": completion}


def _records_of(value: Any) -> list[Any]:
    """Flatten a decoded JSON value to candidate objects (arrays, ``{"examples": [...]}``)."""
    if isinstance(value, list):
        return [x for v in value for x in _records_of(v)] if value else []
    if isinstance(value, dict):
        if _pair(value) is None:
            lists = [v for v in value.values() if isinstance(v, list)]
            if len(lists) == 1:
                return _records_of(lists[0])
        return [value]
    return [value]


def parse_json(text: str, truncated: bool = False) -> Parsed:
    out = Parsed()
    fenced = _FENCE.findall(text)
    body = "\n".join(fenced) if fenced else text
    decoder = json.JSONDecoder()
    i, n = 0, len(body)
    while i < n:
        start = _next_open(body, i)
        if start < 0:
            break
        try:
            value, end = decoder.raw_decode(body, start)
        except json.JSONDecodeError:
            # An unreadable '[' may still hold readable objects: step inside, don't skip it.
            if body[start] == "{":
                close = body.find("}", start)
                fragment = body[start : close + 1 if close >= 0 else n]
                out.failures.append(fragment[:500])
                if close < 0:
                    out.truncated = True
                    break
                i = close + 1
            else:
                i = start + 1
            continue
        for item in _records_of(value):
            pair = _pair(item)
            if pair is None:
                out.failures.append(json.dumps(item, ensure_ascii=False)[:500])
            else:
                out.records.append(pair)
        i = end
    # A JSON object that decoded had its closing quote and brace: complete even when the
    # answer as a whole was cut off, so nothing decoded is dropped for truncation.
    out.truncated = out.truncated or truncated
    return out


def _next_open(text: str, start: int) -> int:
    positions = [p for p in (text.find("{", start), text.find("[", start)) if p >= 0]
    return min(positions) if positions else -1


# -- delimited and labelled plain text --------------------------------------------------------


def parse_delimited(text: str, delim: str, truncated: bool = False) -> Parsed:
    out = Parsed()
    chunks = text.split(delim)
    tail = chunks.pop() if chunks else ""
    complete = [c for c in chunks if c.strip()]
    for chunk in complete:
        pair = _sections(chunk)
        if pair is None:
            out.failures.append(chunk.strip()[:500])
        else:
            out.records.append(pair)
    if tail.strip():
        pair = _sections(tail)
        if pair is None or truncated:
            # A last example without its delimiter was probably cut off: never trust it.
            out.failures.append(tail.strip()[:500])
            out.truncated = True
        else:
            out.records.append(pair)
    if not out.records:
        labelled = [
            {"prompt": m["p"].strip(), "completion": m["c"].strip()}
            for m in _LABELLED.finditer(text)
        ]
        if labelled:
            return Parsed(records=labelled, truncated=truncated)
    out.truncated = out.truncated or truncated
    return out


def _sections(chunk: str) -> dict[str, Any] | None:
    p = chunk.find(PROMPT_MARK)
    c = chunk.find(COMPLETION_MARK, p + 1 if p >= 0 else 0)
    if p < 0 or c < 0:
        return None
    prompt = chunk[p + len(PROMPT_MARK) : c]
    completion = chunk[c + len(COMPLETION_MARK) :]
    return {"prompt": _strip_line(prompt), "completion": _strip_line(completion)}


def _strip_line(text: str) -> str:
    """Drop the newline after a marker and the one before the next: keep inner spacing."""
    if text.startswith("\n"):
        text = text[1:]
    if text.endswith("\n"):
        text = text[:-1]
    return text
