"""Bootstrap intervals: the same resamples as a slow loop over scikit-learn/scipy, coverage on simulated data,
speed, and our errors."""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from bioft_tutorial import intervals


def reference_bootstrap(metric, n_items, groups, n_resamples, seed, level=0.95):
    """Slow reference: draw the documented resamples (rows of rng.integers over units), rebuild each resample's
    items unit by unit, score it with ``metric(items)``, take numpy's percentiles."""
    names, unit_of = np.unique(np.arange(n_items) if groups is None else groups, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, names.size, size=(n_resamples, names.size))
    members = [np.flatnonzero(unit_of == u) for u in range(names.size)]
    values = [metric(np.concatenate([members[u] for u in row])) for row in draws]
    return np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])


def safe_auroc(y, s):
    return roc_auc_score(y, s) if len(set(y)) == 2 else np.nan


@pytest.fixture
def small_case():
    rng = np.random.default_rng(3)
    n = 40
    labels = (rng.random(n) < 0.4).astype(int)
    scores = np.round(rng.normal(size=n) + labels, 1)  # rounded: ties inside resamples
    measured = np.round(rng.normal(size=n), 1)
    predicted = np.round(measured + rng.normal(size=n), 1)
    return labels, scores, measured, predicted, rng.integers(0, 12, n)


@pytest.mark.parametrize("grouped", [False, True])
def test_auroc_and_spearman_match_a_slow_loop_on_the_same_resamples(small_case, grouped):
    labels, scores, measured, predicted, groups = small_case
    groups = groups if grouped else None
    got = intervals.auroc_interval(labels, scores, groups=groups, n_resamples=300, seed=7)
    want = reference_bootstrap(lambda i: safe_auroc(labels[i], scores[i]), 40, groups, 300, 7)
    assert (got.low, got.high) == pytest.approx(tuple(want), abs=1e-12)
    assert got.estimate == pytest.approx(roc_auc_score(labels, scores))
    got = intervals.spearman_interval(measured, predicted, groups=groups, n_resamples=300, seed=7)
    want = reference_bootstrap(lambda i: stats.spearmanr(measured[i], predicted[i])[0], 40, groups, 300, 7)
    assert (got.low, got.high) == pytest.approx(tuple(want), abs=1e-12)
    assert (got.n_units, got.unit) == ((12, "group") if grouped else (40, "item"))


def test_q3_and_paired_differences_match_a_slow_loop(small_case):
    labels, scores, measured, predicted, _ = small_case
    rng = np.random.default_rng(5)
    chains = np.repeat(np.arange(15), rng.integers(1, 30, 15))
    y = rng.integers(0, 3, chains.size)
    y[rng.random(chains.size) < 0.1] = -100  # unlabelled residues are left out
    a = np.where(rng.random(chains.size) < 0.7, y, rng.integers(0, 3, chains.size))
    b = np.where(rng.random(chains.size) < 0.6, y, rng.integers(0, 3, chains.size))
    keep = y != -100
    yk, ak, bk, ck = y[keep], a[keep], b[keep], chains[keep]
    got = intervals.q3_interval(y, a, chains, n_resamples=300, seed=2)
    want = reference_bootstrap(lambda i: np.mean(yk[i] == ak[i]), yk.size, ck, 300, 2)
    assert (got.low, got.high) == pytest.approx(tuple(want), abs=1e-12)
    assert got.estimate == pytest.approx(np.mean(yk == ak)) and got.unit == "chain"
    got = intervals.difference_interval("q3", y, a, b, groups=chains, n_resamples=300, seed=2)
    want = reference_bootstrap(lambda i: np.mean(yk[i] == ak[i]) - np.mean(yk[i] == bk[i]), yk.size, ck, 300, 2)
    assert (got.low, got.high) == pytest.approx(tuple(want), abs=1e-12)
    other = scores + np.round(rng.normal(size=40), 1)
    got = intervals.difference_interval("auroc", labels, scores, other, n_resamples=300, seed=4)
    want = reference_bootstrap(lambda i: safe_auroc(labels[i], scores[i]) - safe_auroc(labels[i], other[i]),
                               40, None, 300, 4)
    assert (got.low, got.high) == pytest.approx(tuple(want), abs=1e-12)
    assert got.estimate == pytest.approx(roc_auc_score(labels, scores) - roc_auc_score(labels, other))


