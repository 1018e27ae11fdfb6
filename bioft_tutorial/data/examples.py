"""Training examples from the book's tables: token ids, per-residue labels, crops of long chains, DMS splits.

Labels use -100 (:data:`~bioft_tutorial.data.batching.IGNORE_INDEX`) for "no label here": special tokens,
unresolved residues and residues owned by another crop. Needs numpy, pandas and (lazily) datasets.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .batching import IGNORE_INDEX, MAX_RESIDUES
from .files import DataError
from .sets import SS_LABELS, validate_token_labels


def crop_windows(length: int, max_residues: int = MAX_RESIDUES, overlap: int = 256) -> list[tuple[int, int, int, int]]:
    """Overlapping crops of a chain too long for the model, and the residues each crop *owns*.

    The rule used throughout the book: a chain of at most ``max_residues`` is one crop. A longer chain is
    cut into crops of ``max_residues`` whose starts are ``max_residues - overlap`` apart (the last crop ends
    at the chain's end); where two crops overlap, the left one owns residues up to the middle of the
    overlap and the right one the rest. Every residue is owned by exactly one crop and, away from the
    chain's ends, sees at least ``overlap // 2`` residues of context on each side. Training labels only
    owned residues, and inference stitches owned residues back together, so each residue counts once.

    Args:
        length: residues in the chain.
        max_residues: longest crop (1,022 for ESM-2).
        overlap: residues shared by neighbouring crops (``0 <= overlap < max_residues``).

    Returns:
        ``[(start, end, own_start, own_end), ...]``, 0-based half-open residue intervals.
    """
    if not 0 <= overlap < max_residues:
        raise ValueError(f"overlap={overlap} must be >= 0 and < max_residues={max_residues}")
    if length <= max_residues:
        return [(0, length, 0, length)]
    stride = max_residues - overlap
    starts = list(range(0, length - max_residues, stride)) + [length - max_residues]
    windows = []
    for i, start in enumerate(starts):
        end = start + max_residues
        own_start = 0 if i == 0 else (start + windows[-1][1]) // 2
        own_end = length if i == len(starts) - 1 else (starts[i + 1] + end) // 2
        windows.append((start, end, own_start, own_end))
    return windows


def encode_protein(sequence: str, vocab: dict[str, int], source: str = "sequence") -> list[int]:
    """Token ids of the residues (no special tokens). Lower case is accepted and upper-cased.

    Raises:
        DataError: a character the vocabulary does not have (``*``, digits, spaces), naming its position.
    """
    ids = []
    for pos, aa in enumerate(sequence.upper(), start=1):
        if aa not in vocab or len(aa) != 1 or not aa.isalpha():
            raise DataError(
                f"{source}: character {aa!r} at position {pos} (1-based) is not an amino acid the model knows; "
                "remove stop codons '*', gaps, digits and spaces, or map rare letters to 'X'"
            )
        ids.append(vocab[aa])
    if not ids:
        raise DataError(f"{source}: empty sequence; every chain needs at least one residue")
    return ids


def secondary_structure_examples(df: pd.DataFrame, tokenizer, max_residues: int = MAX_RESIDUES,
                                 overlap: int = 256, as_dataset: bool = True, classes: str = SS_LABELS):
    """Token-classification examples for ESM-2 from :func:`load_flip_secondary_structure` rows.

    Each chain becomes one example, or several for chains longer than ``max_residues`` (see
    :func:`crop_windows`). ``labels`` hold class ids ``0/1/2`` for ``H/E/C`` (or the index of each letter in
    ``classes``, for another per-residue task) at resolved residues the
    crop owns, and ``-100`` at ``<cls>``, ``<eos>``, unresolved residues (mask ``0``) and residues owned
    by a neighbouring crop.

    Args:
        df: rows with ``id``, ``sequence``, ``labels`` (one letter of ``classes`` per residue) and ``mask``
            (``0/1``).
        tokenizer: an ESM-2 tokenizer (``get_vocab()``, ``cls_token_id``, ``eos_token_id``).
        classes: the label letters, in class-id order (``"HEC"``: helix 0, strand 1, coil 2).

    Returns:
        ``datasets.Dataset`` (or, with ``as_dataset=False``, a list of dicts) with ``id``, ``crop_start``
        (0-based residue offset), ``input_ids`` (``length + 2`` ints) and ``labels`` (same length).
    """
    missing = {"id", "sequence", "labels", "mask"} - set(df.columns)
    if missing:
        raise DataError(f"secondary-structure table: missing column(s) {sorted(missing)}; found {list(df.columns)}. "
                        "Give every chain an id, its sequence, one H/E/C label and one 0/1 mask value per residue")
    # a short label string would shift every label
    validate_token_labels(df, source=df.attrs.get("source", "secondary-structure table"), alphabet=classes)
    vocab, class_id = tokenizer.get_vocab(), {c: i for i, c in enumerate(classes)}
    rows: dict[str, list] = {"id": [], "crop_start": [], "input_ids": [], "labels": []}
    for row in df.itertuples(index=False):
        ids = encode_protein(row.sequence, vocab, source=f"chain {row.id!r}")
        for start, end, own_start, own_end in crop_windows(len(ids), max_residues, overlap):
            labels = [class_id[lab] if m == "1" and own_start <= i < own_end else IGNORE_INDEX
                      for i, (lab, m) in enumerate(zip(row.labels, row.mask)) if start <= i < end]
            rows["id"].append(row.id)
            rows["crop_start"].append(start)
            rows["input_ids"].append([tokenizer.cls_token_id, *ids[start:end], tokenizer.eos_token_id])
            rows["labels"].append([IGNORE_INDEX, *labels, IGNORE_INDEX])
    if not as_dataset:
        return [dict(zip(rows, values)) for values in zip(*rows.values())]
    from datasets import Dataset

    return Dataset.from_dict(rows)


def _row_name(df: pd.DataFrame, i: int) -> str:
    """``"<source>, row <n>"`` for the ``i``-th row (0-based) of ``df``, as the user counts it.

    The source is ``df.attrs["source"]`` (a file name; ``"table"`` if unset). The row is the index label when
    the index names file rows (``"row"`` or ``"line"``, as the package's readers set it) or ids (``"id"``),
    else ``i + 1``.
    """
    source, name = df.attrs.get("source", "table"), df.index.name
    if name in ("row", "line"):
        return f"{source}, {name} {df.index[i]}"
    return f"{source}, id {df.index[i]!r}" if name == "id" else f"{source}, row {i + 1}"


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so messages print ``nan``, not ``np.float64(nan)``."""
    return value.item() if isinstance(value, np.generic) else value


def sequence_regression_examples(df: pd.DataFrame, tokenizer, sequence_column: str = "mutated_sequence",
                                 target_column: str | None = "DMS_score", center: float = 0.0, scale: float = 1.0):
    """Sequence-level regression examples: ``input_ids`` and one float label ``(target - center) / scale``.

    Args:
        df: one row per sequence (e.g. from :func:`~.sets.read_dms_csv`); ``df.attrs["source"]`` and an index
            named ``"row"`` name rows in errors.
        tokenizer: an ESM-2 tokenizer.
        sequence_column, target_column: the columns of the sequence and of the measured value (``None``: no
            labels, examples to predict on).
        center, scale: the labels are ``(target - center) / scale`` (e.g. the training mean and standard
            deviation); a prediction ``p`` means ``p * scale + center`` in the table's units.

    Returns:
        ``datasets.Dataset`` with ``input_ids`` (``<cls> residues <eos>``) and ``labels`` (float), in row order.

    Raises:
        DataError: a missing column, a target that is not a finite number, a missing sequence, or a sequence
        longer than :data:`MAX_RESIDUES` (crop it first: a fitness value belongs to the whole chain, so it cannot
        be split like per-residue labels); each names the source and the row.
    """
    from datasets import Dataset

    source = df.attrs.get("source", "table")
    missing = {sequence_column, target_column} - {None} - set(df.columns)
    if missing:
        raise DataError(f"{source}: missing column(s) {sorted(missing)}; found {list(df.columns)}")
    if not scale > 0:
        raise ValueError(f"scale={scale} must be > 0 (e.g. the standard deviation of the training targets)")
    targets = pd.to_numeric(df[target_column], errors="coerce").to_numpy(dtype=float) if target_column else \
        np.zeros(len(df))
    if not np.isfinite(targets).all():
        i = int((~np.isfinite(targets)).argmax())
        value = _plain(df[target_column].iloc[i])
        raise DataError(f"{_row_name(df, i)}, column {target_column!r}: {value!r} is not a finite number; drop or "
                        "fix such rows first (a NaN target would make the loss NaN)")
    vocab, input_ids = tokenizer.get_vocab(), []
    for i, seq in enumerate(df[sequence_column]):
        if not isinstance(seq, str):
            raise DataError(f"{_row_name(df, i)}, column {sequence_column!r}: {_plain(seq)!r} is not a sequence; "
                            "drop rows without one")
        if len(seq) > MAX_RESIDUES:
            raise DataError(f"{_row_name(df, i)}: sequence of {len(seq)} residues is longer than {MAX_RESIDUES}; "
                            "crop it around the mutated region first")
        ids = encode_protein(seq, vocab, source=_row_name(df, i))
        input_ids.append([tokenizer.cls_token_id, *ids, tokenizer.eos_token_id])
    columns = {"input_ids": input_ids}
    if target_column is not None:
        columns["labels"] = ((targets - center) / scale).tolist()
    return Dataset.from_dict(columns)


def dms_split(df: pd.DataFrame, by: str = "random", fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
              seed: int = 0) -> pd.Series:
    """Assign each mutant to ``"train"``/``"validation"``/``"test"``.

    ``by="random"`` splits mutants at random. ``by="position"`` splits the *positions*: every mutant at a
    held-out position is in the held-out set, so the model never saw any substitution at a test position
    (no leakage through the site; harder, and closer to predicting an unexplored site). It needs the
    ``position`` column :func:`~.sets.read_dms_csv` adds, and single mutants only.

    Returns:
        Series of split names, aligned with ``df.index``.

    Raises:
        DataError: ``by="position"`` on a table without a ``position`` column, or with rows that have no single
            position (multi-mutants, the wild type), naming the first such row.
    """
    if by not in ("random", "position") or len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"use by='random' or 'position' and three fractions summing to 1 (got {by!r}, {fractions})")
    if by == "position":
        _check_positions(df)
    rng = np.random.default_rng(seed)
    keys = df["position"].unique() if by == "position" else df.index.to_numpy()
    keys = rng.permutation(keys)
    n_train, n_val = int(round(fractions[0] * len(keys))), int(round(fractions[1] * len(keys)))
    name = {k: "train" for k in keys[:n_train]}
    name.update({k: "validation" for k in keys[n_train:n_train + n_val]})
    name.update({k: "test" for k in keys[n_train + n_val:]})
    source = df["position"] if by == "position" else pd.Series(df.index, index=df.index)
    return source.map(name).rename("split")


def _check_positions(df: pd.DataFrame) -> None:
    source = df.attrs.get("source", "table")
    if "position" not in df.columns:
        raise DataError(f"{source}: by='position' needs a 'position' column (1-based, one per single mutant); found "
                        f"{list(df.columns)[:10]}. Read the table with data.read_dms_csv(path, wt_seq), which adds "
                        "it, or use by='random'")
    missing = pd.isna(df["position"]).to_numpy()
    if missing.any():
        i = int(missing.argmax())
        mutant = df["mutant"].iloc[i] if "mutant" in df.columns else None
        raise DataError(f"{_row_name(df, i)}: mutant {mutant!r} has no single position ({int(missing.sum())} such "
                        "rows: multi-mutants or the wild type); by='position' splits single mutants. Use by='random', "
                        "or split the single mutants by position and place the others yourself")
