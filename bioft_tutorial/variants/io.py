"""Variant tables in and out: VCF, CSV and the Findlay et al. 2018 BRCA1 table.

Every reader returns a DataFrame with the columns ``chrom`` (str), ``pos`` (int, 1-based), ``ref`` and
``alt`` (upper case) plus the file's other columns, and an index that says where each row came from: the
file's line number (index name ``"line"``) or the spreadsheet row (``"row"``). ``df.attrs["source"]`` holds
the path. Error messages quote both, so a bad row can be found in an editor.

Malformed files raise :class:`~.genome.VariantError`. Rows that parse but cannot be scored (indels,
``N`` alleles, REF mismatches, ...) are *not* rejected here: :func:`~.checks.check_variants` reports them.
"""
from __future__ import annotations

import gzip
import io
import re
from pathlib import Path
from typing import IO, Iterable, Mapping

import numpy as np
import pandas as pd

from .genome import VariantError

VARIANT_COLUMNS = ("chrom", "pos", "ref", "alt")
VCF_HEADER = ("CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")
FINDLAY_COLUMNS = {"chromosome": "chrom", "position (hg19)": "pos", "reference": "ref", "alt": "alt"}
_ALIASES = {"chrom": ("chrom", "chromosome", "chr", "#chrom", "contig"), "pos": ("pos", "position"),
            "ref": ("ref", "reference"), "alt": ("alt", "alternate")}
_INFO_NUMBER = re.compile(r"^##INFO=<ID=(?P<id>[^,>]+),Number=(?P<number>[^,>]+)")


