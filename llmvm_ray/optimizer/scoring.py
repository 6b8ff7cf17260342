"""How closely a student's answer matches the teacher's: the gate's and the shadow's metric.

``exact`` compares verbatim; ``normalized`` ignores case, surrounding whitespace, runs of
whitespace and trailing punctuation (what users perceive as "the same answer"); ``token_f1``
is SQuAD-style bag-of-words F1 for free-text tasks; ``valid`` only asks whether the student's
output satisfies the task's guided-output constraint (for tasks where many answers are right).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence

from llmvm_ray.engine.types import GuidedSpec

_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\w+", re.UNICODE)
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def normalize(text: str) -> str:
    return _WS.sub(" ", text.strip().lower()).rstrip(".!?;:,")


def token_f1(prediction: str, reference: str) -> float:
    pred = _TOKEN.findall(prediction.lower())
    ref = _TOKEN.findall(reference.lower())
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def is_valid(text: str, guided: GuidedSpec | None) -> bool:
    """Whether ``text`` satisfies ``guided`` (any text is valid without a constraint)."""
    if guided is None:
        return True
    if guided.choices is not None:
        return text in guided.choices
    if guided.regex is not None:
        try:
            return re.fullmatch(guided.regex, text) is not None
        except re.error:
            return False
    if guided.type is not None:
        pattern = _INTEGER if guided.type == "integer" else _FLOAT
        return pattern.fullmatch(text.strip()) is not None
    try:
        value = json.loads(text)
    except ValueError:
        return False
    import jsonschema

    try:
        jsonschema.validate(value, guided.json_schema or {})
    except jsonschema.ValidationError:
        return False
    return True


def score(metric: str, prediction: str, reference: str, guided: GuidedSpec | None = None) -> float:
    """One answer's score in [0, 1] under ``metric``."""
    if metric == "exact":
        return float(prediction == reference)
    if metric == "normalized":
        return float(normalize(prediction) == normalize(reference))
    if metric == "token_f1":
        return token_f1(prediction, reference)
    if metric == "valid":
        return float(is_valid(prediction, guided))
    raise ValueError(f"unknown metric {metric!r}")


def mean_score(
    metric: str,
    predictions: Sequence[str],
    references: Sequence[str],
    guided: GuidedSpec | None = None,
) -> float:
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        return 0.0
    total = sum(score(metric, p, r, guided) for p, r in zip(predictions, references, strict=True))
    return total / len(predictions)


def agrees(metric: str, prediction: str, reference: str, guided: GuidedSpec | None) -> bool:
    """A shadow comparison's verdict: full marks under the metric (F1 counts from 0.5)."""
    value = score(metric, prediction, reference, guided)
    return value >= 0.5 if metric == "token_f1" else value == 1.0
