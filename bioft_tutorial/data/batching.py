"""Batches: length-bucketed plans under a token budget, and the padded collate (used by ``train`` and ``predict``).

Labels use -100 for "no label here" (special tokens, unresolved residues, residues owned by another crop,
padding): the value PyTorch's cross-entropy ignores. Needs only numpy and torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
#: Residues per chain: ESM-2 was trained on crops of 1,024 tokens (1,022 residues plus <cls> and <eos>).
MAX_RESIDUES = 1022


def token_budget_batches(lengths, token_budget: int, *, padded: bool = True, shuffle: bool = True,
                         seed: int = 0) -> list[list[int]]:
    """Length-bucketed batches under a token budget.

    Examples are sorted by length (ties broken at random), cut greedily into batches whose cost stays
    within ``token_budget``, and the batches are shuffled. The cost of a batch is ``n * longest`` when it
    is padded (padding counts, because the GPU computes it) or ``sum(lengths)`` when it is packed.

    Args:
        lengths: tokens per example (special tokens included).
        token_budget: the most tokens a batch may cost.
        padded: cost with padding (``True``) or packed without padding (``False``).
        shuffle: random tie-breaks and batch order (``False``: sorted, deterministic, for evaluation).
        seed: seed of that randomness; same seed, same batches.

    Returns:
        Lists of example indices, one per batch.

    Raises:
        ValueError: an example is longer than ``token_budget``; the message names it and the fix.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if token_budget < 1:
        raise ValueError(f"token_budget={token_budget} must be >= 1")
    if lengths.size and lengths.max() > token_budget:
        i = int(lengths.argmax())
        raise ValueError(f"example {i} has {lengths[i]} tokens, more than token_budget={token_budget}: a batch of one "
                         f"would not fit. Raise token_budget to at least {lengths[i]} or crop long chains "
                         "(data.crop_windows)")
    rng = np.random.default_rng(seed)
    tie = rng.random(lengths.size) if shuffle else np.arange(lengths.size)
    batches, current, longest, total = [], [], 0, 0
    for i in np.lexsort((tie, lengths)):
        n = int(lengths[i])
        cost = (len(current) + 1) * max(longest, n) if padded else total + n
        if current and cost > token_budget:
            batches.append(current)
            current, longest, total = [], 0, 0
        current.append(int(i))
        longest, total = max(longest, n), total + n
    if current:
        batches.append(current)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate_padded(examples: list[dict], pad_token_id: int = 1) -> dict[str, "torch.Tensor"]:
    """Pad a list of examples into one batch for ``model(**batch)``.

    Args:
        examples: dicts with ``input_ids`` (list of ints) and optionally ``labels`` (a list of ints
            per token, or one number per example).
        pad_token_id: the tokenizer's ``<pad>`` id (1 for ESM-2).

    Returns:
        ``input_ids`` (B, L) int64, ``attention_mask`` (B, L) int64 (1 = real token) and ``labels``:
        (B, L) int64 padded with -100 for per-token labels, or (B,) for per-example labels (float32
        for regression targets, int64 for class ids).
    """
    import torch

    longest = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, e in enumerate(examples):
        input_ids[row, : len(e["input_ids"])] = torch.as_tensor(e["input_ids"])
        attention_mask[row, : len(e["input_ids"])] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "labels" in examples[0]:
        first = examples[0]["labels"]
        if isinstance(first, (list, tuple, np.ndarray)):
            labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
            for row, e in enumerate(examples):
                labels[row, : len(e["labels"])] = torch.as_tensor(e["labels"])
        else:
            dtype = torch.float32 if isinstance(first, (float, np.floating)) else torch.long
            labels = torch.tensor([e["labels"] for e in examples], dtype=dtype)
        batch["labels"] = labels
    return batch
