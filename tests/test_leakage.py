"""Leakage audit: k-mer prefilter and alignment identity against loops and Biopython directly, planted
homologs, identity clusters that never cross splits, shared DMS positions, and the audit's time on FLIP."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from bioft_tutorial import data, leakage

AA = np.array(list("ACDEFGHIKLMNPQRSTVWY"))


def random_chain(rng, length):
    return "".join(rng.choice(AA, length))


def mutate(rng, sequence, keep):
    """Replace each residue with a random amino acid with probability 1 - keep."""
    return "".join(c if rng.random() < keep else rng.choice(AA) for c in sequence)


def test_kmer_sets_and_prefilter_scores_match_python_sets():
    seqs = ["MKVLAAGMKV", "AAGMKX", "MK", "GGGGG", "mkvlU"]
    matrix = leakage.kmer_sets(seqs, k=3).toarray()
    sets = [{s.upper()[i:i + 3] for i in range(len(s) - 2)} for s in seqs]
    assert matrix.sum(1).tolist() == [len(s) for s in sets]  # distinct k-mers, counted once

    def code(kmer):
        return sum(("ACDEFGHIKLMNPQRSTVWY".find(c) if c in "ACDEFGHIKLMNPQRSTVWY" else 20) * 21 ** (2 - i)
                   for i, c in enumerate(kmer))
    for row, kmers in zip(matrix, sets):
        assert set(np.flatnonzero(row)) == {code(k) for k in kmers}
    q, r = leakage.kmer_sets(seqs[:2]), leakage.kmer_sets(seqs)
    scores = leakage.prefilter_scores(q, r)
    for i in range(2):
        for j in range(len(seqs)):
            expected = len(sets[i]) * len(sets[j]) / 21**3
            by_hand = (len(sets[i] & sets[j]) - expected) / np.sqrt(max(expected, 1.0))
            assert scores[i, j] == pytest.approx(by_hand)


def test_identity_is_identical_residues_over_the_shorter_chain():
    rng = np.random.default_rng(0)
    chain = random_chain(rng, 60)
    assert leakage.identity(chain, chain) == 1.0
    assert leakage.identity(chain[10:40], chain) == 1.0  # a fragment: 30 of its 30 residues
    one_change = chain[:30] + ("W" if chain[30] != "W" else "A") + chain[31:]
    assert leakage.identity(one_change, chain) == pytest.approx(59 / 60)
    # against Biopython's own alignment of the same pair, counted by hand from the aligned strings
    other = mutate(rng, chain, 0.6) + random_chain(rng, 40)
    alignment = leakage.make_aligner().align(chain, other)[0]
    top, bottom = alignment[0], alignment[1]
    same = sum(a == b and a != "-" for a, b in zip(top, bottom))
    assert leakage.identity(chain, other) == pytest.approx(same / 60)
    assert leakage.identity("WWWW", "PPPP") == 0.0  # no positive local alignment
    with pytest.raises(ValueError, match="empty sequence"):
        leakage.identity("", chain)


def test_planted_homologs_are_found_and_random_chains_stay_low():
    rng = np.random.default_rng(1)
    references = {f"r{i}": random_chain(rng, int(rng.integers(80, 300))) for i in range(300)}
    planted = {"q90": ("r5", 0.9), "q70": ("r77", 0.7), "q55": ("r150", 0.55)}
    queries = {name: mutate(rng, references[ref], keep) for name, (ref, keep) in planted.items()}
    queries["fresh"] = random_chain(rng, 150)
    table = leakage.nearest_identity(queries, references, progress=False)
    assert table["id"].tolist() == list(queries)  # input order
    for name, (ref, keep) in planted.items():
        row = table.set_index("id").loc[name]
        assert row["nearest"] == ref and row["identity"] >= keep - 0.1, (name, row.to_dict())
        # the exhaustive answer (every reference aligned) is the same chain
        exhaustive = max(references, key=lambda r: leakage.identity(queries[name], references[r]))
        assert exhaustive == ref
    assert table.set_index("id").loc["fresh", "identity"] < 0.35


def test_q3_by_identity_bins_chains_and_counts_their_residues():
    rng = np.random.default_rng(2)
    nearest = pd.DataFrame({"id": ["a", "b", "c", "d", "e"], "identity": [0.1, 0.25, 0.45, 0.95, 0.2]})
    chains = np.repeat(list("abcde"), [30, 20, 25, 10, 15])
    labels = rng.integers(0, 3, chains.size)
    labels[::7] = -100
    preds = np.where(rng.random(chains.size) < 0.6, labels, (labels + 1) % 3)
    table = leakage.q3_by_identity(labels, preds, chains, nearest, bins=(0, 0.3, 0.5, 1.0), n_resamples=500)
    assert table["identity"].tolist() == ["0–30 %", "30–50 %", "50–100 %"]
    for bin_chains, row in zip(["abe", "c", "d"], table.itertuples()):
        inside = np.isin(chains, list(bin_chains)) & (labels != -100)
        assert row.chains == len(bin_chains) and row.residues == inside.sum()
        assert row.q3 == pytest.approx(np.mean(labels[inside] == preds[inside]))
    assert table["low"].notna().tolist() == [True, False, False]  # one chain: no interval
    with pytest.raises(ValueError, match="have no identity, e.g. 'z'"):
        leakage.q3_by_identity([0], [0], ["z"], nearest)


def test_identity_clusters_match_exhaustive_single_linkage_and_never_cross_splits():
    rng = np.random.default_rng(3)
    families = [random_chain(rng, int(rng.integers(60, 200))) for _ in range(8)]
    sequences = {}
    for f, root in enumerate(families):
        for member in range(int(rng.integers(1, 5))):
            sequences[f"f{f}m{member}"] = root if member == 0 else mutate(rng, root, 0.75)
    clusters = leakage.identity_clusters(sequences, threshold=0.4, progress=False)
    ids = list(sequences)
    parent = list(range(len(ids)))  # independent single linkage: union-find over every pair

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if leakage.identity(sequences[ids[i]], sequences[ids[j]]) >= 0.4:
                parent[find(i)] = find(j)
    roots = [find(i) for i in range(len(ids))]
    same_cluster = clusters.to_numpy()[:, None] == clusters.to_numpy()[None, :]
    assert (same_cluster == (np.array(roots)[:, None] == np.array(roots)[None, :])).all()
    assert clusters.nunique() == len(families)
    split = leakage.cluster_split(clusters, fractions=(0.5, 0.25, 0.25), seed=0)
    assert set(split) <= {"train", "validation", "test"} and split.index.equals(clusters.index)
    assert (pd.crosstab(clusters, split) > 0).sum(axis=1).max() == 1  # each cluster in exactly one split


def test_cluster_split_fills_fractions_and_refuses_bad_ones():
    clusters = pd.Series(np.arange(1000) // 2, index=[f"c{i}" for i in range(1000)])  # 500 pairs
    split = leakage.cluster_split(clusters, seed=1)
    shares = split.value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.8, abs=0.01) and shares["test"] == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError, match="fractions"):
        leakage.cluster_split(clusters, fractions=(0.8, 0.3, 0.1))


def test_shared_positions_of_the_blat_splits():
    dms = data.load_blat_dms()
    for by in ("random", "position"):
        split = data.dms_split(dms, by=by, seed=0)
        shared = leakage.shared_positions(dms["position"], split)
        by_hand = set(dms.position[split == "train"]) & set(dms.position[split == "test"])
        assert set(shared.tolist()) == by_hand and list(shared) == sorted(shared)
        assert (len(shared) == 0) == (by == "position")
    with pytest.raises(ValueError, match="one split name per variant"):
        leakage.shared_positions([1, 2, 3], ["train", "test"])


@pytest.mark.slow
def test_audit_of_the_shipped_flip_test_chains_runs_in_under_a_minute():
    started = time.perf_counter()
    chains = data.load_flip_secondary_structure()
    test, train = chains[chains.split == "test"], chains[chains.split == "train"]
    table = leakage.nearest_identity(dict(zip(test.id, test.sequence)), dict(zip(train.id, train.sequence)),
                                     progress=False)
    seconds = time.perf_counter() - started
    print(f"FLIP audit, {len(test)} test chains against {len(train):,} training chains: {seconds:.1f} s; "
          f"highest identity {table.identity.max():.2f}")
    assert len(table) == 364 and table["nearest"].isin(set(train.id)).all()
    assert table["identity"].between(0, 1).all()
    assert seconds < 60
