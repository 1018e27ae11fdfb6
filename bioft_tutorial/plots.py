"""Figures drawn from DataFrames and arrays. Each function returns the matplotlib ``Figure``."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

SS_COLORS = {"H": "#d62728", "E": "#1f77b4", "C": "#7f7f7f"}


def new_figure(width: float = 6.0, height: float = 4.0, ncols: int = 1):
    """A figure with ``ncols`` axes in the book's style (returns ``fig, axes``)."""
    fig, axes = plt.subplots(1, ncols, figsize=(width, height), constrained_layout=True, squeeze=False)
    return fig, axes[0] if ncols > 1 else axes[0, 0]


def confusion_heatmap(cm: np.ndarray, class_names: str | list[str] = "HEC", title: str = "Confusion matrix"):
    """Row-normalised confusion matrix with counts in each cell."""
    fig, ax = new_figure(4.2, 3.6)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = list(class_names)
    ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
           xlabel="predicted", ylabel="true", title=title)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]:,})", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="fraction of true class")
    return fig


def residue_heatmap(values: np.ndarray, positions, wt_seq: str | None = None, *, ax=None,
                    amino_acids: str = "ACDEFGHIKLMNPQRSTVWY", cmap: str = "viridis", center: float | None = None,
                    label: str = "", title: str = "", tick_every: int = 1):
    """Amino acids (rows) x positions (columns), e.g. masked-LM probabilities or mutation scores.

    Args:
        values: ``(len(amino_acids), len(positions))``; NaN cells are left blank.
        positions: 1-based position of each column (tick labels).
        wt_seq: if given, a dot marks the wild-type residue of each column.
        center: centre a diverging colour map (``"RdBu"``) on this value, e.g. 0 for log-ratios.
        tick_every: label every n-th position.

    Returns:
        The figure (a new one unless ``ax`` is given).
    """
    values, positions = np.asarray(values, dtype=float), list(positions)
    if ax is None:
        fig, ax = new_figure(max(4.0, 0.22 * len(positions) + 2), 4.2)
    fig = ax.figure
    norm = None
    if center is not None:
        span = np.nanmax(np.abs(values - center)) or 1.0
        norm = plt.Normalize(center - span, center + span)
    im = ax.imshow(values, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ticks = range(0, len(positions), tick_every)
    ax.set(xticks=list(ticks), xticklabels=[positions[i] for i in ticks], yticks=range(len(amino_acids)),
           yticklabels=list(amino_acids), xlabel="position (1-based)", ylabel="amino acid", title=title)
    ax.tick_params(axis="both", labelsize=7)
    if wt_seq is not None:
        cols = [(j, amino_acids.find(wt_seq[p - 1])) for j, p in enumerate(positions)]
        ax.scatter(*zip(*[(j, i) for j, i in cols if i >= 0]), s=10, c="white", edgecolors="black", linewidths=0.5)
    fig.colorbar(im, ax=ax, label=label, shrink=0.9)
    return fig


def class_scatter(xy: np.ndarray, labels, colors: dict[str, str] = SS_COLORS, *, ax=None, title: str = "",
                  xlabel: str = "PC 1", ylabel: str = "PC 2", size: float = 3.0):
    """2-D points coloured by class (default: H/E/C secondary structure); one legend entry per class."""
    xy, labels = np.asarray(xy), np.asarray(labels)
    if ax is None:
        fig, ax = new_figure(5.0, 4.2)
    order = np.random.default_rng(0).permutation(len(xy))  # no class is drawn entirely on top of another
    ax.scatter(xy[order, 0], xy[order, 1], s=size, c=[colors.get(c, "black") for c in labels[order]], alpha=0.6,
               linewidths=0)
    for name, color in colors.items():
        ax.scatter([], [], s=12, c=color, label=f"{name} ({(labels == name).sum():,})")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(frameon=False)
    return ax.figure


def score_scatter(x: np.ndarray, y: np.ndarray, *, ax=None, xlabel: str = "", ylabel: str = "", title: str = "",
                  annotation: str | None = None):
    """Model score (x) against measurement (y), with an optional text box (e.g. the Spearman correlation)."""
    if ax is None:
        fig, ax = new_figure(4.6, 4.0)
    ax.scatter(x, y, s=4, alpha=0.35, linewidths=0, color="#1f77b4")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if annotation:
        ax.text(0.03, 0.97, annotation, transform=ax.transAxes, va="top", fontsize=8,
                bbox=dict(boxstyle="round", facecolor="white", alpha=0.8))
    return ax.figure


def strip_by_group(values, groups, order=None, *, hue=None, colors: dict[str, str] | None = None, ax=None,
                   ylabel: str = "", title: str = "", size: float = 3.0, seed: int = 0):
    """A strip plot: one column of jittered points per group, a black bar at each group's median.

    Args:
        values: one number per point (NaN points are dropped).
        groups: the group of each point (the columns, in ``order``; default sorted).
        hue: optional second label per point that picks its colour from ``colors`` (default: one colour per group).
        colors: ``{group or hue value: colour}``.

    Returns:
        The figure (a new one unless ``ax`` is given).
    """
    values, groups = np.asarray(values, dtype=float), np.asarray(groups).astype(str)
    order = list(order) if order is not None else sorted(set(groups))
    hue = None if hue is None else np.asarray(hue).astype(str)
    colors = colors or {}
    if ax is None:
        fig, ax = new_figure(max(4.0, 0.9 * len(order) + 1.5), 4.0)
    jitter = np.random.default_rng(seed).uniform(-0.3, 0.3, len(values))
    for i, name in enumerate(order):
        keep = (groups == name) & np.isfinite(values)
        point_colors = ([colors.get(h, "grey") for h in hue[keep]] if hue is not None
                        else colors.get(name, f"C{i}"))
        ax.scatter(i + jitter[keep], values[keep], s=size, alpha=0.5, linewidths=0, c=point_colors)
        if keep.any():
            ax.hlines(np.median(values[keep]), i - 0.38, i + 0.38, color="black", lw=1.5, zorder=3)
    ax.set_xticks(range(len(order)), [f"{n}\n(n={(groups == n).sum():,})" for n in order], fontsize=8)
    if hue is not None:
        for name in dict.fromkeys(hue):
            ax.scatter([], [], s=12, c=colors.get(name, "grey"), label=name)
        ax.legend(frameon=False, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    return ax.figure


def roc_curves(labels, scores: dict, *, ax=None, title: str = ""):
    """ROC curves of several scores of the same binary ``labels`` (1 = positive); AUROC in the legend.

    ``scores`` maps a legend name to one score per label (higher = more likely positive); NaN scores are
    dropped for that curve only.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    labels = np.asarray(labels).astype(int)
    if ax is None:
        fig, ax = new_figure(4.6, 5.0)
    for name, score in scores.items():
        score = np.asarray(score, dtype=float)
        keep = np.isfinite(score)
        fpr, tpr, _ = roc_curve(labels[keep], score[keep])
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUROC {roc_auc_score(labels[keep], score[keep]):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance (0.5)")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    # below the axes: a curve can pass anywhere inside them
    ax.legend(frameon=False, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    return ax.figure


def interval_plot(intervals: dict, *, ax=None, xlabel: str = "", title: str = "", reference: float | None = None):
    """One row per entry: the estimate as a dot and its confidence interval as a bar (a forest plot).

    Args:
        intervals: ``{label: interval}``, each with ``estimate``, ``low`` and ``high`` attributes (e.g.
            :class:`bioft_tutorial.intervals.Interval`); drawn top to bottom in the mapping's order.
        reference: draw a dashed vertical line here (0 for differences, 0.5 for AUROC).

    Returns:
        The figure (a new one unless ``ax`` is given).
    """
    names = list(intervals)
    if ax is None:
        fig, ax = new_figure(5.5, 0.45 * len(names) + 1.2)
    y = np.arange(len(names))[::-1]
    estimate, low, high = (np.array([getattr(intervals[n], key) for n in names], dtype=float)
                           for key in ("estimate", "low", "high"))
    ax.errorbar(estimate, y, xerr=[estimate - low, high - estimate], fmt="o", color="#1f77b4", ecolor="#1f77b4",
                capsize=3, lw=1.5)
    if reference is not None:
        ax.axvline(reference, color="grey", ls="--", lw=0.8)
    ax.set(yticks=y, yticklabels=names, xlabel=xlabel, title=title, ylim=(-0.7, len(names) - 0.3))
    return ax.figure


def identity_histogram(identities, *, bins=np.linspace(0, 1, 41), ax=None, title: str = "",
                       xlabel: str = "highest identity to a training chain", marks: dict[str, float] | None = None):
    """Histogram of sequence identities (0 to 1), e.g. each test chain's nearest training chain.

    Args:
        identities: one identity per chain (NaN dropped).
        marks: ``{label: identity}`` drawn as dashed vertical lines (e.g. a split's stated cut-off).

    Returns:
        The figure (a new one unless ``ax`` is given).
    """
    values = np.asarray(identities, dtype=float)
    values = values[np.isfinite(values)]
    if ax is None:
        fig, ax = new_figure(5.5, 3.6)
    ax.hist(values, bins=bins, color="#1f77b4", edgecolor="white")
    for i, (label, x) in enumerate((marks or {}).items()):
        ax.axvline(x, color=f"C{i + 1}", ls="--", lw=1, label=label)
    if marks:
        ax.legend(frameon=False, fontsize=8)
    ax.set(xlabel=xlabel, ylabel=f"chains (of {values.size:,})", xlim=(bins[0], bins[-1]), title=title)
    return ax.figure
