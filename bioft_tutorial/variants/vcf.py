"""VCF in and out: one row per ALT allele, INFO values split per allele only where that is certain.

:func:`read_vcf` returns ``chrom, pos, id, ref, alt, qual, filter, info, allele`` with the file's line number
as the index (``"line"``), ``attrs["source"]`` (the path) and ``attrs["info_header"]`` (the ``##INFO``
declarations: ``{field: {"Number": ..., "Type": ..., "Description": ...}}``). :func:`expand_info` turns the
INFO text into typed columns. Sample columns are not read.

**Multi-allelic records** (``A -> C,T``) become one row per ALT (``allele`` = 1, 2, ...). An INFO value with
several comma-separated values is split so that each row keeps its own allele's value only when that is
certain, and is otherwise kept whole on every row with a logged warning (one per field and file):

* ``Number=A`` (one value per ALT) with as many values as ALTs: split; ``Number=R`` (REF, then one per
  ALT) with one more: each row keeps ``REF,its ALT``. Other counts: kept whole, with a warning.
* No ``##INFO`` line, or another ``Number``, but exactly one value per ALT: split, with a warning (declare
  ``Number=A`` to make it explicit). An integer ``Number`` equal to the count: kept whole, silently (the
  header says the field has that many values). Any other count: kept whole, with a warning.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from ..data.files import atomic_write_bytes, parse_text_file
from .genome import VariantError
from .io import standardize_variants

log = logging.getLogger(__name__)
VCF_HEADER = ("CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")
_INFO_LINE = re.compile(r"^##INFO=<(?P<body>.*)>\s*$")
_INFO_ITEM = re.compile(r'(?P<key>\w+)=(?P<value>"(?:[^"\\]|\\.)*"|[^,]*)')
_DTYPES = {"Integer": "Int64", "Float": "float64", "Flag": "bool"}


def read_vcf(path: str | Path) -> pd.DataFrame:
    """Read the variant records of a VCF (plain or gzip/bgzip); see :func:`parse_vcf`.

    Raises:
        FileNotFoundError: no such file.
        VariantError: not UTF-8 text or not valid gzip, or one of :func:`parse_vcf`'s errors.
    """
    return parse_text_file(path, parse_vcf, "VCF", VariantError)


def parse_vcf(lines: Iterable[str], source: str = "<string>") -> pd.DataFrame:
    """Parse VCF text into one row per (record, ALT allele); INFO is split as the module docstring says.

    Returns:
        DataFrame with ``chrom, pos, id, ref, alt, qual, filter, info, allele``; index = line numbers.

    Raises:
        VariantError: no ``#CHROM`` header, fewer than 8 tab-separated columns, a non-integer POS or an empty
            CHROM/REF/ALT, each naming ``source`` and the line.
    """
    header: dict[str, dict[str, str]] = {}
    notes: dict[tuple[str, str], list[int]] = {}  # (field, what was done) -> line numbers
    rows, lines_of, seen_header = [], [], False
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if line.startswith("##") or not line.strip():
            header.update(_info_declaration(line))
            continue
        if line.startswith("#"):
            names = tuple(f.strip().upper() for f in line[1:].split("\t")[:8])
            if names != VCF_HEADER:
                raise VariantError(f"{source}, line {lineno}: the header line must be the 8 tab-separated columns "
                                   f"#{' '.join(VCF_HEADER)}; found {line[:60]!r}")
            seen_header = True
            continue
        if not seen_header:
            raise VariantError(f"{source}, line {lineno}: a record before the '#CHROM POS ID REF ALT QUAL FILTER INFO'"
                               " header line; is this a VCF? (a VCF starts with '##fileformat=VCFv4.2')")
        for allele, record in enumerate(_vcf_records(line, lineno, source, header, notes), start=1):
            rows.append((*record, allele))
            lines_of.append(lineno)
    if not seen_header:
        raise VariantError(f"{source}: no '#CHROM' header line found; the file is empty or not a VCF")
    _log_notes(notes, header, source)
    df = pd.DataFrame(rows, columns=["chrom", "pos", "id", "ref", "alt", "qual", "filter", "info", "allele"],
                      index=pd.Index(lines_of, name="line"))
    df["pos"] = df["pos"].astype(np.int64)
    df["qual"] = df["qual"].astype(float)
    df.attrs.update(source=source, info_header=header)
    return df


def _info_declaration(line: str) -> dict[str, dict[str, str]]:
    """``{ID: {"Number", "Type", "Description"}}`` from an ``##INFO=<...>`` line; ``{}`` for other lines."""
    match = _INFO_LINE.match(line)
    if not match:
        return {}
    items = {m["key"]: m["value"].strip('"') for m in _INFO_ITEM.finditer(match["body"])}
    if "ID" not in items:
        return {}
    return {items["ID"]: {k: items.get(k, "") for k in ("Number", "Type", "Description")}}


def _vcf_records(line: str, lineno: int, source: str, header: Mapping, notes: dict) -> list[tuple]:
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
    per_allele = _split_info(info, len(alt_list), header, lineno, notes)
    return [(chrom, int(pos), vid, ref.upper(), alt.upper(), qual_value, filt, per_allele[i])
            for i, alt in enumerate(alt_list)]


