"""Variant metrics (AUPRC, MCC, top recall, NDCG) against hand computations and scikit-learn; our errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from bioft_tutorial import metrics


def test_auroc_and_auprc_match_hand_computation_and_sklearn():
    labels = np.array([1, 0, 1, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.7, 0.3, 0.7])
    # AUROC: pairs (positive, negative) ordered right, ties one half: 9 pairs
    pairs = [(p, n) for p in scores[labels == 1] for n in scores[labels == 0]]
    by_hand = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert metrics.auroc(labels, scores) == pytest.approx(by_hand)
    # AUPRC as average precision: sum over thresholds of (recall step) x precision, thresholds 0.9, 0.8, 0.7, 0.3
    precision_at = {0.9: 1 / 1, 0.8: 1 / 2, 0.7: 3 / 5, 0.3: 3 / 6}
    recall_at = {0.9: 1 / 3, 0.8: 1 / 3, 0.7: 3 / 3, 0.3: 3 / 3}
    previous, by_hand = 0.0, 0.0
    for threshold in (0.9, 0.8, 0.7, 0.3):
        by_hand += (recall_at[threshold] - previous) * precision_at[threshold]
        previous = recall_at[threshold]
    assert metrics.auprc(labels, scores) == pytest.approx(by_hand)
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 300), rng.normal(size=300)
    assert metrics.auprc(y, s) == pytest.approx(skm.average_precision_score(y, s))


def test_mcc_binarises_scores_at_their_median_like_proteingym():
    labels = np.array([1, 1, 0, 0, 1, 0, 0, 1])
    scores = np.array([5.0, 3.0, 4.0, 1.0, 2.0, 0.0, 2.5, 6.0])  # median 2.75: 5, 3, 4, 6 predicted 1
    predicted = scores >= np.median(scores)
    tp = int(np.sum(predicted & (labels == 1)))
    tn = int(np.sum(~predicted & (labels == 0)))
    fp = int(np.sum(predicted & (labels == 0)))
    fn = int(np.sum(~predicted & (labels == 1)))
    by_hand = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert (tp, tn, fp, fn) == (3, 3, 1, 1)
    assert metrics.mcc(labels, scores) == pytest.approx(by_hand) == pytest.approx(0.5)
    # a score equal to the median counts as positive
    assert metrics.mcc([1, 0, 1], [2.0, 1.0, 2.0]) == pytest.approx(1.0)


def test_top_recall_by_hand():
    measured = np.arange(20, dtype=float)  # the 90th percentile is 17.1: items 18 and 19 are truly top
    predicted = measured.copy()
    predicted[19] = -1.0  # the model misses item 19 and puts item 17 in its top two instead
    # model's top: strictly above its own 90th percentile (16.1 after the change): items 17 and 18
    assert metrics.top_recall(measured, predicted) == pytest.approx(1 / 2)
    assert metrics.top_recall(measured, measured) == 1.0
    assert metrics.top_recall(measured, -measured) == 0.0


def test_ndcg_against_sklearn_and_a_hand_case():
    rng = np.random.default_rng(1)
    measured, predicted = rng.normal(size=200), rng.normal(size=200)
    gains = (measured - measured.min()) / (measured.max() - measured.min())
    expected = skm.ndcg_score(gains[None], predicted[None], k=20)  # k = floor(0.1 * 200)
    assert metrics.ndcg(measured, predicted) == pytest.approx(expected)
    # hand case: 10 items, k = 1: the model's top item has gain 0.5, the best possible gain is 1
    measured = np.array([0.0, 5.0, 10.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    predicted = np.array([0.0, 9.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert metrics.ndcg(measured, predicted) == pytest.approx(0.5)
    # k = 2: DCG = 0.5 / log2(2) + 1.0 / log2(3) with the model's order (item 1, then item 2)
    predicted[2] = 5.0
    by_hand = (0.5 + 1.0 / math.log2(3)) / (1.0 + 0.5 / math.log2(3))
    assert metrics.ndcg(measured, predicted, top=0.2) == pytest.approx(by_hand)
    assert metrics.ndcg(measured, measured) == pytest.approx(1.0)


def test_spearman_nan_for_undefined_and_an_error_for_nan_input():
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(stats.spearmanr([1, 2, 3, 4], [1, 3, 2, 4])[0])
    assert math.isnan(metrics.spearman([1, 1, 1], [1, 2, 3]))  # constant: undefined, not an error
    assert math.isnan(metrics.spearman([1.0], [2.0]))
    with pytest.raises(ValueError, match=r"measured|x has 1 NaN .*item 2"):
        metrics.spearman([1.0, np.nan, 3.0], [1, 2, 3])


@pytest.mark.parametrize("labels, scores, message", [
    ([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4], r"labels has the values \[0\.0, 1\.0, 2\.0\].*0/1"),
    ([0, 1, 1, 0], [0.1, np.nan, 0.3, np.nan], r"scores has 2 NaN .*item 2, 1-based.*on_invalid='skip'.*isfinite"),
    ([1, 1, 1], [0.1, 0.2, 0.3], r"labels are all 1 \(3 items\).*both classes"),
    ([0, 1, 1], [0.1, 0.2], r"labels has 3 values but scores has 2"),
])
def test_binary_metrics_give_our_errors(labels, scores, message):
    for metric in (metrics.auroc, metrics.auprc, metrics.mcc):
        with pytest.raises(ValueError, match=message):
            metric(labels, scores)


def test_top_metrics_refuse_too_few_items():
    with pytest.raises(ValueError, match=r"top=0.1 of 5 items keeps 0.*top \* n >= 1"):
        metrics.ndcg(np.arange(5.0), np.arange(5.0))
    with pytest.raises(ValueError, match="measured is constant"):
        metrics.ndcg(np.ones(20), np.arange(20.0))
