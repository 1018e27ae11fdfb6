"""The book's data sets, validated on load.

Shipped with the package (see ``bioft_tutorial/assets/*/SOURCE.md`` for origin and licence):

* FLIP secondary structure (NetSurfP-2.0 chains, H/E/C labels, resolved-residue mask):
  :func:`load_flip_secondary_structure`.
* ProteinGym BLAT_ECOLX_Stiffler_2015 DMS (4,996 single substitutions of TEM-1):
  :func:`load_blat_dms`, :func:`blat_wild_type`, :func:`read_dms_csv`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .files import DataError, asset_path, read_fasta, read_fasta_headers

SS_LABELS = "HEC"  # helix, strand, coil: the label order used everywhere (class ids 0, 1, 2)
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
#: Split sizes of the shipped FLIP secondary-structure data (checked on load).
FLIP_SS_COUNTS = {"train": 9712, "validation": 1080, "test": 364}
BLAT_N_MUTANTS = 4996


def _header_fields(header: str) -> dict[str, str]:
    return dict(field.split("=", 1) for field in header.split()[1:] if "=" in field)


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
    labels = read_fasta(asset_path(*folder, "sampled.fasta.gz"))
    masks = read_fasta(asset_path(*folder, "mask.fasta.gz"))
    headers = read_fasta_headers(asset_path(*folder, "sampled.fasta.gz"))
    rows = []
    for cid, seq in seqs.items():
        fields = _header_fields(headers.get(cid, ""))
        name = "test" if fields.get("SET") == "test" else "validation" if fields.get("VALIDATION") == "True" else "train"
        rows.append((cid, seq, labels.get(cid, ""), masks.get(cid, ""), name))
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
        df = df.sample(n=max_mutants, random_state=seed).reset_index(drop=True)
    return df


def read_dms_csv(path: str | Path, wt_seq: str, score_column: str = "DMS_score") -> pd.DataFrame:
    """Read a ProteinGym-style CSV of single substitutions and check it against ``wt_seq``."""
    df = _read_table(path)
    missing = {"mutant", score_column} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; found {list(df.columns)}")
    if not pd.api.types.is_numeric_dtype(df[score_column]):
        bad = pd.to_numeric(df[score_column], errors="coerce").isna() & df[score_column].notna()
        row = int(bad.idxmax())
        raise DataError(f"{path}, row {row + 2}, column {score_column!r}: {df[score_column][row]!r} is not a number")
    if df[score_column].isna().any():
        row = int(df[score_column].isna().idxmax())
        raise DataError(f"{path}, row {row + 2}, column {score_column!r}: score is NaN; drop or fill such rows first")
    if not np.isfinite(df[score_column].to_numpy(dtype=float)).all():
        row = int((~np.isfinite(df[score_column].to_numpy(dtype=float))).argmax())
        raise DataError(f"{path}, row {row + 2}, column {score_column!r}: score is {df[score_column][row]!r}; "
                        "scores must be finite numbers: drop or fix such rows first")
    parsed = df["mutant"].astype(str).str.extract(r"^([A-Z])(\d+)([A-Z])$")
    for i in range(len(df)):
        wt, pos, mt = parsed.iloc[i]
        if pd.isna(pos):
            raise DataError(f"{path}, row {i + 2}: mutant {df['mutant'][i]!r} is not like 'A42G'")
        pos = int(pos)
        if not 1 <= pos <= len(wt_seq) or wt_seq[pos - 1] != wt:
            have = repr(wt_seq[pos - 1]) if 1 <= pos <= len(wt_seq) else "nothing (out of range)"
            raise DataError(
                f"{path}, row {i + 2}: mutant {df['mutant'][i]!r} expects {wt!r} at position {pos} (1-based) "
                f"but the wild type has {have}; check the numbering offset"
            )
    df = df.assign(wt_aa=parsed[0], position=parsed[1].astype(int), mt_aa=parsed[2])
    return df


def _read_table(path: str | Path) -> pd.DataFrame:
    """``pd.read_csv`` with file errors turned into :class:`DataError` (naming the file) or FileNotFoundError."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file; check the path (relative to {Path.cwd()})")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header line such as 'mutant,DMS_score'") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a well-formed CSV ({str(err).strip()}); check the separators and quotes "
                        "of the line it names (a stray '\"' or an extra comma)") from err
