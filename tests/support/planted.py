"""A planted-duplicates set for dedup tests and the dedup benchmark.

Originals are unrelated questions; each may have planted copies of three kinds: ``exact``
(the same text up to case and whitespace), ``near`` (small edits: a word, punctuation, a
typo) and ``paraphrase`` (same meaning, different words). A perfect deduper keeps every
original and drops every copy.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["original", "exact", "near", "paraphrase"]

PLANTED: tuple[tuple[str, tuple[tuple[Kind, str], ...]], ...] = (
    (
        "How do I reset my password on the company website?",
        (
            ("exact", "how do I reset my password on the company   website?"),
            ("near", "How do I reset my password on the company web site?"),
            ("paraphrase", "What are the steps to change a forgotten account password online?"),
        ),
    ),
    (
        "What is the boiling point of water at sea level in Celsius?",
        (
            ("exact", "What is the boiling point of water at sea level in Celsius?  "),
            ("near", "What's the boiling point of water at sea level in Celsius?"),
            ("paraphrase", "At what temperature in Celsius does water boil at sea level?"),
        ),
    ),
    (
        "Recommend a good book about the history of ancient Rome.",
        (
            ("near", "Recommend a good book about the history of ancient Rome!"),
            ("paraphrase", "Can you suggest a great read on the history of the Roman Empire?"),
        ),
    ),
    (
        "Translate 'good morning' into Spanish.",
        (("exact", "TRANSLATE 'GOOD MORNING' INTO SPANISH."),),
    ),
    (
        "How many legs does a spider have?",
        (("paraphrase", "What is the number of legs on a spider?"),),
    ),
    (
        "Write a haiku about autumn leaves falling.",
        (("near", "Write a haiku about the autumn leaves falling."),),
    ),
    ("Explain how photosynthesis works in plants.", ()),
    ("What is the capital city of Australia?", ()),
    ("Give me a recipe for vegetarian lasagna.", ()),
    ("Why is the sky blue during the day?", ()),
    ("Convert 100 US dollars to euros at today's rate.", ()),
    ("List three benefits of regular exercise.", ()),
)


def planted_rows() -> list[dict[str, str]]:
    """Rows in an interleaved order (originals first within each group), each with its
    ``kind`` and the ``group`` it belongs to."""
    rows = []
    for group, (original, copies) in enumerate(PLANTED):
        rows.append({"prompt": original, "completion": "x", "kind": "original", "group": group})
        rows += [
            {"prompt": text, "completion": "x", "kind": kind, "group": group}
            for kind, text in copies
        ]
    return rows
