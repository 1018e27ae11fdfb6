"""Bootstrap confidence intervals for AUROC, Spearman and Q3, resampling the unit that was sampled.

A test set is a sample, and the interval must resample what was sampled: variants of a scan for a random
split, *mutated positions* for a split by position (all variants at a drawn position come along), *chains*
for per-residue accuracy (residues of one chain are not independent). Pass that unit as ``groups``: one
label per item (e.g. the position of each variant, the chain of each residue).

The intervals are percentile bootstrap intervals (Efron and Tibshirani 1993): resample the units with
replacement ``n_resamples`` times, recompute the metric on each resample, and take the ``(1 - level) / 2``
and ``(1 + level) / 2`` quantiles. A paired interval (:func:`difference_interval`) scores two methods on
the *same* resamples, so what both get right or wrong together cancels out: it is the interval to quote
when the prose says one method beats another.

The resamples are seeded and vectorised: resample ``b`` is row ``b`` of
``numpy.random.default_rng(seed).integers(0, n_units, (rows, n_units))``, drawn in chunks of rows (one chunk
when ``n_resamples * n_items <= 2**17``), turned into counts per unit; every metric is computed from those
counts with cumulative sums, never by a loop over resamples.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterator

import numpy as np

from bioft_tutorial import metrics

log = logging.getLogger(__name__)

CHUNK_ITEMS = 2**17  # items of one chunk of resamples (rows x items): 1 MB of int64, in cache
Statistic = Callable[[np.ndarray], np.ndarray]  # counts per unit (rows, n_units) -> metric (rows,)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A metric's value on the data and its bootstrap confidence interval.

    Attributes:
        metric: ``"auroc"``, ``"spearman"``, ``"q3"``, or ``"<metric> difference"`` (method a minus method b).
        estimate: the metric on the data as given (not a bootstrap mean).
        low, high: the interval's ends (percentile bootstrap).
        level: coverage the interval aims at, e.g. 0.95.
        n_resamples: bootstrap resamples drawn.
        unit: what was resampled (``"variant"``, ``"position"``, ``"chain"``, ...).
        n_units: how many units the data hold.
    """

    metric: str
    estimate: float
    low: float
    high: float
    level: float
    n_resamples: int
    unit: str
    n_units: int

    @property
    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (for a difference: the sign is resolved)."""
        return bool(self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        return f"{self.estimate:.3f} {self.bounds()}"

    def bounds(self, digits: int = 3) -> str:
        """The interval as text, e.g. ``"[0.412, 0.468]"``."""
        return f"[{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def auroc_interval(labels, scores, *, groups=None, unit: str | None = None, level: float = 0.95,
                   n_resamples: int = 10_000, seed: int = 0) -> Interval:
    """AUROC of ``scores`` for binary ``labels`` (1 = positive) with a bootstrap interval.

    Args:
        labels: (N,) 0/1 per item.
        scores: (N,) higher = more likely positive; NaN is an error (drop unscored items first).
        groups: (N,) the resampling unit of each item (default: each item is its own unit).
        unit: name of the unit for the report (default ``"item"`` or ``"group"``).
    """
    return _run("auroc", labels, [scores], groups, unit, level, n_resamples, seed)


def spearman_interval(measured, predicted, *, groups=None, unit: str | None = None, level: float = 0.95,
                      n_resamples: int = 10_000, seed: int = 0) -> Interval:
    """Spearman correlation of ``predicted`` with ``measured`` with a bootstrap interval.

    For a split by position pass ``groups=positions`` (``unit="position"``): a resample draws positions and
    takes every variant at each drawn position (ties in a resample get average ranks, as in scipy).
    """
    return _run("spearman", measured, [predicted], groups, unit, level, n_resamples, seed)


def q3_interval(labels, preds, groups, *, unit: str = "chain", level: float = 0.95, n_resamples: int = 10_000,
                seed: int = 0) -> Interval:
    """Q3 (fraction of labelled residues predicted right) with an interval that resamples chains.

    Args:
        labels, preds: (N,) class ids per residue; ``-100`` labels are left out (as in :func:`metrics.q3_accuracy`).
        groups: (N,) the chain of each residue. A resampled chain brings all its residues: Q3 of a resample is
            its correct residues over its labelled residues.
    """
    return _run("q3", labels, [preds], groups, unit, level, n_resamples, seed)


def difference_interval(metric: str, truth, predicted_a, predicted_b, *, groups=None, unit: str | None = None,
                        level: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> Interval:
    """Paired bootstrap of ``metric(a) - metric(b)`` for two methods scored on the same items.

    Each resample scores both methods on the same units, so the interval is that of the difference itself,
    narrower than two separate intervals would suggest when the methods err on the same items.

    Args:
        metric: ``"auroc"`` (``truth`` = 0/1 labels), ``"spearman"`` (``truth`` = measurements) or ``"q3"``
            (``truth`` = class ids per residue; ``groups`` = chains, required).
        predicted_a, predicted_b: (N,) each method's scores or predicted classes, in the order of ``truth``.
    """
    if metric not in _BUILDERS:
        raise ValueError(f"metric={metric!r}; use one of {sorted(_BUILDERS)}")
    return _run(metric, truth, [predicted_a, predicted_b], groups, unit, level, n_resamples, seed)


def resample_counts(n_units: int, n_resamples: int, seed: int, width: int = 0) -> Iterator[np.ndarray]:
    """Chunks of bootstrap resamples as counts: (rows, n_units) int64, each row summing to ``n_units``.

    ``rows * max(n_units, width) <= CHUNK_ITEMS``: ``width`` is the widest array the statistic builds per
    resample (the number of items, when each item gets a weight)."""
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_ITEMS // max(n_units, width))
    for start in range(0, n_resamples, rows):
        r = min(rows, n_resamples - start)
        draws = rng.integers(0, n_units, size=(r, n_units)) + n_units * np.arange(r)[:, None]
        yield np.bincount(draws.ravel(), minlength=r * n_units).reshape(r, n_units)


def _run(metric, truth, predictions, groups, unit, level, n_resamples, seed) -> Interval:
    """The interval of ``metric`` for one method, or of the difference of two methods on the same resamples."""
    check, point, builder = _BUILDERS[metric]
    if metric == "q3" and groups is None:
        raise ValueError("metric='q3' needs groups= (the chain of each residue): chains are the unit to resample")
    checked = [check(truth, p, groups) for p in predictions]
    y, groups = checked[0][0], checked[0][2]
    index, n_units, unit = _units(groups, y.size, unit or ("chain" if metric == "q3" else None))
    statistics = [builder(y, p, index, n_units) for _, p, _ in checked]
    estimates = [point(y, p) for _, p, _ in checked]
    if len(predictions) == 2:
        first, second = statistics
        statistics, estimates = [lambda c: first(c) - second(c)], [estimates[0] - estimates[1]]
        metric = f"{metric} difference"
    width = n_units if metric.startswith("q3") else y.size  # Q3 works on per-chain sums, the others per item
    values = _resampled(statistics[0], n_units, width, n_resamples, seed)
    return _summarise(metric, estimates[0], values, level, unit, n_units)


def _resampled(statistic: Statistic, n_units: int, width: int, n_resamples: int, seed: int) -> np.ndarray:
    if n_resamples < 100:
        raise ValueError(f"n_resamples={n_resamples}; use at least 1,000 (the book uses 10,000)")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.concatenate([statistic(c) for c in resample_counts(n_units, n_resamples, seed, width)])


def _summarise(metric, estimate, values, level, unit, n_units) -> Interval:
    if not 0 < level < 1:
        raise ValueError(f"level={level}; use a coverage between 0 and 1, e.g. 0.95")
    undefined = np.isnan(values).mean()
    if undefined > 0.01:  # e.g. resamples of a tiny test set that hold one class only
        log.warning("%s: %.0f%% of the resamples leave the metric undefined (one class, or constant values); "
                    "the interval uses the others and is too optimistic: use more %ss", metric, 100 * undefined, unit)
    low, high = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(metric, float(estimate), float(low), float(high), level, values.size, unit, n_units)


def _units(groups, n_items: int, unit: str | None) -> tuple[np.ndarray, int, str]:
    """(index of each item's unit, number of units, unit name)."""
    if groups is None:
        return np.arange(n_items), n_items, unit or "item"
    groups = np.asarray(groups).ravel()
    if groups.size != n_items:
        raise ValueError(f"groups has {groups.size:,} values for {n_items:,} items; give the unit (position, chain) "
                         "of every item, in the items' order")
    names, index = np.unique(groups, return_inverse=True)
    if names.size < 2:
        raise ValueError(f"all {n_items:,} items are in one group ({names[0].item()!r}): resampling one unit says "
                         "nothing; give each item its unit (position, chain)")
    return index, names.size, unit or "group"


def _labelled(labels, preds, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels, preds, groups = (np.asarray(a).ravel() for a in (labels, preds, groups))
    if not labels.size == preds.size == groups.size:
        raise ValueError(f"labels, preds and groups have {labels.size:,}, {preds.size:,} and {groups.size:,} values; "
                         "give one of each per residue (flatten all three the same way)")
    keep = labels != metrics.IGNORE_INDEX
    return labels[keep], preds[keep], groups[keep]


def _tie_starts(sorted_values: np.ndarray) -> np.ndarray | None:
    """Start of each run of equal values in a sorted array; None when there are no ties."""
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    return None if starts.size == sorted_values.size else starts


def _column_taker(columns: np.ndarray, width: int) -> Callable[[np.ndarray], np.ndarray]:
    """Function ``counts -> counts[:, columns]`` laid out row by row (numpy's fancy indexing gives a
    column-major result here, which makes the cumulative sums along rows several times slower)."""
    flat_index: dict[int, np.ndarray] = {}  # rows of a chunk -> flat positions; local to one interval

    def take(counts):
        rows = counts.shape[0]
        if rows not in flat_index:
            flat_index[rows] = np.arange(rows)[:, None] * width + columns
        return np.take(counts.reshape(-1), flat_index[rows])
    return take


# The statistics below work on integer counts: numpy's integer cumulative sums are exact and several times
# faster than floating-point ones. Ranks are kept doubled (2 x average rank) so that they stay integers.

def _auroc_statistic(labels: np.ndarray, scores: np.ndarray, index: np.ndarray, n_units: int) -> Statistic:
    """AUROC of each resample: the weighted Mann-Whitney statistic, ties counting one half."""
    order = np.argsort(scores, kind="stable")
    positive, starts = labels[order].astype(np.int64), _tie_starts(scores[order])
    sorted_weights = _column_taker(index[order], n_units)

    def statistic(counts):
        neg = sorted_weights(counts)
        pos = neg * positive
        neg -= pos
        if starts is not None:
            pos, neg = np.add.reduceat(pos, starts, axis=1), np.add.reduceat(neg, starts, axis=1)
        below_twice = np.cumsum(neg, axis=1)
        below_twice *= 2
        below_twice -= neg  # 2 x (negatives ranked below + half the tied ones)
        return np.einsum("ij,ij->i", pos, below_twice) / (2.0 * pos.sum(1) * neg.sum(1))
    return statistic


def _doubled_ranks(values: np.ndarray, index: np.ndarray, n_units: int) -> Callable[[np.ndarray], np.ndarray]:
    """Function of counts -> (rows, N) twice the average rank of each item within each resample (scipy's
    'average' ties), as integers: 2 x (items below) + (copies of its value) + 1."""
    order = np.argsort(values, kind="stable")
    starts = _tie_starts(values[order])
    run = np.arange(values.size) if starts is None else np.cumsum(np.isin(np.arange(values.size), starts)) - 1
    run_of = np.empty(values.size, dtype=np.int64)
    run_of[order] = run
    sorted_weights = _column_taker(index[order], n_units)
    item_ranks = _column_taker(run_of, values.size if starts is None else starts.size)

    def ranks(counts):
        weights = sorted_weights(counts)
        if starts is not None:
            weights = np.add.reduceat(weights, starts, axis=1)
        doubled = np.cumsum(weights, axis=1)
        doubled *= 2
        doubled -= weights
        doubled += 1
        return item_ranks(doubled)
    return ranks


def _spearman_statistic(measured: np.ndarray, predicted: np.ndarray, index: np.ndarray, n_units: int) -> Statistic:
    """Spearman of each resample: the weighted Pearson correlation of the within-resample average ranks."""
    rank_x, rank_y = _doubled_ranks(measured, index, n_units), _doubled_ranks(predicted, index, n_units)
    item_weights = _column_taker(index, n_units)

    def statistic(counts):
        weights = item_weights(counts)
        x, y = rank_x(counts), rank_y(counts)
        wx, wy = weights * x, weights * y
        n, sx, sy = (a.sum(1).astype(float) for a in (weights, wx, wy))  # exact integer sums, then floats
        sxx, syy, sxy = (np.einsum("ij,ij->i", a, b).astype(float) for a, b in ((wx, x), (wy, y), (wx, y)))
        cov, var_x, var_y = sxy / n - sx * sy / n**2, sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
        return cov / np.sqrt(var_x * var_y)
    return statistic


def _q3_statistic(labels: np.ndarray, preds: np.ndarray, index: np.ndarray, n_units: int) -> Statistic:
    """Q3 of each resample from per-chain sums: (counts @ correct per chain) / (counts @ residues per chain)."""
    correct = np.bincount(index, weights=(labels == preds).astype(float), minlength=n_units)
    residues = np.bincount(index, minlength=n_units).astype(float)
    return lambda counts: (counts @ correct) / (counts @ residues)


_BUILDERS = {  # metric: (input check -> (truth, predicted, groups), point estimate, statistic builder)
    "auroc": (lambda y, s, g: (*metrics.check_binary(y, s), g), metrics.auroc, _auroc_statistic),
    "spearman": (lambda y, p, g: (*metrics.check_paired(y, p, ("measured", "predicted")), g), metrics.spearman,
                 _spearman_statistic),
    "q3": (_labelled, metrics.q3_accuracy, _q3_statistic),
}
