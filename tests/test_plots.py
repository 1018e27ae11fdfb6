"""Figures: the drawn data equal the input (interval bars, identity histogram)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bioft_tutorial import intervals, plots  # noqa: E402


def test_interval_plot_draws_each_estimate_and_its_ends():
    cis = {"lora": intervals.Interval("q3", 0.7, 0.65, 0.74, 0.95, 1000, "chain", 40),
           "lora - head": intervals.Interval("q3 difference", 0.05, -0.01, 0.1, 0.95, 1000, "chain", 40)}
    fig = plots.interval_plot(cis, reference=0.0, xlabel="Q3")
    ax = fig.axes[0]
    dots = ax.lines[0].get_xydata()
    assert np.allclose(dots, [[0.7, 1], [0.05, 0]])  # first entry on top
    segments = ax.collections[0].get_segments()
    assert np.allclose([s[:, 0] for s in segments], [[0.65, 0.74], [-0.01, 0.1]])
    labels = {t.get_position()[1]: t.get_text() for t in ax.get_yticklabels()}
    assert labels == {1: "lora", 0: "lora - head"}
    plt.close(fig)


def test_identity_histogram_counts_match_numpy():
    values = np.array([0.1, 0.12, 0.3, 0.31, 0.95, np.nan])
    fig = plots.identity_histogram(values, bins=np.linspace(0, 1, 11), marks={"stated cut-off": 0.25})
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == np.histogram(values[:5], bins=np.linspace(0, 1, 11))[0].tolist()
    assert fig.axes[0].get_ylabel() == "chains (of 5)"
    plt.close(fig)
