"""Random protein chains with real length statistics: for timing runs and for counting padding.

Throughput and memory of a training step depend on how many tokens a batch holds and how they split into
chains, not on which residues they are. These chains have random residues and random per-residue labels,
and lengths drawn from a log-normal distribution like real proteins': median 300 residues, most between 100
and 1,000 (UniProt's lengths are roughly log-normal around a few hundred residues), capped at the
1,022 residues ESM-2 takes. The FLIP secondary-structure training chains shipped with the package have a
median of 218 and a log-standard deviation of 0.63.

Nothing learned from these chains means anything. Needs only numpy.
"""
from __future__ import annotations

import math

import numpy as np

from .batching import IGNORE_INDEX, MAX_RESIDUES
from .sets import AMINO_ACIDS


def protein_lengths(n: int, seed: int = 0, median: float = 300.0, sigma: float = 0.6,
                    cap: int = MAX_RESIDUES, minimum: int = 30) -> np.ndarray:
    """Residues per chain, log-normal around ``median`` and clipped to ``[minimum, cap]``.

    Args:
        n: number of chains.
        seed: seed of the draw; same seed, same lengths.
        median: median length, residues.
        sigma: standard deviation of the natural log of the length.
        cap: longest chain (1,022 residues: what ESM-2 takes with ``<cls>`` and ``<eos>``).
        minimum: shortest chain.

    Returns:
        ``(n,)`` int64 array of residue counts (special tokens not included).
    """
    if n < 0 or not 1 <= minimum <= median <= cap:
        raise ValueError(f"need n >= 0 and 1 <= minimum <= median <= cap (got n={n}, minimum={minimum}, "
                         f"median={median}, cap={cap})")
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), minimum, cap).astype(np.int64)


def random_proteins(lengths, seed: int = 0) -> list[str]:
    """One random sequence of the 20 standard amino acids per length (uniform residues)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(AMINO_ACIDS))
    return ["".join(rng.choice(letters, int(n))) for n in lengths]


def random_chains(lengths, tokenizer, seed: int = 0, num_labels: int = 3,
                  unlabelled: float = 0.05) -> list[dict]:
    """Token-classification examples of random proteins, in the form training takes.

    Args:
        lengths: residues per chain (e.g. from :func:`protein_lengths`).
        tokenizer: an ESM-2 tokenizer (``get_vocab()``, ``cls_token_id``, ``eos_token_id``).
        seed: seed of the residues and labels.
        num_labels: classes of the per-residue labels (3, like H/E/C).
        unlabelled: share of residues whose label is ``-100`` (like unresolved residues).

    Returns:
        One dict per chain, in the order of ``lengths``: ``input_ids`` (``<cls>``, residues, ``<eos>``) and
        ``labels`` (one per token; ``-100`` on the special tokens and the unlabelled residues).
    """
    vocab = tokenizer.get_vocab()
    rng = np.random.default_rng(seed + 1)
    chains = []
    for sequence in random_proteins(lengths, seed):
        labels = rng.integers(0, num_labels, len(sequence))
        labels[rng.random(len(sequence)) < unlabelled] = IGNORE_INDEX
        chains.append({"input_ids": [tokenizer.cls_token_id, *(vocab[aa] for aa in sequence), tokenizer.eos_token_id],
                       "labels": [IGNORE_INDEX, *labels.tolist(), IGNORE_INDEX]})
    return chains
