"""What :func:`~.scoring.score_variants` needs from a DNA language model: three members.

Any object with these members can score variants (the k-mer model of :mod:`.kmer`, the torch models of
:mod:`.neural`, :class:`~.evo2_backend.Evo2LM`)::

    name: str                      # shown in tables; also keys the on-disk cache (or `cache_key` if present)
    max_length: int                # longest sequence, in bases, the model accepts
    log_likelihoods(seqs, reduce="mean") -> np.ndarray   # shape (len(seqs),), nats

``log_likelihoods`` returns, per sequence, the sum (``reduce="sum"``) or mean (``"mean"``) over *predicted
positions* of ``log p(base_i | bases before i)``, in nats. Which positions are predicted is the model's
business: a causal neural model predicts positions 1..L-1 (the first base has no context), a k-mer model
positions k-1..L-1. Ref and alt windows of a variant have the same length, so their difference is fair.

A backend may also offer ``log_likelihoods_shared_prefix(refs, alts, parent, split, reduce)``, which scores
alternate windows that equal their reference on ``[:split]`` without recomputing that shared part
(see :mod:`.neural`); scoring uses it when present.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

REDUCTIONS = ("mean", "sum")


@runtime_checkable
class DNALanguageModel(Protocol):
    """What :func:`~.scoring.score_variants` needs from a DNA language model."""

    name: str
    max_length: int

    def log_likelihoods(self, seqs: Sequence[str], reduce: str = "mean") -> np.ndarray:
        """Per-sequence log-likelihood in nats (sum or mean over predicted positions), shape ``(len(seqs),)``."""
        ...


def check_reduce(reduce: str) -> str:
    """Validate a ``reduce`` argument (``"mean"`` or ``"sum"``)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r}; use 'mean' (per predicted position) or 'sum' (whole sequence)")
    return reduce
