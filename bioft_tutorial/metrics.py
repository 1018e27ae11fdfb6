"""Metrics as pure functions of arrays (numpy in, Python floats or arrays out).

Wrappers over scikit-learn and scipy that fix the conventions used in the book: ``-100`` marks a
position to ignore (special tokens, unresolved residues), class ids follow ``data.SS_LABELS``.
"""
from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm

IGNORE_INDEX = -100


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


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (scipy); NaN pairs are an error, not silently dropped."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("spearman got NaN values; drop or impute them first")
    return float(stats.spearmanr(x, y).statistic)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive)."""
    return float(skm.roc_auc_score(np.asarray(labels), np.asarray(scores)))
