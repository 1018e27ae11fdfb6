"""Probes on frozen embeddings: variant features, cross-validation grouped by exon, and a layer sweep.

A *probe* is a small supervised model (here a logistic regression on standardised features) trained on a
frozen model's embeddings. Fitting one per block and comparing them is the layer sweep: which block's
output carries what the task needs.

Grouping. Variants of one exon share their sequence context: a window around one variant overlaps those
of its neighbours almost entirely, and the assay measured an exon's variants together. If an exon's variants
sit in both the training and the test fold, a probe can score well by recognising the exon (what its
variants tend to do) rather than by judging the change. Folds grouped by exon (scikit-learn's
``GroupKFold``) keep every exon wholly on one side, so the score says how the probe does on an exon it has
not seen. For BRCA1 (Findlay et al. 2018) the exon of each variant is the table's ``experiment`` column
(``X2`` ... ``X23``: one saturation-editing experiment per exon and its flanks).

AUROCs come with a bootstrap interval that resamples positions (:mod:`bioft_tutorial.intervals`): the
three alternate alleles of a position are not independent observations.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from ..intervals import auroc_interval
from ..metrics import auroc
from .embeddings import WindowEmbeddings
from .finetune import CONTRASTS

log = logging.getLogger(__name__)
#: The column of the Findlay et al. 2018 table that names each variant's exon (its editing experiment).
FINDLAY_EXON_COLUMN = "experiment"


def variant_features(ref: WindowEmbeddings, alt: WindowEmbeddings, layer: int, pooling: str = "variant",
                     contrast: str = "ref-minus-alt") -> np.ndarray:
    """One feature vector per variant from its reference and alternate window embeddings.

    Args:
        ref, alt: :func:`~.embeddings.embed_variants` output (rows aligned by variant).
        layer: the block; pooling: ``"variant"`` or ``"mean"``.
        contrast: ``"alt"`` (the alternate window alone), ``"ref-minus-alt"`` or ``"concat"`` (``[ref, alt]``).

    Returns:
        ``(n_variants, hidden)`` (``2 * hidden`` for ``"concat"``) float32.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast={contrast!r}; use one of {CONTRASTS}")
    r, a = ref.pooled(pooling, layer), alt.pooled(pooling, layer)
    return {"alt": a, "ref-minus-alt": r - a, "concat": np.concatenate([r, a], axis=1)}[contrast]


def grouped_folds(groups: Sequence, n_splits: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, test)`` index arrays of ``n_splits`` folds in which no group (exon) is on both sides.

    Raises:
        ValueError: fewer groups than folds.
    """
    groups = np.asarray(groups)
    n_groups = len(pd.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"{n_groups} groups (exons) for n_splits={n_splits}: each fold needs a group of its own; "
                         f"use n_splits <= {n_groups}")
    return list(GroupKFold(n_splits=n_splits).split(np.zeros(len(groups)), groups=groups))


def probe(C: float = 0.1, seed: int = 0) -> Pipeline:
    """The probe: standardise each feature, then an L2-regularised logistic regression (strength ``1 / C``)."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))


def out_of_fold_scores(features: np.ndarray, labels: Sequence[int], groups: Sequence, *, n_splits: int = 5,
                       C: float = 0.1, seed: int = 0) -> np.ndarray:
    """Each variant's probe score (probability of the positive class) from the fold that held it out.

    Returns:
        ``(n_variants,)`` float, in the input order.
    """
    labels = np.asarray(labels)
    if np.unique(labels).size != 2:
        raise ValueError(f"labels hold the classes {np.unique(labels).tolist()}; a probe needs two (0 and 1)")
    scores = np.full(len(labels), np.nan)
    for train, test in grouped_folds(groups, n_splits):
        if np.unique(labels[train]).size < 2:
            raise ValueError("a training fold holds a single class; use fewer folds or more exons")
        scores[test] = probe(C, seed).fit(features[train], labels[train]).predict_proba(features[test])[:, 1]
    return scores


def layer_sweep(ref: WindowEmbeddings, alt: WindowEmbeddings, labels: Sequence[int], groups: Sequence, *,
                positions: Sequence | None = None, poolings: Sequence[str] = ("variant", "mean"),
                contrast: str = "ref-minus-alt", n_splits: int = 5, C: float = 0.1, n_resamples: int = 2000,
                seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Cross-validated AUROC of a probe on every extracted block and pooling, with bootstrap intervals.

    Args:
        ref, alt: :func:`~.embeddings.embed_variants` output; labels: 0/1 per variant (1 = positive class).
        groups: the exon of each variant (folds never split one); positions: the resampling unit of the
            intervals (default: each variant).

    Returns:
        One row per (layer, pooling): ``layer``, ``pooling``, ``auroc``, ``low``, ``high`` (95% interval).
    """
    rows = []
    cases = [(layer, pooling) for layer in ref.layers for pooling in poolings]
    for layer, pooling in tqdm(cases, desc="probing blocks", unit="probe", disable=not progress):
        features = variant_features(ref, alt, layer, pooling, contrast)
        scores = out_of_fold_scores(features, labels, groups, n_splits=n_splits, C=C, seed=seed)
        interval = auroc_interval(labels, scores, groups=positions, unit="position" if positions is not None
                                  else None, n_resamples=n_resamples, seed=seed)
        rows.append({"layer": layer, "pooling": pooling, "auroc": interval.estimate, "low": interval.low,
                     "high": interval.high})
    return pd.DataFrame(rows)


def best_probe(ref: WindowEmbeddings, alt: WindowEmbeddings, labels: Sequence[int], groups: Sequence, train,
               *, poolings: Sequence[str] = ("variant", "mean"), contrast: str = "ref-minus-alt",
               n_splits: int = 5, C: float = 0.1, seed: int = 0) -> tuple[dict, Pipeline]:
    """Choose the block and pooling by grouped cross-validation on the ``train`` rows only, then fit on them.

    The rows outside ``train`` (held-out exons) play no part in the choice, so their score is a fair test.

    Returns:
        ``({"layer", "pooling", "cv_auroc"}, the fitted probe)``.
    """
    train = np.asarray(train)
    labels, groups = np.asarray(labels), np.asarray(groups)
    best = None
    for layer in ref.layers:
        for pooling in poolings:
            features = variant_features(ref, alt, layer, pooling, contrast)[train]
            scores = out_of_fold_scores(features, labels[train], groups[train], n_splits=n_splits, C=C, seed=seed)
            value = auroc(labels[train], scores)
            if best is None or value > best["cv_auroc"]:
                best = {"layer": layer, "pooling": pooling, "cv_auroc": value}
    features = variant_features(ref, alt, best["layer"], best["pooling"], contrast)[train]
    return best, probe(C, seed).fit(features, labels[train])