def _open_text(path: str | Path) -> IO[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path (relative to {Path.cwd()})")
    if path.suffix in (".gz", ".bgz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------- VCF
def read_vcf(path: str | Path) -> pd.DataFrame:
    """Read the variant records of a VCF (plain or gzip/bgzip); see :func:`parse_vcf`.

    Raises:
        FileNotFoundError: no such file.
        VariantError: not UTF-8 text or not valid gzip, or one of :func:`parse_vcf`'s errors.
    """
    try:
        with _open_text(path) as handle:
            return parse_vcf(handle, source=str(path))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise VariantError(f"{path}: not a readable VCF text file ({type(err).__name__}: {err}); check that it is a "
                           "VCF, and that a '.gz' name really holds a complete gzip/bgzip file") from err


def parse_vcf(lines: Iterable[str], source: str = "<string>") -> pd.DataFrame:
    """Parse VCF text into one row per (record, ALT allele).

    Multi-allelic records are split: ``A -> C,T`` gives two rows, with ``allele`` = 1 and 2 (the ALT index).
    INFO is kept as text; fields the header declares ``Number=A`` (one value per ALT) or ``Number=R`` (REF
    then one per ALT) keep only the values of that row's allele. Sample columns are not read.

    Returns:
        DataFrame with ``chrom, pos, id, ref, alt, qual, filter, info, allele``; index = line numbers.

    Raises:
        VariantError: no ``#CHROM`` header, fewer than 8 tab-separated columns, a non-integer POS or an empty
            CHROM/REF/ALT, each naming ``source`` and the line.
    """
    numbers: dict[str, str] = {}
    rows, lines_of = [], []
    header = False
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if line.startswith("##"):
            match = _INFO_NUMBER.match(line)
            if match:
                numbers[match["id"]] = match["number"]
            continue
        if line.startswith("#"):
            names = tuple(f.strip().upper() for f in line[1:].split("\t")[:8])
            if names != VCF_HEADER:
                raise VariantError(f"{source}, line {lineno}: the header line must be the 8 tab-separated columns "
                                   f"#{' '.join(VCF_HEADER)}; found {line[:60]!r}")
            header = True
            continue
        if not header:
            raise VariantError(f"{source}, line {lineno}: a record before the '#CHROM POS ID REF ALT QUAL FILTER INFO'"
                               " header line; is this a VCF? (a VCF starts with '##fileformat=VCFv4.2')")
        for allele, record in enumerate(_vcf_records(line, lineno, source, numbers), start=1):
            rows.append((*record, allele))
            lines_of.append(lineno)
    if not header:
        raise VariantError(f"{source}: no '#CHROM' header line found; the file is empty or not a VCF")
    df = pd.DataFrame(rows, columns=["chrom", "pos", "id", "ref", "alt", "qual", "filter", "info", "allele"],
                      index=pd.Index(lines_of, name="line"))
    df["pos"] = df["pos"].astype(np.int64)
    df["qual"] = df["qual"].astype(float)
    df.attrs["source"] = source
    return df


def _vcf_records(line: str, lineno: int, source: str, numbers: Mapping[str, str]) -> list[tuple]:
    fields = line.split("\t")
    where = f"{source}, line {lineno}"
    if len(fields) < 8:
        raise VariantError(f"{where}: {len(fields)} tab-separated columns; a VCF record needs 8 (CHROM POS ID REF "
                           "ALT QUAL FILTER INFO). Are the columns separated by spaces instead of tabs?")
    chrom, pos, vid, ref, alts, qual, filt, info = (f.strip() for f in fields[:8])
    for name, value in (("CHROM", chrom), ("REF", ref), ("ALT", alts)):
        if not value:
            raise VariantError(f"{where}: empty {name} column; write '.' for a missing ALT, never leave it empty")
    if not re.fullmatch(r"\d+", pos):
        raise VariantError(f"{where}: POS {pos!r} is not a whole number; VCF positions are 1-based integers")
    try:
        qual_value = float("nan") if qual == "." else float(qual)
    except ValueError:
        raise VariantError(f"{where}: QUAL {qual!r} is not a number or '.'") from None
    alt_list = alts.split(",")
    return [(chrom, int(pos), vid, ref.upper(), alt.upper(), qual_value, filt,
             _info_for_allele(info, i, len(alt_list), numbers)) for i, alt in enumerate(alt_list)]


def _info_for_allele(info: str, index: int, n_alts: int, numbers: Mapping[str, str]) -> str:
    if n_alts == 1 or info == ".":
        return info
    out = []
    for item in info.split(";"):
        key, eq, value = item.partition("=")
        parts = value.split(",")
        if eq and numbers.get(key) == "A" and len(parts) == n_alts:
            value = parts[index]
        elif eq and numbers.get(key) == "R" and len(parts) == n_alts + 1:
            value = f"{parts[0]},{parts[index + 1]}"
        out.append(f"{key}={value}" if eq else key)
    return ";".join(out)


def write_vcf(variants: pd.DataFrame, path: str | Path | None = None,
              contigs: Mapping[str, int] | None = None) -> str:
    """Write ``chrom, pos, ref, alt`` (and ``id``, ``qual``, ``filter``, ``info`` if present) as VCF 4.2 text.

    Args:
        variants: one row per ALT allele (rows are not merged into multi-allelic records).
        path: where to write (plain text); ``None`` only returns the text.
        contigs: ``{name: length}`` for ``##contig`` header lines (optional).

    Returns:
        The VCF text.
    """
    std = standardize_variants(variants)
    head = ["##fileformat=VCFv4.2", "##source=bioft_tutorial.variants"]
    head += [f"##contig=<ID={name},length={length}>" for name, length in (contigs or {}).items()]
    head.append("#" + "\t".join(VCF_HEADER))
    body = []
    for i in range(len(std)):
        extra = [_vcf_field(variants, name, i) for name in ("id", "qual", "filter", "info")]
        body.append("\t".join([std["chrom"].iat[i], str(std["pos"].iat[i]), extra[0], std["ref"].iat[i],
                               std["alt"].iat[i], *extra[1:]]))
    text = "\n".join(head + body) + "\n"
    if path is not None:
        Path(path).write_text(text)
    return text


def _vcf_field(df: pd.DataFrame, name: str, i: int) -> str:
    if name not in df.columns:
        return "."
    value = df[name].iat[i]
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == "":
        return "."
    return f"{value:g}" if isinstance(value, float) else str(value)


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
