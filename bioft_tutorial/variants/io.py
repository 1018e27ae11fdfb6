"""Variant tables in: CSV/TSV and the Findlay et al. 2018 BRCA1 table, and the standard columns (VCF: :mod:`.vcf`).

Every reader returns a DataFrame with the columns ``chrom`` (str), ``pos`` (int, 1-based), ``ref`` and
``alt`` (upper case) plus the file's other columns, and an index that says where each row came from: the
file's line number (index name ``"line"``) or the spreadsheet row (``"row"``). ``df.attrs["source"]`` holds
the path. Error messages quote both, so a bad row can be found in an editor.

Malformed files raise :class:`~.genome.VariantError`. Rows that parse but cannot be scored (indels,
``N`` alleles, REF mismatches, ...) are *not* rejected here: :func:`~.checks.check_variants` reports them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .genome import VariantError

VARIANT_COLUMNS = ("chrom", "pos", "ref", "alt")
FINDLAY_COLUMNS = {"chromosome": "chrom", "position (hg19)": "pos", "reference": "ref", "alt": "alt"}
_ALIASES = {"chrom": ("chrom", "chromosome", "chr", "#chrom", "contig"), "pos": ("pos", "position"),
            "ref": ("ref", "reference"), "alt": ("alt", "alternate")}


# ------------------------------------------------------------------------------------------- CSV and xlsx
def read_variants_csv(path: str | Path, sep: str | None = None) -> pd.DataFrame:
    """Read a CSV/TSV with columns ``chrom,pos,ref,alt`` (1-based positions; other columns kept).

    Column names are matched case-insensitively (``CHROM``, ``Chromosome``, ``position``, ``reference``,
    ``alternate`` are accepted). ``sep`` defaults to tab for ``.tsv``/``.txt`` files, else comma.

    Raises:
        VariantError: a required column is missing, or the file is empty.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path (relative to {Path.cwd()})")
    sep = sep or ("\t" if path.suffix in (".tsv", ".txt") else ",")
    try:
        names = pd.read_csv(path, sep=sep, nrows=0).columns
        text_cols = {c: str for c in names if _canonical_column(c) in ("chrom", "ref", "alt")}
        df = pd.read_csv(path, sep=sep, dtype=text_cols, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise VariantError(f"{path}: the file is empty; expected a header line 'chrom,pos,ref,alt'") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise VariantError(f"{path}: not a well-formed {'TSV' if sep == chr(9) else 'CSV'} ({str(err).strip()}); "
                           "check the separators and quotes of the line it names, or pass sep=") from err
    df.index = pd.Index(np.arange(len(df)) + 2, name="line")  # line 1 is the header
    df.attrs["source"] = str(path)
    standardize_variants(df)  # raises early for missing columns
    return df


def read_findlay_xlsx(path: str | Path) -> pd.DataFrame:
    """The Findlay et al. 2018 BRCA1 SGE table (``41586_2018_461_MOESM3_ESM.xlsx``), standardised.

    Read with ``pd.read_excel(path, header=2)`` (rows 1-2 are group headings). ``chromosome``,
    ``position (hg19)``, ``reference``, ``alt`` become ``chrom``, ``pos``, ``ref``, ``alt``; every other column
    (``func.class``, ``consequence``, ``CADD.score``, ``function.score.mean``, ...) is kept. The index is the
    spreadsheet row number (the first variant is row 4).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path (relative to {Path.cwd()})")
    df = pd.read_excel(path, header=2)
    missing = [c for c in FINDLAY_COLUMNS if c not in df.columns]
    if missing:
        raise VariantError(f"{path}: columns {missing} not found in row 3; is this the Findlay et al. 2018 "
                           f"Supplementary Table (41586_2018_461_MOESM3_ESM.xlsx)? Found {list(df.columns)[:8]}")
    df = df.rename(columns=FINDLAY_COLUMNS)
    df["chrom"] = df["chrom"].astype(str)
    df.index = pd.Index(np.arange(len(df)) + 4, name="row")
    df.attrs["source"] = str(path)
    return df


# ---------------------------------------------------------------------------------------- standardising
def _canonical_column(name: str) -> str | None:
    low = str(name).strip().lower()
    return next((key for key, names in _ALIASES.items() if low in names), None)


def standardize_variants(variants: pd.DataFrame) -> pd.DataFrame:
    """``chrom`` (str), ``pos`` (nullable Int64, ``<NA>`` where not a whole number), ``ref``, ``alt`` (upper str).

    Columns are found by name, case-insensitively (see :func:`read_variants_csv`); the index is kept.
    Bad values are left for :func:`~.checks.check_variants` to report row by row.

    Raises:
        VariantError: a required column is missing.
    """
    found: dict[str, str] = {}
    for key, names in _ALIASES.items():  # the first alias present wins, in the order of _ALIASES
        lower = {str(c).strip().lower(): c for c in variants.columns}
        col = next((lower[n] for n in names if n in lower), None)
        if col is not None:
            found[key] = col
    missing = [c for c in VARIANT_COLUMNS if c not in found]
    if missing:
        source = variants.attrs.get("source", "variants table")
        raise VariantError(f"{source}: no column for {missing}; a variant table needs chrom, pos (1-based), ref "
                           f"and alt. Columns found: {list(variants.columns)[:12]}")
    out = pd.DataFrame(index=variants.index)
    out["chrom"] = [_text(v, upper=False) for v in variants[found["chrom"]]]
    out["pos"] = pd.array([_whole(v) for v in variants[found["pos"]]], dtype="Int64")
    out["ref"] = [_text(v) for v in variants[found["ref"]]]
    out["alt"] = [_text(v) for v in variants[found["alt"]]]
    out.attrs.update(variants.attrs)
    return out


def _text(value, upper: bool = True) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = str(value).strip()
    return text.upper() if upper else text


def _whole(value) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if np.isfinite(number) and number.is_integer() else None
