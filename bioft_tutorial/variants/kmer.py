"""The DNA language-model interface, and a k-mer Markov model that implements it in pure numpy.

Any object with these three members can score variants (:func:`~.scoring.score_variants`)::

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

import hashlib
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

REDUCTIONS = ("mean", "sum")
# A/C/G/T (either case) -> 0..3; anything else -> 4 ("not a base": its k-mers are not scored)
_CODE = np.full(256, 4, dtype=np.int8)
for _i, _b in enumerate("ACGT"):
    _CODE[ord(_b)] = _CODE[ord(_b.lower())] = _i


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


def encode_bases(seq: str) -> np.ndarray:
    """``"ACGTN"`` -> ``[0, 1, 2, 3, 4]`` (int8; any non-ACGT letter -> 4), case-insensitive."""
    return _CODE[np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)]


class KmerModel:
    """An order-(k-1) Markov model of DNA: ``p(x_i | x_{i-k+1} ... x_{i-1})`` from k-mer counts.

    Smoothing: add-``pseudocount`` (Lidstone), ``p(b | ctx) = (n(ctx, b) + a) / (n(ctx) + 4a)``, so an unseen
    k-mer gets a small, non-zero probability (with ``a = 1``, Laplace's rule). Counts come from both strands
    of the training sequences unless ``both_strands=False`` (DNA has no preferred strand).

    Scoring predicts positions ``k-1 .. L-1`` (the first ``k-1`` bases lack a full context); a k-mer that
    contains a non-ACGT letter (``N``) is skipped and not counted in the mean. Vectorised: a window's score is
    a sum of table look-ups, and windows of equal length are scored together as one ``(B, L)`` array, so the
    5,219 BRCA1 windows of 8,192 bp take about a second.

    Args:
        k: k-mer length (context = k-1 bases); 4^k table entries.
        pseudocount: the smoothing constant ``a`` (> 0).
        both_strands: also count the reverse complement of each training sequence.
    """

    max_length = 10**9
    batch_size = 256  # windows per call from score_variants (memory ~ 3 arrays x 8 bytes x batch x length)

    def __init__(self, k: int = 6, pseudocount: float = 1.0, both_strands: bool = True):
        if not 1 <= k <= 12:
            raise ValueError(f"k={k}: use 1 <= k <= 12 (the table has 4^k entries)")
        if pseudocount <= 0:
            raise ValueError(f"pseudocount={pseudocount}: must be > 0, or unseen k-mers get probability 0")
        self.k, self.pseudocount, self.both_strands = k, float(pseudocount), both_strands
        self.counts = np.zeros(4**k, dtype=np.int64)
        self._log_p: np.ndarray | None = None

    @property
    def name(self) -> str:
        return f"kmer-k{self.k}"

    @property
    def cache_key(self) -> str:
        """Name plus a digest of the fitted counts: refitting invalidates cached scores."""
        digest = hashlib.sha256(self.counts.tobytes() + repr(self.pseudocount).encode()).hexdigest()[:16]
        return f"{self.name}-{digest}"

    def _kmer_ids(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index (a base-4 number) of every k-mer along the last axis, and whether it is all-ACGT.

        ``codes`` of shape ``(..., L)`` gives two arrays of shape ``(..., L-k+1)``.
        """
        n = codes.shape[-1] - self.k + 1
        bad = codes >= 4
        digits = np.where(bad, 0, codes).astype(np.int64)
        ids = np.zeros(codes.shape[:-1] + (n,), dtype=np.int64)
        for j in range(self.k):  # Horner's rule: ids = ids * 4 + next base
            ids = ids * 4 + digits[..., j:j + n]
        n_bad = np.concatenate([np.zeros(codes.shape[:-1] + (1,), np.int64), np.cumsum(bad, axis=-1)], axis=-1)
        return ids, (n_bad[..., self.k:] - n_bad[..., :n]) == 0

    def fit(self, sequences: str | Iterable[str]) -> "KmerModel":
        """Add the k-mer counts of ``sequences`` (one string or many) and recompute the table. Returns self."""
        from .windows import reverse_complement

        for seq in [sequences] if isinstance(sequences, str) else sequences:
            strands = (seq, reverse_complement(seq.upper())) if self.both_strands else (seq,)
            for strand in strands:
                if len(strand) >= self.k:
                    ids, ok = self._kmer_ids(encode_bases(strand))
                    self.counts += np.bincount(ids[ok], minlength=4**self.k)
        table = self.counts.reshape(-1, 4) + self.pseudocount
        self._log_p = (np.log(table) - np.log(table.sum(axis=1, keepdims=True))).ravel()
        return self

    def _table(self) -> np.ndarray:
        if self._log_p is None:
            raise RuntimeError("KmerModel is not fitted; call .fit(training_sequences) first")
        return self._log_p

    def position_log_probs(self, seq: str) -> np.ndarray:
        """``log p(x_i | context)`` for ``i = k-1 .. L-1`` (nats, shape ``(L-k+1,)``); NaN where a k-mer has N."""
        if len(seq) < self.k:
            raise ValueError(f"sequence of {len(seq)} bases is shorter than k={self.k}")
        ids, ok = self._kmer_ids(encode_bases(seq))
        return np.where(ok, self._table()[ids], np.nan)

    def log_likelihoods(self, seqs: Sequence[str], reduce: str = "mean") -> np.ndarray:
        """Per-sequence log-likelihood (nats): sum or mean over scored positions. Shape ``(len(seqs),)``."""
        check_reduce(reduce)
        table, out = self._table(), np.empty(len(seqs))
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(seqs):
            by_length.setdefault(len(seq), []).append(i)
        for length, rows in by_length.items():
            if length < self.k:
                raise ValueError(f"sequence of {length} bases is shorter than k={self.k}")
            codes = encode_bases("".join(seqs[i] for i in rows)).reshape(len(rows), length)
            ids, ok = self._kmer_ids(codes)
            total = np.where(ok, table[ids], 0.0).sum(axis=1)
            out[rows] = total / np.maximum(ok.sum(axis=1), 1) if reduce == "mean" else total
        return out
