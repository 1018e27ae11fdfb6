"""Packed batches: many chains in one row, no padding, attention kept inside each chain.

A padded batch of proteins wastes compute on padding: chains are 50 to 1,022 residues long, so a batch
padded to its longest chain is often half padding. *Packing* concatenates chains into one row of a fixed
token budget and tells attention where each chain starts (``cu_seq_lens``, cumulative chain lengths),
so that a chain never attends to its neighbours; the rotary position of every token restarts at 0 at
each chain (``position_ids``). Nothing else in a transformer mixes tokens, so each chain gets exactly
the result it gets alone.

The batch is a dict for ``model(**batch)`` with Hugging Face's own names (those of
``DataCollatorWithFlattening``)::

    input_ids      (1, T)  int64   chains one after another, each with its <cls> ... <eos>
    position_ids   (1, T)  int64   0, 1, ... restarting at each chain
    labels         (1, T)  int64   -100 where nothing is learned (special tokens, unresolved residues)
    cu_seq_lens_q  (N+1,)  int32   chain boundaries: chain i is tokens cu[i]:cu[i+1]
    cu_seq_lens_k  (N+1,)  int32   the same (self-attention)
    max_length_q   int             longest chain (an upper bound is fine), tokens
    max_length_k   int             the same

:func:`bioft_tutorial.attention.enable_packed_attention` makes a model's attention respect the chain
boundaries. Collation works on numpy arrays or lists (e.g. from :meth:`bioft_tutorial.data.Examples.get`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from bioft_tutorial.data import IGNORE_INDEX, MAX_RESIDUES

#: Tokens of the longest chain: :data:`~bioft_tutorial.data.MAX_RESIDUES` residues plus <cls> and <eos>.
MAX_TOKENS = MAX_RESIDUES + 2
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


# --------------------------------------------------------------------------------------------- batches
def pack_rows(lengths: Sequence[int], token_budget: int, *, max_chains: int | None = None,
              sort: bool = False, window: int = 256) -> list[list[int]]:
    """Assign chains to rows of at most ``token_budget`` tokens (first fit).

    Each chain goes into the first row with room for it among the ``window`` most recently opened rows
    (older rows count as full, which keeps the cost linear in the number of chains). With ``sort=True``
    chains are taken longest first ("first-fit decreasing", the tightest packing); with ``sort=False`` they
    keep the given order (shuffle first), so that every row holds a representative mix of lengths.

    Args:
        lengths: tokens per chain (special tokens included).
        token_budget: tokens per row.
        max_chains: at most this many chains per row (keeps ``cu_seq_lens`` a fixed size).
        sort: longest first.
        window: rows still open for new chains.

    Returns:
        Rows as lists of indices into ``lengths``, in the order rows were opened.

    Raises:
        ValueError: a chain longer than the budget.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort else range(len(lengths))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        if lengths[i] > token_budget:
            raise ValueError(f"chain {i} has {lengths[i]} tokens, more than token_budget={token_budget}; "
                             "crop chains to the model limit or raise the budget")
        for r in range(max(0, len(rows) - window), len(rows)):
            if room[r] >= lengths[i] and (max_chains is None or len(rows[r]) < max_chains):
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(token_budget - lengths[i])
    return rows


