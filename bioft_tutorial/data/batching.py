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
                         seed: int = 0, max_examples: int | None = None) -> list[list[int]]:
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
        max_examples: at most this many examples per batch (packed rows: fewer chains per row keep the
            variable-length attention's grid small).

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
        if current and (cost > token_budget or len(current) == (max_examples or len(current) + 1)):
            batches.append(current)
            current, longest, total = [], 0, 0
        current.append(int(i))
        longest, total = max(longest, n), total + n
    if current:
        batches.append(current)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def padding_fraction(lengths, batches: list[list[int]]) -> float:
    """Share of the computed tokens that are padding when each batch is padded to its longest example.

    Args:
        lengths: tokens per example.
        batches: lists of indices into ``lengths`` (e.g. from :func:`token_budget_batches`).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    computed = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    return 1.0 - int(sum(lengths[b].sum() for b in batches)) / max(computed, 1)


def collate_padded(examples: list[dict], pad_token_id: int = 1, pad_to: int | None = None) -> dict[str, "torch.Tensor"]:
    """Pad a list of examples into one batch for ``model(**batch)``.

    Args:
        examples: dicts with ``input_ids`` (a list or array of ints) and optionally ``labels`` (ints per
            token, or one number per example), e.g. from :meth:`Examples.get`.
        pad_token_id: the tokenizer's ``<pad>`` id (1 for ESM-2).
        pad_to: pad every row to this many tokens (default: the longest example).

    Returns:
        ``input_ids`` (B, L) int64, ``attention_mask`` (B, L) int64 (1 = real token) and ``labels``:
        (B, L) int64 padded with -100 for per-token labels, or (B,) for per-example labels (float32
        for regression targets, int64 for class ids).
    """
    import torch

    ids = [np.asarray(e["input_ids"], dtype=np.int64) for e in examples]
    longest = max([len(x) for x in ids] + [pad_to or 0])
    input_ids = np.full((len(ids), longest), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(ids), longest), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, :len(x)], attention_mask[row, :len(x)] = x, 1
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}
    if "labels" in examples[0]:
        first = examples[0]["labels"]
        if np.ndim(first) == 1:
            labels = np.full((len(ids), longest), IGNORE_INDEX, dtype=np.int64)
            for row, e in enumerate(examples):
                labels[row, :len(e["labels"])] = e["labels"]
        else:
            kind = np.float32 if np.asarray(first).dtype.kind == "f" else np.int64
            labels = np.array([e["labels"] for e in examples], dtype=kind)
        batch["labels"] = torch.from_numpy(labels)
    return batch


class Examples:
    """Tokenized examples held as flat arrays: fast to batch, looked up by their index in the input.

    Built once from a ``datasets.Dataset`` or a list of dicts with ``input_ids`` (ints, special tokens
    included) and optionally ``labels``: ints per token (``-100`` = ignore), or one class id or float per
    example. Training and prediction both take their batches from here, so the data is read once.

    Attributes:
        lengths: (N,) tokens per example.
        n_targets: (N,) labelled targets per example (tokens not ``-100``, or 1 per sequence).
        per_token: labels are per token (``False``: one label per example, or no labels).
        regression: labels are floats (one value per example).
    """

    def __init__(self, data, name: str = "data"):
        if isinstance(data, Examples):  # already read: share its arrays
            self.__dict__.update(data.__dict__)
            return
        self.data, self.name = data, name
        columns = data.column_names if hasattr(data, "column_names") else (list(data[0]) if len(data) else [])
        if "input_ids" not in columns and len(data):
            raise ValueError(f"{name}: no 'input_ids' (columns: {columns}); tokenize the sequences first, e.g. with "
                             "data.secondary_structure_examples or data.sequence_regression_examples")
        ids = (data["input_ids"] if hasattr(data, "column_names") else [e["input_ids"] for e in data]) if len(data) else []
        self.lengths = np.array([len(x) for x in ids], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self._tokens = np.concatenate([np.asarray(x, dtype=np.int64) for x in ids]) if len(ids) else np.zeros(0, int)
        labels = None
        if "labels" in columns:
            labels = data["labels"] if hasattr(data, "column_names") else [e["labels"] for e in data]
        self._labels, self.per_token, self.regression = _label_arrays(labels, self.lengths, name)
        self.n_targets = (np.add.reduceat(self._labels != IGNORE_INDEX, self._offsets[:-1]).astype(np.int64)
                          if self.per_token and len(self) else np.ones(len(self), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def has_labels(self) -> bool:
        return self._labels is not None

    def labels_array(self) -> np.ndarray:
        """Every label: flat over tokens (per-token labels) or one per example."""
        return self._labels if self._labels is not None else np.zeros(0)

    def labels_of(self, i: int):
        """The labels of example ``i``: an int64 array per token, or one number."""
        if self.per_token:
            return self._labels[self._offsets[i]:self._offsets[i + 1]]
        return self._labels[i].item()

    def get(self, indices) -> list[dict]:
        """The examples at ``indices`` as dicts of ``input_ids`` (int64 arrays) and ``labels``."""
        out = []
        for i in indices:
            example = {"input_ids": self._tokens[self._offsets[i]:self._offsets[i + 1]]}
            if self._labels is not None:
                example["labels"] = self.labels_of(i)
            out.append(example)
        return out


def _label_arrays(labels, lengths: np.ndarray, name: str):
    """``(flat labels, per_token, regression)`` from a labels column; checks one label per token."""
    if labels is None or len(labels) == 0:
        return None, False, False
    if np.ndim(labels[0]) == 1:
        for i, (y, n) in enumerate(zip(labels, lengths)):
            if len(y) != n:
                raise ValueError(f"{name}[{i}]: {len(y)} labels for {n} tokens; give one label per token "
                                 "(-100 on <cls>, <eos> and residues without a label)")
        return np.concatenate([np.asarray(y, dtype=np.int64) for y in labels]), True, False
    flat = np.asarray(labels)
    if flat.dtype.kind not in "iuf" or flat.ndim != 1:
        raise ValueError(f"{name}: labels must be one number per example or a list of ints per token; "
                         f"got {type(labels[0]).__name__} values like {labels[0]!r}")
    return flat, False, flat.dtype.kind == "f"
