"""Leakage between splits: how close is each test chain to the training set, and splits that keep them apart.

A test chain nearly identical to a training chain measures memory, not generalisation. The audit gives each
query chain its highest sequence identity to any reference chain in two steps:

1. **Prefilter** (vectorised): the distinct k-mers (default 3-mers) each pair of chains shares, counted with
   one sparse matrix product, minus the count expected by chance for chains with that many k-mers; the
   ``candidates`` best-scoring reference chains of each query go on to step 2.
2. **Alignment**: a local (Smith-Waterman) alignment with BLOSUM62 and BLAST's protein gap costs (open 11,
   extend 1) by Biopython's ``PairwiseAligner``; **identity = identical aligned residues / length of the
   shorter chain**, CD-HIT's definition (Li and Godzik 2006), so a short local match cannot reach a high identity.

The prefilter can only miss pairs: a reported identity is the best of the aligned candidates, a lower bound on
the best over all reference chains. Planted in the FLIP training chains, a copy with half its residues
replaced at random was always among its query's 10 candidates, with 60 % replaced 4 times in 5, with 70 %
replaced 1 time in 5. So a pair above about 50 % identity is found; read identities below 40 % as "below about
40 %", not exactly (for six FLIP test chains aligned with every training chain, the best identity was up to 0.12
higher than the audit's, all of them below 0.37).
Needs numpy, pandas, scipy and biopython; :func:`q3_by_identity` uses :mod:`bioft_tutorial.intervals`.
"""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from bioft_tutorial import intervals, metrics

log = logging.getLogger(__name__)

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"  # any other letter counts as X (the 21st letter)
IDENTITY_BINS = (0.0, 0.3, 0.4, 0.5, 0.7, 0.9, 1.0)


def kmer_sets(sequences: Sequence[str], k: int = 3) -> sparse.csr_matrix:
    """Which k-mers each sequence contains: (n_sequences, 21**k) sparse 0/1 (letters other than the 20 amino
    acids count as X). Built without a loop over k-mers: all windows of all sequences at once."""
    lookup = np.full(256, 20, dtype=np.int64)
    lookup[np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)] = np.arange(20)
    lengths = np.array([len(s) for s in sequences])
    codes = lookup[np.frombuffer("".join(sequences).upper().encode("ascii", "replace"), dtype=np.uint8)]
    seq_of = np.repeat(np.arange(len(sequences)), lengths)
    start = np.arange(codes.size - k + 1)
    start = start[seq_of[start] == seq_of[start + k - 1]]  # windows that stay inside one sequence
    kmer = np.zeros(start.size, dtype=np.int64)
    for offset in range(k):
        kmer = kmer * 21 + codes[start + offset]
    matrix = sparse.csr_matrix((np.ones(start.size, dtype=np.float32), (seq_of[start], kmer)),
                               shape=(len(sequences), 21**k))
    matrix.data[:] = 1  # duplicates were summed: presence, not counts
    return matrix


def prefilter_scores(query_kmers: sparse.csr_matrix, reference_kmers: sparse.csr_matrix) -> np.ndarray:
    """(n_queries, n_references) distinct shared k-mers above chance, in standard deviations:
    ``(shared - expected) / sqrt(expected)`` with ``expected = kmers_q * kmers_r / 21**k``.

    Args:
        query_kmers, reference_kmers: :func:`kmer_sets` of the two sets (same ``k``).
    """
    shared = (query_kmers @ reference_kmers.T).toarray()
    expected = np.outer(query_kmers.sum(1).A1, reference_kmers.sum(1).A1) / query_kmers.shape[1]
    return (shared - expected) / np.sqrt(np.maximum(expected, 1.0))


def top_candidates(queries: Sequence[str], references: Sequence[str], candidates: int = 10, k: int = 3,
                   exclude_self: bool = False, block: int = 256) -> np.ndarray:
    """(n_queries, candidates) indices of each query's best reference chains by :func:`prefilter_scores`,
    best first; ``exclude_self`` (same set on both sides) leaves out the query itself. Computed in blocks of
    ``block`` queries, so that an all-against-all of 10,000 chains needs no 10,000 x 10,000 matrix."""
    query_kmers, reference_kmers = kmer_sets(queries, k), kmer_sets(references, k)
    keep = min(candidates, len(references) - int(exclude_self))
    top = np.empty((len(queries), keep), dtype=np.int64)
    for start in range(0, len(queries), block):
        scores = prefilter_scores(query_kmers[start:start + block], reference_kmers)
        if exclude_self:
            rows = np.arange(scores.shape[0])
            scores[rows, start + rows] = -np.inf
        top[start:start + block] = np.argsort(-scores, axis=1, kind="stable")[:, :keep]
    return top


