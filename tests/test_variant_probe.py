"""variants.probe: exon-grouped folds (no exon on both sides, and what a leak would do), probe scores, sweep."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from bioft_tutorial.metrics import auroc
from bioft_tutorial.variants.embeddings import WindowEmbeddings
from bioft_tutorial.variants.probe import (best_probe, grouped_folds, layer_sweep, out_of_fold_scores, probe,
                                           variant_features)


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """Small scikit-learn fits run fastest on one BLAS thread (and do not fight other processes for the cores)."""
    with threadpool_limits(1):
        yield


def _exon_world(seed: int = 0, n_exons: int = 12, per_exon: int = 40):
    """Variants whose label depends only on their exon (each exon is mostly LOF or mostly not), and features
    that say which exon a variant is in and nothing else about it."""
    rng = np.random.default_rng(seed)
    exons = np.repeat(np.arange(n_exons), per_exon)
    rate = rng.permutation(np.linspace(0.05, 0.95, n_exons))
    labels = (rng.random(exons.size) < rate[exons]).astype(int)
    features = np.eye(n_exons)[exons] + 0.01 * rng.normal(size=(exons.size, n_exons))
    return features, labels, np.array([f"X{e}" for e in exons])


def test_no_exon_is_on_both_sides_and_every_variant_is_tested_once():
    _, labels, exons = _exon_world()
    folds = grouped_folds(exons, n_splits=5)
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(exons.size))
    for train, test in folds:
        assert not set(exons[train]) & set(exons[test])
    with pytest.raises(ValueError, match="3 groups .* n_splits=5"):
        grouped_folds(np.array(["a", "b", "c"] * 4), n_splits=5)


def test_grouping_removes_the_leak_a_random_split_has():
    """A probe that can only recognise the exon looks good when exons are split across folds, and is at chance
    when they are not: the grouped score is the honest one."""
    features, labels, exons = _exon_world()
    leaky = cross_val_predict(probe(C=1.0), features, labels, cv=KFold(5, shuffle=True, random_state=0),
                              method="predict_proba")[:, 1]
    grouped = out_of_fold_scores(features, labels, exons, n_splits=5, C=1.0)
    assert auroc(labels, leaky) > 0.8
    assert abs(auroc(labels, grouped) - 0.5) < 0.15


def test_out_of_fold_scores_equal_fitting_each_fold_by_hand():
    rng = np.random.default_rng(1)
    features, labels, exons = rng.normal(size=(90, 4)), rng.integers(0, 2, 90), np.repeat(list("abcdef"), 15)
    got = out_of_fold_scores(features, labels, exons, n_splits=3, C=0.5)
    for train, test in grouped_folds(exons, 3):
        scaler = StandardScaler().fit(features[train])
        model = LogisticRegression(C=0.5, max_iter=2000).fit(scaler.transform(features[train]), labels[train])
        np.testing.assert_allclose(got[test], model.predict_proba(scaler.transform(features[test]))[:, 1], atol=1e-8)


def _embeddings(rng, n: int) -> tuple[WindowEmbeddings, WindowEmbeddings]:
    shape = (n, 2, 3)
    return (WindowEmbeddings([4, 7], rng.normal(size=shape), rng.normal(size=shape)),
            WindowEmbeddings([4, 7], rng.normal(size=shape), rng.normal(size=shape)))


def test_variant_features_combine_ref_and_alt():
    ref, alt = _embeddings(np.random.default_rng(2), 5)
    np.testing.assert_array_equal(variant_features(ref, alt, 7, "mean", "ref-minus-alt"), ref.mean[:, 1] - alt.mean[:, 1])
    np.testing.assert_array_equal(variant_features(ref, alt, 4, "variant", "alt"), alt.variant[:, 0])
    both = variant_features(ref, alt, 4, "variant", "concat")
    assert both.shape == (5, 6) and np.array_equal(both[:, 3:], alt.variant[:, 0])
    with pytest.raises(ValueError, match="contrast='diff'"):
        variant_features(ref, alt, 4, "variant", "diff")


def test_sweep_and_best_probe_use_only_what_they_are_given():
    rng = np.random.default_rng(3)
    ref, alt = _embeddings(rng, 120)
    labels, exons = (alt.mean[:, 1, 0] > 0).astype(int), np.repeat(list("abcdefgh"), 15)  # block 7, mean pooling
    sweep = layer_sweep(ref, alt, labels, exons, positions=np.arange(120) // 3, contrast="alt", n_splits=4,
                        n_resamples=200, progress=False)
    assert list(zip(sweep["layer"], sweep["pooling"])) == [(4, "variant"), (4, "mean"), (7, "variant"), (7, "mean")]
    assert ((sweep["low"] <= sweep["auroc"]) & (sweep["auroc"] <= sweep["high"])).all()
    assert sweep.set_index(["layer", "pooling"])["auroc"].idxmax() == (7, "mean")
    train = exons < "g"
    choice, fitted = best_probe(ref, alt, labels, exons, train, contrast="alt", n_splits=3)
    assert (choice["layer"], choice["pooling"]) == (7, "mean")
    held_out = fitted.predict_proba(variant_features(ref, alt, 7, "mean", "alt")[~train])[:, 1]
    assert auroc(labels[~train], held_out) > 0.9
