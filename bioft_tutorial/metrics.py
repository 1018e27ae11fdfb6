"""Metrics as pure functions of arrays (numpy in, Python floats or arrays out).

Wrappers over scikit-learn and scipy that fix the conventions used in the book: ``-100`` marks a
position to ignore (special tokens, unresolved residues), class ids follow ``data.SS_LABELS``.
The variant metrics follow ProteinGym's definitions (Notin et al. 2023): Spearman, AUROC and AUPRC,
NDCG and recall of the top 10 %, and MCC. Bad input (NaN scores, three classes, one class only,
arrays of different lengths) raises a ``ValueError`` that names the value, where it is and the fix.
Confidence intervals for these numbers live in :mod:`bioft_tutorial.intervals`.
"""
from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from bioft_tutorial.data import IGNORE_INDEX  # -100: a position to ignore


def _valid(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels, preds = np.asarray(labels).ravel(), np.asarray(preds).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} differ in shape")
    keep = labels != IGNORE_INDEX
    return labels[keep], preds[keep]


def q3_accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of residues whose 3-state class is right, over positions with a label (not ``-100``)."""
    y, p = _valid(labels, preds)
    if y.size == 0:
        raise ValueError("no labelled positions (all are -100); nothing to score")
    return float(skm.accuracy_score(y, p))


def per_class_accuracy(labels: np.ndarray, preds: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """Recall of each class (row-normalised diagonal of the confusion matrix); NaN for an absent class."""
    cm = confusion(labels, preds, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diag(cm) / cm.sum(axis=1)


def confusion(labels: np.ndarray, preds: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class (counts)."""
    y, p = _valid(labels, preds)
    return skm.confusion_matrix(y, p, labels=list(range(n_classes)))


def majority_baseline(labels: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent class (over labelled positions)."""
    y, _ = _valid(labels, labels)
    return float(np.bincount(y).max() / y.size)


def check_paired(x, y, names: tuple[str, str] = ("x", "y"), min_items: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as float arrays of one value per item, the same length, all finite.

    Raises:
        ValueError: naming the argument, the first bad item (1-based) and the fix.
    """
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} has {x.size:,} values but {names[1]} has {y.size:,}; give one of each per "
                         "item, in the same order")
    for name, values in zip(names, (x, y)):
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"{name} has {bad.sum():,} NaN or infinite values (first at item {bad.argmax() + 1}, 1-based), e.g. "
                "variants that scoring with on_invalid='skip' left unscored; keep the finite ones first "
                "(keep = np.isfinite(scores)) and report how many you dropped")
    if x.size < min_items:
        raise ValueError(f"{x.size} item(s): this metric needs at least {min_items}; check the filter that selected "
                         "them")
    return x, y


def check_binary(labels, scores, names: tuple[str, str] = ("labels", "scores")) -> tuple[np.ndarray, np.ndarray]:
    """Binary ``labels`` (0/1 or False/True, both present) and finite ``scores`` of the same length.

    Raises:
        ValueError: a third class, a single class, NaN scores or a length mismatch, with the fix.
    """
    y, s = check_paired(labels, scores, names)
    classes = np.unique(y)
    if not set(classes) <= {0.0, 1.0}:
        raise ValueError(f"{names[0]} has the values {classes[:6].tolist()}; a binary metric needs 0/1 (1 = positive "
                         f"class), e.g. labels = (table['class'] == 'LOF') for one class against the rest")
    if classes.size < 2:
        raise ValueError(f"{names[0]} are all {classes[0]:g} ({y.size:,} items): AUROC, AUPRC and MCC need both "
                         "classes; use more items or another split")
    return y.astype(int), s


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (scipy, average ranks for ties); NaN values are an error, not dropped.

    NaN (not an error) when fewer than two items or a constant ``x`` or ``y`` leave it undefined, so that
    training can warn about such a validation set and go on.
    """
    x, y = check_paired(x, y, min_items=0)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.spearmanr(x, y).statistic)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive; higher score = more positive).

    Ties count one half (the Mann-Whitney statistic).
    """
    return float(skm.roc_auc_score(*check_binary(labels, scores)))


def auprc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (scikit-learn's step-wise sum, no
    interpolation). Beside AUROC for imbalanced classes: chance is the fraction of positives, not 0.5."""
    return float(skm.average_precision_score(*check_binary(labels, scores)))


def mcc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Matthews correlation of binary ``labels`` with ``scores`` binarised as ProteinGym does.

    The rule: a score at or above the median of ``scores`` predicts 1, below it 0 (so about half the items
    are predicted positive, whatever the class balance). ``labels`` are the measurement binarised by the
    assay's own cutoff: ProteinGym's ``DMS_score_bin``.
    """
    y, s = check_binary(labels, scores)
    return float(skm.matthews_corrcoef(y, (s >= np.median(s)).astype(int)))


def top_recall(measured: np.ndarray, predicted: np.ndarray, top: float = 0.1) -> float:
    """Fraction of the truly top items (``measured`` above its ``1 - top`` quantile) that the model also puts in
    its top (``predicted`` above its ``1 - top`` quantile); ProteinGym's top-10 % recall. Higher = fitter.

    Quantiles are numpy's linear ones and "above" is strict, as in ProteinGym; 0 if no item is strictly above.
    """
    x, y = check_paired(measured, predicted, ("measured", "predicted"))
    _check_top(top, x.size)
    top_true = x > np.percentile(x, 100 * (1 - top))
    top_model = y > np.percentile(y, 100 * (1 - top))
    return float((top_true & top_model).sum() / top_true.sum()) if top_true.any() else 0.0


def ndcg(measured: np.ndarray, predicted: np.ndarray, top: float = 0.1) -> float:
    """Normalised discounted cumulative gain of the model's top ``k = floor(top * n)`` items (ProteinGym's NDCG).

    Gains are ``measured`` min-max scaled to [0, 1]; the item the model ranks r-th (1-based, by ``predicted``
    descending, ties in input order) adds ``gain / log2(r + 1)``; the sum is divided by that of the ideal
    ranking (by ``measured``). 1 = the model's top k are the truly best, in order.
    """
    x, y = check_paired(measured, predicted, ("measured", "predicted"))
    k = _check_top(top, x.size)
    if np.ptp(x) == 0:
        raise ValueError(f"measured is constant ({x.size:,} items): no item is better than another, NDCG is undefined")
    gains = (x - x.min()) / np.ptp(x)
    discount = 1 / np.log2(np.arange(2, k + 2))
    dcg = gains[np.argsort(-y, kind="stable")[:k]] @ discount
    return float(dcg / (np.sort(gains)[::-1][:k] @ discount))


def _check_top(top: float, n: int) -> int:
    if not 0 < top <= 1 or int(np.floor(top * n)) < 1:
        raise ValueError(f"top={top} of {n:,} items keeps {int(np.floor(top * n)) if 0 < top <= 1 else 0} of them; "
                         "use 0 < top <= 1 with top * n >= 1 (the book uses top=0.1)")
    return int(np.floor(top * n))