def collate_packed(examples: Sequence[dict], *, pad_to: int | None = None, max_chains: int | None = None,
                   max_length: int = MAX_TOKENS, pad_token_id: int = 1) -> dict:
    """Concatenate tokenized chains into one packed row (see the module docstring for the keys).

    Args:
        examples: dicts with ``input_ids`` (a list or 1-D array with the special tokens) and optionally
            ``labels`` (same length, ``-100`` where nothing is learned).
        pad_to: make the row exactly this many tokens (static shapes for ``torch.compile``). The tail is
            filled with padding "chains" of at most ``max_length`` tokens, labelled -100, attending only
            among themselves; ``max_length_*`` is then ``max_length`` for every batch.
        max_chains: pad ``cu_seq_lens`` to ``max_chains + 1`` entries by repeating the last one (empty
            chains), so its shape never changes either. Counts the padding chains.
        max_length: the longest chain allowed, tokens.
        pad_token_id: token id of the padding (ESM-2: 1).

    Returns:
        The packed batch, on the CPU.

    Raises:
        ValueError: a chain longer than ``max_length``, a row longer than ``pad_to``, more chains than
            ``max_chains``, or labels of the wrong length.
    """
    if not examples:
        raise ValueError("no examples to pack; give at least one chain")
    ids = [np.asarray(ex["input_ids"], dtype=np.int64).ravel() for ex in examples]
    labels = [np.full(len(x), IGNORE_INDEX, dtype=np.int64) if ex.get("labels") is None
              else np.asarray(ex["labels"], dtype=np.int64).ravel() for ex, x in zip(examples, ids)]
    for n, (x, y) in enumerate(zip(ids, labels)):
        if len(y) != len(x):
            raise ValueError(f"example {n}: {len(y)} labels for {len(x)} tokens; give one label per token, -100 on "
                             "<cls>, <eos> and unresolved residues")
        if len(x) > max_length:
            raise ValueError(f"example {n} has {len(x)} tokens, more than max_length={max_length}; crop it "
                             f"(ESM-2 takes {MAX_RESIDUES} residues plus <cls> and <eos>)")
    lengths = [len(x) for x in ids]
    if pad_to is not None:
        if sum(lengths) > pad_to:
            raise ValueError(f"{sum(lengths)} tokens do not fit in pad_to={pad_to}; pack with pack_rows(..., "
                             "token_budget)")
        tail = pad_to - sum(lengths)
        for p in [max_length] * (tail // max_length) + ([tail % max_length] if tail % max_length else []):
            ids.append(np.full(p, pad_token_id, dtype=np.int64))
            labels.append(np.full(p, IGNORE_INDEX, dtype=np.int64))
            lengths.append(p)
    if max_chains is not None and len(lengths) > max_chains:
        raise ValueError(f"{len(lengths)} chains (padding chains included) exceed max_chains={max_chains}; pass "
                         "max_chains to pack_rows too, or raise it")
    cu = np.zeros(max(len(lengths), max_chains or 0) + 1, dtype=np.int32)
    cu[1:len(lengths) + 1] = np.cumsum(lengths)
    cu[len(lengths) + 1:] = cu[len(lengths)]
    longest = max_length if pad_to is not None else max(lengths)
    return {"input_ids": torch.from_numpy(np.concatenate(ids))[None],
            "position_ids": torch.from_numpy(np.concatenate([np.arange(n) for n in lengths]))[None],
            "labels": torch.from_numpy(np.concatenate(labels))[None], "cu_seq_lens_q": torch.from_numpy(cu),
            "cu_seq_lens_k": torch.from_numpy(cu.copy()), "max_length_q": longest, "max_length_k": longest}


def chains_per_row(token_budget: int) -> int:
    """The most chains :func:`static_collate` rows hold: one per 128 tokens of the budget (128 for 16,384).

    Variable-length attention launches blocks for every entry of ``cu_seq_lens``, empty ones included; a
    bound fixed by the shortest chain (hundreds of mostly empty entries) cost a quarter of the attention
    time of ESM-2 650M in the backward pass. Rows of shorter chains simply hold fewer tokens.
    """
    return max(1, token_budget // 128)


def static_collate(token_budget: int, max_chains: int | None = None, pad_token_id: int = 1) -> Callable[..., dict]:
    """A packed collate with few distinct shapes, for ``torch.compile(dynamic=False)``.

    Each row is padded to ``token_budget / 2**k`` tokens, the smallest such size (>= 1,024) that holds it, and
    ``cu_seq_lens`` to a fixed size that fits ``max_chains`` chains plus the padding chains. A run then
    compiles at most a handful of graphs, also after an out-of-memory back-off halves the token budget.

    Args:
        token_budget: tokens of the fullest row.
        max_chains: the most chains a row holds (default :func:`chains_per_row`); batch with
            ``data.token_budget_batches(..., max_examples=max_chains)``.
        pad_token_id: token id of the padding.

    Returns:
        ``collate(examples, pad_token_id=pad_token_id) -> dict``, like :func:`collate_packed`.
    """
    max_chains = chains_per_row(token_budget) if max_chains is None else max_chains
    if max_chains < 1:
        raise ValueError(f"max_chains={max_chains} must be >= 1 (chains per packed row)")
    max_chains = 8 * -(-(max_chains + -(-token_budget // MAX_TOKENS)) // 8)  # padding chains too, a multiple of 8

    def collate(examples: Sequence[dict], pad_token_id: int = pad_token_id) -> dict:
        tokens = sum(len(ex["input_ids"]) for ex in examples)
        pad_to = token_budget
        while pad_to // 2 >= max(tokens, MAX_TOKENS):
            pad_to //= 2
        return collate_packed(examples, pad_to=pad_to, max_chains=max_chains, pad_token_id=pad_token_id)
    return collate


def unpack(values: torch.Tensor, cu_seq_lens: torch.Tensor) -> list[torch.Tensor]:
    """Split per-token outputs of a packed row back into chains.

    Args:
        values: ``(1, T, ...)`` or ``(T, ...)``, e.g. logits ``(1, T, num_labels)``.
        cu_seq_lens: ``(N+1,)`` chain boundaries of the batch.

    Returns:
        One tensor ``(L_i, ...)`` per non-empty chain (padding chains included, last).
    """
    flat = values.reshape(-1, *values.shape[2:]) if values.dim() >= 2 and values.shape[0] == 1 else values
    bounds = cu_seq_lens.tolist()
    return [flat[s:e] for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
