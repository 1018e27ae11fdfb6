"""The book's data sets, validated on load.

Shipped with the package (see ``bioft_tutorial/assets/*/SOURCE.md`` for origin and licence):

* FLIP secondary structure (NetSurfP-2.0 chains, H/E/C labels, resolved-residue mask):
  :func:`load_flip_secondary_structure`, read with :func:`read_flip_fasta` (any FLIP-style split FASTA).
* ProteinGym BLAT_ECOLX_Stiffler_2015 DMS (4,996 single substitutions of TEM-1):
  :func:`load_blat_dms`, :func:`blat_wild_type`, :func:`read_dms_csv`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .files import DataError, asset_path, open_text, read_fasta, read_table
from .mutants import (AMINO_ACIDS, WILD_TYPE_NAMES, apply_mutant, mutants_from_sequences,  # noqa: F401 (re-export)
                      parse_mutant)

SS_LABELS = "HEC"  # helix, strand, coil: the label order used everywhere (class ids 0, 1, 2)
#: Split sizes of the shipped FLIP secondary-structure data (checked on load).
FLIP_SS_COUNTS = {"train": 9712, "validation": 1080, "test": 364}
BLAT_N_MUTANTS = 4996
log = logging.getLogger(__name__)


def read_flip_fasta(path: str | Path) -> pd.DataFrame:
    """Read a FLIP-style split FASTA: headers such as ``>Sequence7 TARGET=0.42 SET=train VALIDATION=False``.

    FLIP (Dallago et al. 2021) writes each task's split as one FASTA: ``SET`` is ``train`` or ``test``, and
    ``VALIDATION=True`` marks the training records held out for validation. ``TARGET`` (a sequence-level
    value, e.g. fitness) is optional; per-residue tasks put their labels in the record body instead.

    Returns:
        One row per record, in file order: ``id``, ``sequence`` (the record body), ``split`` (``"train"``,
        ``"validation"`` or ``"test"``) and, when any header has one, ``target`` (float). The index, named
        ``"line"``, is each header's line number; ``attrs["source"]`` is the path.

    Raises:
        FileNotFoundError: no such file.
        DataError: a FASTA error (see :func:`~.files.parse_fasta`), a header without ``SET=train`` or
            ``SET=test``, or a ``TARGET`` that is not a number, naming the file and the line.
    """
    records = read_fasta(path)
    rows, lines = [], []
    with open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.startswith(">"):
                rows.append(_flip_header(line[1:], records, path, lineno))
                lines.append(lineno)
    df = pd.DataFrame(rows, index=pd.Index(lines, name="line"))
    if "target" in df.columns:
        df["target"] = df["target"].astype(float)
    df.attrs["source"] = str(path)
    return df


def _flip_header(header: str, records: dict[str, str], path: str | Path, lineno: int) -> dict:
    rid, *rest = header.split()
    fields = dict(item.split("=", 1) for item in rest if "=" in item)
    where = f"{path}, line {lineno}"
    if fields.get("SET") not in ("train", "test"):
        raise DataError(f"{where}: header {header.strip()[:60]!r} has SET={fields.get('SET')!r}; a FLIP-style split "
                        "header reads '>id SET=train VALIDATION=False' (or SET=test), TARGET=<number> optional")
    split = "test" if fields["SET"] == "test" else "validation" if fields.get("VALIDATION") == "True" else "train"
    row = {"id": rid, "sequence": records[rid], "split": split}
    if "TARGET" in fields:
        try:
            row["target"] = float(fields["TARGET"])
        except ValueError:
            raise DataError(f"{where}: TARGET={fields['TARGET']!r} is not a number; write the measured value, e.g. "
                            "TARGET=0.42") from None
    return row


def load_flip_secondary_structure(split: str | None = None, max_chains: int | None = None,
                                  seed: int = 0) -> pd.DataFrame:
    """FLIP secondary structure ("sampled" split): one row per chain.

    Args:
        split: ``"train"``, ``"validation"``, ``"test"`` or ``None`` for all (FLIP marks validation
            chains inside its train set with ``VALIDATION=True``).
        max_chains: keep a random subset of this many chains per split (``None``: all).
        seed: seed of that subset.

    Returns:
        DataFrame with ``id``, ``sequence`` (amino acids), ``labels`` (``H``/``E``/``C``, one per residue),
        ``mask`` (``1`` = resolved; unresolved residues carry no valid label), ``split`` and ``length``.

    Raises:
        DataError: lengths or alphabets do not match, or split counts differ from :data:`FLIP_SS_COUNTS`.
    """
    if split not in (None, *FLIP_SS_COUNTS):
        raise ValueError(f"unknown split {split!r}; use 'train', 'validation', 'test' or None")
    folder = ("flip_secondary_structure",)
    seqs = read_fasta(asset_path(*folder, "sequences.fasta.gz"))
    labels = read_flip_fasta(asset_path(*folder, "sampled.fasta.gz")).set_index("id")
    masks = read_fasta(asset_path(*folder, "mask.fasta.gz"))
    rows = [(cid, seq, labels["sequence"].get(cid, ""), masks.get(cid, ""), labels["split"].get(cid, "train"))
            for cid, seq in seqs.items()]
    df = pd.DataFrame(rows, columns=["id", "sequence", "labels", "mask", "split"])
    validate_token_labels(df, source="flip_secondary_structure/sampled.fasta.gz")
    counts = df["split"].value_counts().to_dict()
    if counts != FLIP_SS_COUNTS:
        raise DataError(f"FLIP split counts {counts} differ from the documented {FLIP_SS_COUNTS}; reinstall the package")
    df["length"] = df["sequence"].str.len()
    if split is not None:
        df = df[df["split"] == split]
    if max_chains is not None:
        df = pd.concat([g.sample(n=min(max_chains, len(g)), random_state=seed)
                        for _, g in df.groupby("split", sort=False)])
    return df.reset_index(drop=True)


def validate_token_labels(df: pd.DataFrame, source: str, alphabet: str = SS_LABELS) -> None:
    """Check that every row's ``labels`` and ``mask`` match its ``sequence`` in length and alphabet.

    Raises:
        DataError: naming the first bad row's id, the lengths and the offending letters.
    """
    for row in df.itertuples(index=False):
        if not all(isinstance(x, str) for x in (row.sequence, row.labels, row.mask)):
            raise DataError(f"{source}: chain {row.id!r} has a missing (non-text) sequence, labels or mask; drop "
                            "the row or fill it in")
        n = len(row.sequence)
        if len(row.labels) != n or len(row.mask) != n:
            raise DataError(
                f"{source}: chain {row.id!r} has {n} residues but {len(row.labels)} labels and {len(row.mask)} "
                "mask values; every residue needs exactly one label and one mask value"
            )
        bad = set(row.labels) - set(alphabet)
        if bad:
            dssp = " (8-state DSSP: G/I to H, B to E, T/S/- to C)" if alphabet == SS_LABELS else ""
            raise DataError(f"{source}: chain {row.id!r} has labels {sorted(bad)} outside {alphabet!r}; map them "
                            f"to {alphabet!r}{dssp}")
        if set(row.mask) - {"0", "1"}:
            raise DataError(f"{source}: chain {row.id!r} mask has values {sorted(set(row.mask) - {'0', '1'})} other "
                            "than 0/1; write 1 for a resolved residue and 0 for an unresolved one")


def blat_wild_type() -> str:
    """The 286-residue TEM-1 beta-lactamase wild type (ProteinGym ``target_seq``)."""
    ref = pd.read_csv(asset_path("proteingym_blat", "ProteinGym_reference_DMS_substitutions.csv.gz"))
    row = ref.loc[ref["DMS_id"] == "BLAT_ECOLX_Stiffler_2015"]
    return str(row["target_seq"].iloc[0])


def load_blat_dms(max_mutants: int | None = None, seed: int = 0) -> pd.DataFrame:
    """ProteinGym BLAT_ECOLX_Stiffler_2015: ``mutant`` (e.g. ``H24C``, 1-based), ``mutated_sequence``,
    ``DMS_score`` (higher = fitter) and ``DMS_score_bin`` (1 = fit), plus ``position``, ``wt_aa``, ``mt_aa``.

    Raises:
        DataError: missing columns, NaN scores, or a mutant that does not match the wild type.
    """
    path = asset_path("proteingym_blat", "BLAT_ECOLX_Stiffler_2015.csv.gz")
    df = read_dms_csv(path, blat_wild_type())
    if len(df) != BLAT_N_MUTANTS:
        raise DataError(f"{path}: {len(df)} rows, expected {BLAT_N_MUTANTS}; reinstall the package")
    if max_mutants is not None and max_mutants < len(df):
        df = df.sample(n=max_mutants, random_state=seed)
    return df


def read_dms_csv(path: str | Path, wt_seq: str, score_column: str | None = "DMS_score", offset: int = 0,
                 mutant_column: str = "mutant") -> pd.DataFrame:
    """Read a deep-mutational-scan table (CSV, TSV or xlsx) and check every mutant against ``wt_seq``.

    Mutants are written as :func:`~.mutants.parse_mutant` reads them: single (``H24C``), multi-site
    (``V39A:D40F``), or the wild type (``WT``, ``_wt`` or an empty cell). A wild-type row is kept: its
    score is a measurement like any other (the fitness of the unmutated protein). A table without a mutant
    column but with full-length variants (``mutated_sequence`` or ``sequence``, as FLIP's GB1 CSV) gets its
    mutants from :func:`~.mutants.mutants_from_sequences`.

    Args:
        path: the table (``.csv``, ``.tsv``/``.txt`` tab-separated, ``.xlsx``; ``.gz`` for text).
        wt_seq: the wild-type sequence the mutants refer to.
        score_column: the measured score (finite numbers); ``None`` for a table of mutants without scores.
        offset: numbering offset of the mutants (position in the table minus position in ``wt_seq``).
        mutant_column: the column of mutant strings.

    Returns:
        The table with its own columns plus ``n_mutations`` (0 for the wild type), ``position`` (1-based in
        ``wt_seq``), ``wt_aa`` and ``mt_aa`` for single mutants (``<NA>`` and ``""`` on other rows; ``position``
        is int64 when every row is a single mutant), and ``mutated_sequence`` (built from ``wt_seq`` when the
        table has none, checked against it when it has one). The index, named ``"row"``, is the row number as
        a spreadsheet shows it (the header is row 1); ``attrs["source"]`` holds the path and
        ``attrs["added_columns"]`` the columns added here.

    Raises:
        FileNotFoundError: no such file.
        DataError: a missing column, a score that is not a finite number, a mutant that does not fit
            ``wt_seq`` (with the offset that would fix the numbering, where one does), or a ``mutated_sequence``
            that disagrees with its mutant; each names the file and the row.
    """
    df = read_table(path)
    given = list(df.columns)
    missing = {score_column} - {None} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; found {list(df.columns)}")
    df.index = pd.Index(np.arange(len(df)) + 2, name="row")
    df.attrs["source"] = str(path)
    if score_column is not None:
        _check_scores(df, path, score_column)
    texts = _mutant_texts(df, path, wt_seq, offset, mutant_column)
    subs = []
    for row, mutant in zip(df.index, texts):
        try:
            subs.append(parse_mutant(mutant, wt_seq, offset))
        except ValueError as err:
            raise DataError(f"{path}, row {row}: {err}") from None
    df[mutant_column] = texts
    _add_mutant_columns(df, subs, wt_seq, path, mutant_column)
    df.attrs["added_columns"] = [c for c in df.columns if c not in given]
    n_wild = int((df["n_mutations"] == 0).sum())
    if n_wild:
        log.info("%s: %d wild-type row(s) kept (mutant written as %s)", path, n_wild, WILD_TYPE_NAMES)
    return df


def _mutant_texts(df: pd.DataFrame, path: str | Path, wt_seq: str, offset: int, column: str) -> list[str]:
    """The mutant column as text (an empty cell stays ``""``), or mutants diffed from full-length sequences."""
    if column in df.columns:
        return read_table(path, keep_default_na=False)[column].astype(str).tolist()
    sequences = next((c for c in ("mutated_sequence", "sequence") if c in df.columns), None)
    if sequences is None:
        raise DataError(f"{path}: no {column!r} column; found {list(df.columns)}. Give mutants ('A42G', 'A42G:T50C', "
                        "'WT') in a 'mutant' column, or full-length variants in a 'sequence' column")
    try:
        return mutants_from_sequences(wt_seq, df[sequences], offset, source=str(path))
    except ValueError as err:
        raise DataError(str(err)) from None


def _check_scores(df: pd.DataFrame, path: str | Path, column: str) -> None:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() & df[column].notna()
    if bad.any():
        row = bad.idxmax()
        raise DataError(f"{path}, row {row}, column {column!r}: {df[column][row]!r} is not a number")
    if values.isna().any():
        raise DataError(f"{path}, row {values.isna().idxmax()}, column {column!r}: score is NaN; drop or fill such "
                        "rows first")
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        row = df.index[int((~np.isfinite(values.to_numpy(dtype=float))).argmax())]
        raise DataError(f"{path}, row {row}, column {column!r}: score is {df[column][row]!r}; scores must be finite "
                        "numbers: drop or fix such rows first")
    df[column] = values.astype(float)


def _add_mutant_columns(df: pd.DataFrame, subs: list, wt_seq: str, path: str | Path, column: str) -> None:
    single = [s[0] if len(s) == 1 else None for s in subs]
    position = pd.array([s.position if s else pd.NA for s in single], dtype="Int64")
    df["n_mutations"] = [len(s) for s in subs]
    df["position"] = position.astype("int64") if not position.isna().any() else position
    df["wt_aa"] = [s.wt if s else "" for s in single]
    df["mt_aa"] = [s.mt if s else "" for s in single]
    built = [apply_mutant(wt_seq, s) for s in subs]
    if "mutated_sequence" not in df.columns:
        df["mutated_sequence"] = built
        return
    for row, mutant, given, expected in zip(df.index, df[column], df["mutated_sequence"], built):
        if given != expected:
            raise DataError(f"{path}, row {row}: column 'mutated_sequence' is not wt_seq with mutant {mutant!r} "
                            f"applied ({_first_difference(given, expected)}); check that wt_seq is the sequence the "
                            "table was written for, and the offset")


def _first_difference(given: object, expected: str) -> str:
    if not isinstance(given, str):
        return f"it is {given!r}"
    if len(given) != len(expected):
        return f"it has {len(given)} residues, the mutant {len(expected)}"
    i = next(i for i, (a, b) in enumerate(zip(given, expected)) if a != b)
    return f"position {i + 1} has {given[i]!r}, expected {expected[i]!r}"
