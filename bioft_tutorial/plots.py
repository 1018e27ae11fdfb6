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