def _split_info(info: str, n_alts: int, header: Mapping, lineno: int, notes: dict) -> list[str]:
    """The INFO text of each ALT of one record (see the module docstring for the rule)."""
    if n_alts == 1 or info == ".":
        return [info] * n_alts
    items: list[list[str]] = [[] for _ in range(n_alts)]
    for item in info.split(";"):
        key, eq, value = item.partition("=")
        values = _allele_values(key, value.split(","), n_alts, header.get(key, {}).get("Number"), lineno, notes) \
            if eq else [None] * n_alts
        for i in range(n_alts):
            items[i].append(key if values[i] is None else f"{key}={values[i]}")
    return [";".join(parts) for parts in items]


def _allele_values(key: str, parts: list[str], n_alts: int, number: str | None, lineno: int,
                   notes: dict) -> list[str]:
    whole = [",".join(parts)] * n_alts
    if number == "A" and len(parts) == n_alts:
        return parts
    if number == "R" and len(parts) == n_alts + 1:
        return [f"{parts[0]},{p}" for p in parts[1:]]
    if number in ("A", "R") or (len(parts) > 1 and len(parts) != n_alts and str(len(parts)) != number):
        notes.setdefault((key, "whole"), []).append(lineno)
        return whole
    if len(parts) == n_alts and str(len(parts)) != number:
        notes.setdefault((key, "split"), []).append(lineno)
        return parts
    return whole


def _log_notes(notes: dict, header: Mapping, source: str) -> None:
    for (key, done), lines in notes.items():
        number = header.get(key, {}).get("Number")
        declared = f"Number={number}" if number else "no ##INFO header line"
        first = f"{len(lines)} multi-allelic record(s), first on line {lines[0]}"
        if done == "split":
            log.warning("%s: INFO field %s (%s) has one value per ALT allele on %s; split one value per ALT. "
                           "Declare ##INFO=<ID=%s,Number=A,...> in the header to make this explicit",
                           source, key, declared, first, key)
        else:
            log.warning("%s: INFO field %s (%s) has a number of values that does not match the ALT alleles on %s;"
                           " kept whole on every ALT row, so each row carries the values of all its record's "
                           "alleles. Split the record (bcftools norm -m -any) or fix the header's Number",
                           source, key, declared, first)


# ------------------------------------------------------------------------------------------------ INFO
def expand_info(variants: pd.DataFrame, fields: Iterable[str] | None = None) -> pd.DataFrame:
    """A copy of ``variants`` (from :func:`read_vcf`) with one typed column per INFO field.

    Types come from the ``##INFO`` header (``attrs["info_header"]``): ``Integer`` -> nullable ``Int64``,
    ``Float`` -> float, ``Flag`` -> bool (present or not), ``String`` -> text. A field with one value per row
    (``Number=1``, or ``Number=A`` after the split) gets that type; a field with several values (``Number=R``,
    ``.``, ...) and a field the header does not declare stay text as written. A missing value (absent, or
    ``.``) is ``<NA>``/NaN. A column whose name the table already has is called ``info_<field>``.

    Args:
        variants: a table with an ``info`` column of ``key=value;flag`` text.
        fields: the INFO fields to expand (default: every field that occurs, in order of first occurrence).

    Raises:
        VariantError: a value that is not of its declared type, naming the file, line, field and value.
    """
    header = variants.attrs.get("info_header", {})
    parsed = [_info_dict(text) for text in variants["info"]]
    names = list(fields) if fields is not None else list(dict.fromkeys(k for d in parsed for k in d))
    out = variants.copy()
    for key in names:
        meta = header.get(key, {})
        column = f"info_{key}" if key in out.columns else key
        out[column] = _typed(key, [d.get(key) for d in parsed], meta, variants)
    return out


def _info_dict(text: object) -> dict[str, str | bool]:
    if not isinstance(text, str) or text in ("", "."):
        return {}
    return {k: (v if eq else True) for k, eq, v in (item.partition("=") for item in text.split(";") if item)}


def _typed(key: str, values: list, meta: Mapping[str, str], variants: pd.DataFrame) -> pd.Series | list:
    kind, number = meta.get("Type"), meta.get("Number")
    if kind == "Flag" or (not meta and all(v in (None, True) for v in values)):
        return pd.array([v is not None for v in values], dtype="bool")
    if kind not in ("Integer", "Float") or number not in ("1", "A"):
        return [None if v in (None, ".") else str(v) for v in values]
    converted = []
    for label, value in zip(variants.index, values):
        try:
            converted.append(None if value in (None, ".") else (int(value) if kind == "Integer" else float(value)))
        except (TypeError, ValueError):
            source = variants.attrs.get("source", "variants table")
            raise VariantError(f"{source}, line {label}: INFO field {key}={value!r} is not of its declared "
                               f"Type={kind}; fix the value, or the ##INFO header line") from None
    return pd.array(converted, dtype=_DTYPES[kind])


# ------------------------------------------------------------------------------------------------ write
def write_vcf(variants: pd.DataFrame, path: str | Path | None = None,
              contigs: Mapping[str, int] | None = None) -> str:
    """Write ``chrom, pos, ref, alt`` (and ``id``, ``qual``, ``filter``, ``info`` if present) as VCF 4.2 text.

    Args:
        variants: one row per ALT allele (rows are not merged into multi-allelic records).
        path: where to write (plain text, atomically); ``None`` only returns the text.
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
        atomic_write_bytes(Path(path), text.encode())
    return text


def _vcf_field(df: pd.DataFrame, name: str, i: int) -> str:
    if name not in df.columns:
        return "."
    value = df[name].iat[i]
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value) == "":
        return "."
    return f"{value:g}" if isinstance(value, float) else str(value)