def make_aligner():
    """Biopython's ``PairwiseAligner``: local, BLOSUM62, gap open -11 and extend -1 (BLAST's protein defaults)."""
    from Bio import Align
    from Bio.Align import substitution_matrices

    return Align.PairwiseAligner(mode="local", substitution_matrix=substitution_matrices.load("BLOSUM62"),
                                 open_gap_score=-11, extend_gap_score=-1)


def _for_blosum(sequence: str) -> str:
    """Upper case, with letters BLOSUM62 lacks (U, O, J, gaps) written as X."""
    return "".join(c if c in "ARNDCQEGHILKMFPSTWYVBZX" else "X" for c in sequence.upper())


def identity(a: str, b: str, aligner=None) -> float:
    """Identical residues of the best local alignment of ``a`` and ``b`` / length of the shorter one (0 to 1)."""
    if not a or not b:
        raise ValueError(f"empty sequence ({len(a)} and {len(b)} residues); every chain needs residues")
    aligner = aligner or make_aligner()
    a, b = _for_blosum(a), _for_blosum(b)
    if aligner.score(a, b) <= 0:
        return 0.0
    return aligner.align(a, b)[0].counts().identities / min(len(a), len(b))


def nearest_identity(queries: Mapping[str, str], references: Mapping[str, str], *, candidates: int = 10,
                     k: int = 3, exclude_self: bool = False, progress: bool = True) -> pd.DataFrame:
    """Each query chain's highest identity to any reference chain (prefilter, then alignment).

    Args:
        queries, references: ``{id: sequence}``, e.g. test and training chains.
        candidates: reference chains aligned per query (the best by the k-mer prefilter).
        exclude_self: for a set against itself (the same mapping twice): skip each chain's own entry.

    Returns:
        One row per query, in input order: ``id``, ``length``, ``nearest`` (reference id), ``nearest_length``,
        ``identity`` (0 to 1, identical residues / shorter length), ``prefilter_rank`` (0-based rank of the
        nearest chain among the candidates: often 0 means the prefilter and the alignment agree).
    """
    hits = candidate_identities(queries, references, candidates=candidates, k=k, exclude_self=exclude_self,
                                progress=progress)
    best = hits.sort_values(["query", "identity", "prefilter_rank"], ascending=[True, False, True])
    best = best.drop_duplicates("query").set_index("query").reindex(range(len(queries)))
    lengths = {name: len(seq) for name, seq in references.items()}
    return pd.DataFrame({"id": list(queries), "length": [len(s) for s in queries.values()],
                         "nearest": best["reference"].to_numpy(),
                         "nearest_length": best["reference"].map(lengths).to_numpy(),
                         "identity": best["identity"].to_numpy(), "prefilter_rank": best["prefilter_rank"].to_numpy()})


def candidate_identities(queries: Mapping[str, str], references: Mapping[str, str], *, candidates: int = 10,
                         k: int = 3, exclude_self: bool = False, progress: bool = True) -> pd.DataFrame:
    """Alignment identity of each query with its ``candidates`` best reference chains by the k-mer prefilter.

    Returns:
        One row per aligned pair: ``query`` (0-based query index), ``reference`` (id), ``prefilter_rank``
        and ``identity``.
    """
    query_ids, reference_ids = list(queries), list(references)
    if not query_ids or not reference_ids:
        raise ValueError(f"{len(query_ids)} query and {len(reference_ids)} reference chains; both need at least one")
    if exclude_self and query_ids != reference_ids:
        raise ValueError("exclude_self=True compares a set with itself: pass the same chains, in the same order, "
                         "as queries and references")
    top = top_candidates(list(queries.values()), list(references.values()), candidates, k, exclude_self)
    aligner, rows = make_aligner(), []
    for i in tqdm(range(len(query_ids)), desc="aligning candidates", unit="chain", disable=not progress):
        for rank, j in enumerate(top[i]):
            rows.append((i, reference_ids[j], rank,
                         identity(queries[query_ids[i]], references[reference_ids[j]], aligner)))
    return pd.DataFrame(rows, columns=["query", "reference", "prefilter_rank", "identity"])


