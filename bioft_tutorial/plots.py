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
