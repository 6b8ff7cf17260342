"""The tensor side of a running batch: KV cache, attention mask and positions of its rows.

``KVBatch`` is what lets requests join a batch that is already decoding (continuous
batching) without a paged-attention kernel: new rows are prefilled on their own, then their
cache is left-padded (or the running rows' cache is) to a common length and concatenated
along the batch dimension, as TGI's padded batches do. Every row keeps its own positions
(``position_ids`` count only its real tokens), so padding never shifts what a row sees and a
row's text does not depend on when it joined. Finished rows leave at once (their slots are
not decoded any more), and columns that every remaining row masks are cropped from the left,
so a batch that runs for hours holds no more than its longest live row.

Joining needs a cache made of plain ``DynamicLayer`` s (full attention: llama, gpt2, mistral
without a sliding window, ...). Other caches (sliding windows, linear attention) cannot be
padded that way; ``can_join`` is then False and the engine runs such a model one batch at a
time, which is still correct.

Why not transformers' own continuous batching (``generate_batch``): on CPU it was slower
than a padded batch at every batch size (ENVIRONMENT.md), and it has no per-row logits
processors, adapters or streaming of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class KVBatch:
    """Rows decoding together (see module docstring). Rows are addressed by position."""

    def __init__(self, device: torch.device, pad_token_id: int) -> None:
        self._device = device
        self._pad = pad_token_id
        self._cache: DynamicCache | None = None
        self._mask = torch.zeros((0, 0), dtype=torch.long, device=device)  # [rows, columns]
        self._next_position = torch.zeros((0,), dtype=torch.long, device=device)  # [rows]
        self.can_join = True  # until a prefill shows a cache that cannot be padded

    @property
    def rows(self) -> int:
        return int(self._mask.shape[0])

    @property
    def columns(self) -> int:
        """Cache length, padding included."""
        return int(self._mask.shape[1])

    def prefill(
        self,
        model: Any,
        prompts: Sequence[Sequence[int]],
        adapter_names: list[str] | None,
    ) -> torch.Tensor:
        """Run ``prompts`` as new rows appended after the running ones; return their
        next-token logits ``[len(prompts), vocab]``. Raises RuntimeError when rows are
        running and this model's cache cannot take joiners (check ``can_join`` first)."""
        if self.rows and not self.can_join:
            raise RuntimeError("this model's cache cannot take rows into a running batch")
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, prompt in enumerate(prompts):  # left padding: every prompt ends at the last column
            input_ids[r, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[r, width - len(prompt) :] = 1
        input_ids, mask = input_ids.to(self._device), mask.to(self._device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        logits = self._forward(model, input_ids, mask, positions, cache, adapter_names)
        lengths = mask.sum(-1)
        if not self.rows:
            self._cache, self._mask, self._next_position = cache, mask, lengths
        else:
            self._merge(cache, mask, lengths)
        self.can_join = all(type(layer) is DynamicLayer for layer in self._cache.layers)
        return logits

    def decode(
        self, model: Any, tokens: Sequence[int], adapter_names: list[str] | None
    ) -> torch.Tensor:
        """Append ``tokens[row]`` to every row and return the next logits ``[rows, vocab]``."""
        input_ids = torch.tensor(tokens, dtype=torch.long).unsqueeze(1).to(self._device)
        ones = torch.ones((self.rows, 1), dtype=torch.long, device=self._device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        positions = self._next_position.unsqueeze(1)
        self._next_position = self._next_position + 1
        return self._forward(model, input_ids, self._mask, positions, self._cache, adapter_names)

    def keep(self, positions: Sequence[int]) -> None:
        """Keep only the rows at ``positions`` (in that order); crop all-padding columns."""
        if len(positions) == self.rows:
            return
        if not positions:
            self._cache = None
            self._mask = self._mask[:0, :0]
            self._next_position = self._next_position[:0]
            return
        index = torch.tensor(list(positions), dtype=torch.long, device=self._device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask.index_select(0, index)
        self._next_position = self._next_position.index_select(0, index)
        used = self._mask.any(dim=0)
        first = int(used.nonzero()[0, 0]) if bool(used.any()) else self.columns
        if first and self.can_join:
            for layer in self._cache.layers:
                layer.keys = layer.keys[..., first:, :]
                layer.values = layer.values[..., first:, :]
            self._mask = self._mask[:, first:]

    # --- internals -----------------------------------------------------------------------
    def _forward(
        self,
        model: Any,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        adapter_names: list[str] | None,
    ) -> torch.Tensor:
        extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        return out.logits[:, -1, :]

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, lengths: torch.Tensor) -> None:
        """Append the rows of a separately prefilled ``cache`` to the running ones."""
        assert self._cache is not None
        columns = max(self.columns, int(mask.shape[1]))
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, columns), _left_pad(new.keys, columns)])
            old.values = torch.cat([_left_pad(old.values, columns), _left_pad(new.values, columns)])
        self._mask = torch.cat([_left_pad(self._mask, columns), _left_pad(mask, columns)])
        self._next_position = torch.cat([self._next_position, lengths])


def _left_pad(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """``tensor`` with zeros prepended along its sequence dimension up to ``columns``.

    The sequence dimension is the last one of a mask ``[rows, seq]`` and the one before last
    of cached keys and values ``[rows, heads, seq, head_dim]``."""
    dim = -1 if tensor.dim() == 2 else -2
    missing = columns - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