def q3_by_identity(labels, preds, chains, nearest: pd.DataFrame, bins: Sequence[float] = IDENTITY_BINS,
                   n_resamples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Q3 of the test chains grouped by their identity to the training set, with chain-resampled intervals.

    Args:
        labels, preds: (N,) class ids per residue (``-100`` labels are left out).
        chains: (N,) the chain id of each residue.
        nearest: :func:`nearest_identity` of the test chains (``id``, ``identity``).
        bins: identity bin edges (0 to 1); a bin is ``(low, high]``, the first one includes ``low``.

    Returns:
        One row per bin: ``identity`` (the bin, e.g. ``"30–40 %"``), ``chains``, ``residues``, ``q3``, ``low``, ``high``
        (NaN interval for a bin of fewer than two chains).
    """
    labels, preds, chains = (np.asarray(a).ravel() for a in (labels, preds, chains))
    keep = labels != metrics.IGNORE_INDEX
    labels, preds, chains = labels[keep], preds[keep], chains[keep]
    identity_of = nearest.set_index("id")["identity"]
    unknown = sorted(set(chains) - set(identity_of.index))
    if unknown:
        raise ValueError(f"{len(unknown)} chain(s) with predictions have no identity, e.g. {str(unknown[0])!r}; run "
                         "nearest_identity on the same test chains")
    names = [f"{100 * low:g}–{100 * high:g} %" for low, high in zip(bins[:-1], bins[1:])]
    chain_bin = pd.cut(identity_of, list(bins), labels=names, include_lowest=True)
    residue_bin = chain_bin.reindex(chains).to_numpy()
    rows = []
    for name in chain_bin.cat.categories:
        inside = residue_bin == name
        n_chains = len(set(chains[inside]))
        row = {"identity": name, "chains": n_chains, "residues": int(inside.sum()),
               "q3": float(np.mean(labels[inside] == preds[inside])) if inside.any() else np.nan,
               "low": np.nan, "high": np.nan}
        if n_chains >= 2:
            ci = intervals.q3_interval(labels[inside], preds[inside], chains[inside], n_resamples=n_resamples,
                                       seed=seed)
            row.update(low=ci.low, high=ci.high)
        rows.append(row)
    return pd.DataFrame(rows)


def identity_clusters(sequences: Mapping[str, str], threshold: float = 0.3, *, candidates: int = 10, k: int = 3,
                      progress: bool = True) -> pd.Series:
    """Single-linkage clusters: two chains are linked when their identity is at least ``threshold``.

    Each chain is aligned with its ``candidates`` nearest chains by the k-mer prefilter (as in
    :func:`nearest_identity`), and the links found form connected components.

    Returns:
        Series of cluster numbers (0, 1, ...) indexed by sequence id, in input order.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold}; give an identity between 0 and 1, e.g. 0.3 for 30 %")
    ids = list(sequences)
    hits = candidate_identities(sequences, sequences, candidates=candidates, k=k, exclude_self=True,
                                progress=progress)
    linked = hits[hits["identity"] >= threshold]
    position = {name: i for i, name in enumerate(ids)}
    graph = sparse.coo_matrix((np.ones(len(linked)), (linked["query"].to_numpy(),
                                                       linked["reference"].map(position).to_numpy())),
                              shape=(len(ids), len(ids)))
    _, labels = connected_components(graph, directed=False)
    return pd.Series(labels, index=pd.Index(ids, name="id"), name="cluster")


def cluster_split(clusters: pd.Series, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> pd.Series:
    """Assign whole clusters to ``"train"``/``"validation"``/``"test"``, filling each split to about its
    fraction of the chains (clusters in a seeded random order), so that no cluster crosses two splits.

    Returns:
        Series of split names aligned with ``clusters``.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions={fractions}; give three non-negative fractions summing to 1")
    sizes = clusters.value_counts()
    order = np.random.default_rng(seed).permutation(sizes.index.to_numpy())
    cumulative = np.cumsum(sizes.loc[order].to_numpy()) / sizes.sum()
    edges = np.cumsum(fractions)[:2]
    names = np.array(["train", "validation", "test"])[np.searchsorted(edges, cumulative - 1e-12, side="left")]
    return clusters.map(dict(zip(order, names))).rename("split")


def shared_positions(positions, split, train: str = "train", test: str = "test") -> np.ndarray:
    """Positions (e.g. of a DMS split) that have variants in the test set and also in the training set.

    Args:
        positions: (N,) the mutated position of each variant (1-based).
        split: (N,) the split name of each variant.

    Returns:
        Sorted array of the shared positions: empty for a split by position.
    """
    positions, split = np.asarray(positions).ravel(), np.asarray(split).ravel()
    if positions.size != split.size:
        raise ValueError(f"positions has {positions.size:,} values but split has {split.size:,}; give one split name "
                         "per variant")
    return np.intersect1d(positions[split == train], positions[split == test])
