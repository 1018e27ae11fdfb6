"""Row-by-row checks of a variant table against the genome, and the error message that explains them.

:func:`check_variants` returns one row per variant that cannot be scored, with a problem code:

==================  ================================================================================
``missing``         chrom, pos, ref or alt is empty
``bad_position``    pos is not a whole number >= 1
``non_acgt``        an allele has a letter other than A, C, G, T (``N``, IUPAC codes, ``<DEL>``, ``*``, ``.``)
``indel``           ref or alt is longer than one base: scoring handles single-nucleotide variants only
``same_allele``     ref equals alt
``unknown_contig``  the genome has no such chromosome (after alias and ``chr``/RefSeq matching)
``out_of_range``    the position lies outside the sequence the genome holds
``ref_mismatch``    ref differs from the genome's base
==================  ================================================================================

:func:`raise_for_problems` turns them into one :class:`~.genome.VariantError` that counts each kind, lists
the first few rows (file line or spreadsheet row) and says what to do, including a hint at a genome build
mismatch, 0-based positions or minus-strand alleles when the REF mismatches look like one.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .genome import Genome, VariantError, unknown_contig_message
from .io import standardize_variants
from .windows import reverse_complement

PROBLEMS = ("missing", "bad_position", "multi_allelic", "non_acgt", "indel", "same_allele", "unknown_contig", "out_of_range",
            "ref_mismatch")
SHOW = 5  # rows quoted per kind of problem
_FIX = {
    "missing": "fill in chrom, pos, ref and alt",
    "bad_position": "positions are whole numbers >= 1 (1-based, as in VCF)",
    "multi_allelic": "write one row per ALT allele: split 'G,C' into two rows (with pandas: "
                     "df.assign(alt=df['alt'].str.split(',')).explode('alt')), or write the variants as a VCF, which "
                     "read_vcf splits per ALT",
    "non_acgt": "only A, C, G, T alleles can be scored; drop rows with N, IUPAC codes or symbolic alleles",
    "indel": "scoring handles SNVs only (one base -> one base); drop or split indels",
    "same_allele": "ref and alt are the same base; drop the row",
    "unknown_contig": "see the contig names below",
    "out_of_range": "use a FASTA that covers these positions (a region FASTA holds only part of a chromosome)",
    "ref_mismatch": "the REF allele must equal the genome's base at that 1-based position",
}


def check_variants(genome: Genome, variants: pd.DataFrame) -> pd.DataFrame:
    """Find the rows of ``variants`` that cannot be scored against ``genome``.

    Args:
        genome: the reference.
        variants: a table with chrom, pos (1-based), ref and alt (see :func:`~.io.standardize_variants`).

    Returns:
        One row per bad variant, with columns ``row`` (index label of ``variants``), ``position`` (0-based
        row number), ``chrom``, ``pos``, ``ref``, ``alt``, ``problem`` (a code above) and ``detail``. Empty
        when every variant can be scored.
    """
    std = standardize_variants(variants)
    problem = np.array([_allele_problem(r, a, c, p) for c, p, r, a in
                        zip(std["chrom"], std["pos"], std["ref"], std["alt"])], dtype=object)
    detail = np.full(len(std), "", dtype=object)
    for chrom in pd.unique(std["chrom"][problem == None]):  # noqa: E711 (elementwise)
        rows = np.flatnonzero((std["chrom"].to_numpy() == chrom) & (problem == None))  # noqa: E711
        contig = genome.find(chrom)
        if contig is None:
            problem[rows] = "unknown_contig"
            continue
        pos = std["pos"].to_numpy()[rows].astype(np.int64)
        inside = (pos > contig.start) & (pos <= contig.end)
        problem[rows[~inside]] = "out_of_range"
        detail[rows[~inside]] = f"genome holds {contig.describe()}"
        rows, pos = rows[inside], pos[inside]
        bases = _bases(genome, chrom, pos)
        bad = bases != std["ref"].to_numpy()[rows].astype(str)
        problem[rows[bad]] = "ref_mismatch"
        detail[rows[bad]] = [f"genome has {b}" for b in bases[bad]]
    keep = problem != None  # noqa: E711
    out = std[keep].copy()
    out.insert(0, "position", np.flatnonzero(keep))
    out.insert(0, "row", std.index[keep])
    out["problem"], out["detail"] = problem[keep], detail[keep]
    return out.reset_index(drop=True)


def _allele_problem(ref: str, alt: str, chrom: str, pos) -> str | None:
    if not chrom or not ref or not alt or pos is pd.NA:
        return "missing" if (not chrom or not ref or not alt) else "bad_position"
    if pos < 1:
        return "bad_position"
    if "," in alt:
        return "multi_allelic"
    if set(ref) - set("ACGT") or set(alt) - set("ACGT"):
        return "non_acgt"
    if len(ref) != 1 or len(alt) != 1:
        return "indel"
    return "same_allele" if ref == alt else None


def _bases(genome: Genome, chrom: str, pos: np.ndarray) -> np.ndarray:
    """Genome bases at 1-based ``pos`` (one fetch when they are close together, else one per position)."""
    if len(pos) == 0:
        return np.array([], dtype=str)
    lo, hi = int(pos.min()) - 1, int(pos.max())
    if hi - lo <= 5_000_000:
        span = np.frombuffer(genome.fetch(chrom, lo, hi).encode(), dtype="S1")
        return span[pos - 1 - lo].astype(str)
    return np.array([genome.base(chrom, int(p)) for p in pos])


def _hints(genome: Genome, bad: pd.DataFrame, n_checked: int) -> str:
    """Why REF might disagree: 0-based positions, minus-strand alleles, or (failing those) another build."""
    hints = []
    if len(bad) >= 3:
        for shift, what in ((1, "0-based (add 1 to pos)"), (-1, "shifted by +1 (subtract 1 from pos)")):
            hits = sum(_base_or_none(genome, r.chrom, int(r.pos) + shift) == r.ref for r in bad.itertuples())
            if hits > 0.8 * len(bad):
                hints.append(f"the REF alleles match the genome one base over: positions look {what}")
        flipped = sum(reverse_complement(r.ref) == r.detail[-1:] for r in bad.itertuples())
        if flipped > 0.8 * len(bad):
            hints.append("the REF alleles are the complement of the genome's bases: alleles look like they are "
                         "given on the minus strand; VCF alleles are on the + strand of the reference")
    if not hints and len(bad) >= max(3, 0.2 * n_checked):
        hints.append(f"{len(bad)} of {n_checked} checked REF alleles disagree: the variants and the genome are "
                     "probably from different builds (e.g. GRCh37/hg19 vs GRCh38/hg38); use the FASTA of the build "
                     "the variants were called on")
    return "".join(f"\n  hint: {h}" for h in hints)


def _base_or_none(genome: Genome, chrom: str, pos: int) -> str | None:
    contig = genome.find(chrom)
    return genome.base(chrom, pos) if contig and contig.start < pos <= contig.end else None


def describe_problems(genome: Genome, problems: pd.DataFrame, n_variants: int, source: str,
                      row_label: str = "row") -> str:
    """One readable paragraph per kind of problem, quoting the first :data:`SHOW` rows of each."""
    lines = [f"{source}: {len(problems)} of {n_variants} variants cannot be scored:"]
    for kind in PROBLEMS:
        rows = problems[problems["problem"] == kind]
        if rows.empty:
            continue
        quoted = "; ".join(f"{row_label} {r.row}: {r.chrom}:{r.pos} {r.ref or '?'}>{r.alt or '?'}"
                           + (f" ({r.detail})" if r.detail else "") for r in rows.head(SHOW).itertuples())
        more = f"; ... and {len(rows) - SHOW} more" if len(rows) > SHOW else ""
        lines.append(f"- {kind} x{len(rows)}: {quoted}{more}. Fix: {_FIX[kind]}.")
        if kind == "unknown_contig":
            lines.append("  " + unknown_contig_message(rows["chrom"].iat[0], genome))
        if kind == "ref_mismatch":
            checked = n_variants - int((problems["problem"] != "ref_mismatch").sum())
            lines[-1] += _hints(genome, rows, checked)
    lines.append("Fix these rows, or pass on_invalid='skip' to score the others (skipped rows get NaN scores and "
                 "a 'problem' column).")
    return "\n".join(lines)


def problem_report(genome: Genome, variants: pd.DataFrame, problems: pd.DataFrame) -> str:
    """:func:`describe_problems` with the source and row label (``line`` or ``row``) taken from ``variants``."""
    source = variants.attrs.get("source", "variants table")
    label = variants.index.name if variants.index.name in ("line", "row") else "row"
    return describe_problems(genome, problems, len(variants), source, label)


def raise_for_problems(genome: Genome, variants: pd.DataFrame, problems: pd.DataFrame) -> None:
    """Raise one :class:`~.genome.VariantError` describing ``problems`` (a no-op when there are none)."""
    if not problems.empty:
        raise VariantError(problem_report(genome, variants, problems))