@pytest.mark.slow
def test_coverage_on_simulated_data():
    """Over 300 simulated test sets, about 95 % of the 95 % intervals cover the true value."""
    rng = np.random.default_rng(11)
    shift, rho = 1.0, 0.5
    true_auroc = stats.norm.cdf(shift / math.sqrt(2))  # positives ~ N(1, 1), negatives ~ N(0, 1)
    true_spearman = 6 / math.pi * math.asin(rho / 2)  # bivariate normal
    chain_accuracy = stats.beta(6, 3)  # true Q3 = E[length x accuracy] / E[length] = 2/3 (independent)
    covered = {"auroc": 0, "spearman": 0, "q3": 0}
    n_sims = 300
    for sim in range(n_sims):
        labels = rng.random(200) < 0.3
        scores = rng.normal(size=200) + shift * labels
        ci = intervals.auroc_interval(labels, scores, n_resamples=1000, seed=sim)
        covered["auroc"] += ci.low <= true_auroc <= ci.high
        x = rng.normal(size=150)
        y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=150)
        ci = intervals.spearman_interval(x, y, n_resamples=1000, seed=sim)
        covered["spearman"] += ci.low <= true_spearman <= ci.high
        lengths = rng.integers(20, 200, 60)
        chains = np.repeat(np.arange(60), lengths)
        right = rng.random(chains.size) < np.repeat(chain_accuracy.rvs(60, random_state=rng), lengths)
        ci = intervals.q3_interval(np.ones(chains.size, int), right.astype(int), chains, n_resamples=1000, seed=sim)
        covered["q3"] += ci.low <= 2 / 3 <= ci.high
    coverage = {name: round(float(count) / n_sims, 3) for name, count in covered.items()}
    print("coverage of 95 % intervals over", n_sims, "simulations:", coverage)
    for name, value in coverage.items():
        assert 0.90 <= value <= 0.99, (name, value)


def test_residue_resampling_would_be_too_narrow():
    """Resampling residues instead of chains understates the spread when chains differ."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 300, 40)
    chains = np.repeat(np.arange(40), lengths)
    right = rng.random(chains.size) < np.repeat(rng.uniform(0.3, 0.95, 40), lengths)
    ones = np.ones(chains.size, int)
    by_chain = intervals.q3_interval(ones, right.astype(int), chains, n_resamples=2000)
    by_residue = intervals.q3_interval(ones, right.astype(int), np.arange(chains.size), n_resamples=2000)
    assert by_residue.high - by_residue.low < 0.5 * (by_chain.high - by_chain.low)


def test_ten_thousand_resamples_of_four_thousand_variants_are_fast():
    rng = np.random.default_rng(1)
    labels = rng.random(4000) < 0.3
    scores, measured = rng.normal(size=4000) + labels, rng.normal(size=4000)
    seconds = {}
    for name, call in {"auroc": lambda: intervals.auroc_interval(labels, scores),
                       "spearman": lambda: intervals.spearman_interval(measured, scores)}.items():
        started = time.perf_counter()
        ci = call()
        seconds[name] = time.perf_counter() - started
        assert ci.n_resamples == 10_000 and ci.n_units == 4000
    print("10,000 resamples of 4,000 variants (s):", seconds)
    assert max(seconds.values()) < 5.0  # about 0.2 s (AUROC) and 0.35 s (Spearman) on two idle CPU cores


def test_interval_record():
    ci = intervals.Interval("auroc difference", 0.05, 0.01, 0.09, 0.95, 1000, "variant", 300)
    assert str(ci) == "0.050 [0.010, 0.090]" and ci.excludes_zero and ci.bounds(2) == "[0.01, 0.09]"
    assert not intervals.Interval("q3", 0.0, -0.01, 0.02, 0.95, 1000, "chain", 9).excludes_zero
    assert ci.as_dict()["unit"] == "variant"
    with pytest.raises(AttributeError):
        ci.low = 0.0  # frozen


def test_same_seed_same_interval_and_the_level_is_used():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=300), rng.normal(size=300)
    first, second = (intervals.spearman_interval(x, y, n_resamples=2000, seed=9) for _ in range(2))
    assert first == second
    narrow = intervals.spearman_interval(x, y, n_resamples=2000, seed=9, level=0.5)
    assert first.low < narrow.low < narrow.high < first.high


def test_warns_when_many_resamples_are_undefined(caplog):
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])  # one positive: most resamples have none
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.intervals"):
        intervals.auroc_interval(labels, np.arange(10.0), n_resamples=1000, unit="variant")
    assert "resamples leave the metric undefined" in caplog.text and "use more variants" in caplog.text


@pytest.mark.parametrize("call, message", [
    (lambda: intervals.auroc_interval([0, 1, 0, 1], [1, 2, 3, 4], groups=[1, 2, 3]), r"groups has 3 values for 4"),
    (lambda: intervals.auroc_interval([0, 1, 0, 1], [1, 2, 3, 4], groups=[1, 1, 1, 1]), r"all 4 items are in one"),
    (lambda: intervals.auroc_interval([0, 1, 0, 1], [1, 2, 3, 4], n_resamples=10), r"n_resamples=10"),
    (lambda: intervals.auroc_interval([0, 1, 0, 1], [1, 2, 3, 4], level=95), r"level=95"),
    (lambda: intervals.auroc_interval([0, 1, 2, 1], [1, 2, 3, 4]), r"0/1"),
    (lambda: intervals.difference_interval("q3", [0, 1], [0, 1], [1, 1]), r"needs groups="),
    (lambda: intervals.difference_interval("r2", [0, 1], [0, 1], [1, 1]), r"metric='r2'"),
    (lambda: intervals.q3_interval([0, 1, 2], [0, 1], [1, 2, 3]), r"3, 2 and 3 values"),
])
def test_bad_input_gives_our_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
