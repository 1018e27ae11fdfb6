"""A k-mer Markov model of DNA in pure numpy, and :func:`fit_kmer_background`, which fits it on the genome
outside the windows it will score (so it never saw the bases it scores).

:class:`KmerModel` implements the interface of :mod:`.interface`; it is the smoke profile's DNA model and a
baseline for neural ones.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .genome import Genome, as_genome
from .interface import check_reduce
from .io import standardize_variants
from .windows import DEFAULT_WINDOW, outside, reverse_complement, window_bounds

# A/C/G/T (either case) -> 0..3; anything else -> 4 ("not a base": its k-mers are not scored)
_CODE = np.full(256, 4, dtype=np.int8)
for _i, _b in enumerate("ACGT"):
    _CODE[ord(_b)] = _CODE[ord(_b.lower())] = _i


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
        self.bases_seen = 0  # bases of training sequence (one strand) given to fit()
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
        for seq in [sequences] if isinstance(sequences, str) else sequences:
            self.bases_seen += len(seq)
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


def fit_kmer_background(genome: Genome | str | Mapping[str, str], variants: pd.DataFrame,
                        window: int = DEFAULT_WINDOW, k: int = 6, **options) -> KmerModel:
    """A :class:`KmerModel` fitted on the genome outside every window that scoring ``variants`` will use.

    For each contig the variants are on, the sequence the genome holds minus the union of the variants'
    windows (:func:`~.windows.window_bounds`, clipped at the contig's ends) is counted, so the model has
    never seen a base it will be asked about. Variants on contigs the genome lacks, or outside the
    sequence it holds, are left to :func:`~.scoring.score_variants` to report.

    Args:
        genome: a :class:`~.genome.Genome`, a FASTA path or ``{contig: sequence}``.
        variants: chrom and pos (1-based) columns, as for :func:`~.scoring.score_variants`.
        window: the window length scoring will use (bases).
        k, options: passed to :class:`KmerModel` (``pseudocount``, ``both_strands``).

    Returns:
        The fitted model; ``bases_seen`` says on how many bases.

    Raises:
        ValueError: the windows leave no sequence to fit on (use a smaller window, or a FASTA with more
            sequence around the variants).
    """
    genome, std = as_genome(genome), standardize_variants(variants)
    model = KmerModel(k=k, **options)
    for chrom in pd.unique(std["chrom"]):
        contig = genome.find(chrom)
        if contig is None:
            continue
        positions = std.loc[std["chrom"] == chrom, "pos"].dropna().unique()
        spans = [window_bounds(int(p), window, contig.start, contig.end) for p in positions
                 if contig.start < int(p) <= contig.end]
        model.fit([piece for piece in outside(genome, contig.name, spans) if len(piece) >= k])
    if model.bases_seen == 0:
        raise ValueError(f"the {window:,}-base windows around the variants cover all the sequence the genome holds "
                         "on their contigs, so nothing is left to fit the k-mer model on; use a smaller window, or a "
                         "FASTA with more sequence around the variants")
    return model
