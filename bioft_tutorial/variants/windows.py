"""Sequence windows around single-nucleotide variants.

A window of ``window`` bases (8,192 by default, as in the Evo 2 BRCA1 notebook) is taken from the reference
genome with the variant at index ``window // 2`` (4,096). The alternate window is the same sequence with that
one base replaced. Sequence is upper-cased.

Clipping rule (near a contig end, or the end of a region FASTA): the window is **clipped, not shifted** and
not padded. Its ideal span ``[p - window//2, p - window//2 + window)`` (``p`` = 0-based variant position) is
intersected with the sequence the genome holds, so it is shorter and the variant sits at
``variant_index = p - start`` instead of ``window // 2``. This matches the Evo 2 notebook
(``max(0, p - W//2)``, ``min(len, p + W//2)``) and keeps every base real.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .genome import Genome, VariantError

DEFAULT_WINDOW = 8192
_COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def reverse_complement(seq: str) -> str:
    """Reverse complement of a DNA string (A<->T, C<->G, N stays N; case kept)."""
    return seq.translate(_COMPLEMENT)[::-1]


def window_bounds(pos: int, window: int, lo: int, hi: int) -> tuple[int, int]:
    """0-based, end-exclusive span of the window around 1-based ``pos``, clipped to ``[lo, hi)``.

    Args:
        pos: 1-based variant position.
        window: nominal window length (bases).
        lo, hi: the span of sequence available (0-based, end-exclusive chromosome coordinates).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1 base, got {window}")
    if not lo < pos <= hi:
        raise VariantError(f"position {pos:,} is outside the available sequence ({lo + 1:,}-{hi:,})")
    start = pos - 1 - window // 2
    return max(start, lo), min(start + window, hi)


def substitute(seq: str, index: int, base: str) -> str:
    """``seq`` with the base at 0-based ``index`` replaced by ``base`` (one letter)."""
    if len(base) != 1:
        raise VariantError(f"alternate allele {base!r} is not a single base (SNVs only)")
    return seq[:index] + base + seq[index + 1:]


@dataclass(frozen=True)
class VariantWindow:
    """The reference and alternate windows of one SNV.

    Attributes:
        chrom: chromosome name as given by the variant.
        start: 0-based chromosome coordinate of ``ref_seq[0]``.
        ref_seq: upper-case reference sequence of the window.
        variant_index: 0-based index of the variant in the window (``window // 2`` unless clipped).
        ref, alt: the alleles (upper case).
    """

    chrom: str
    start: int
    ref_seq: str
    variant_index: int
    ref: str
    alt: str

    @property
    def end(self) -> int:
        """0-based, end-exclusive chromosome coordinate of the window's end."""
        return self.start + len(self.ref_seq)

    @property
    def alt_seq(self) -> str:
        """The alternate window: ``ref_seq`` with ``alt`` at ``variant_index``."""
        return substitute(self.ref_seq, self.variant_index, self.alt)


def variant_window(genome: Genome, chrom: str, pos: int, ref: str, alt: str,
                   window: int = DEFAULT_WINDOW) -> VariantWindow:
    """Build the window of one SNV and check its REF allele against the genome.

    Args:
        genome: the reference.
        chrom: chromosome name (``"17"``, ``"chr17"``, ...).
        pos: 1-based position.
        ref, alt: single-base alleles (any case).
        window: nominal length in bases (clipped near contig ends, see the module docstring).

    Raises:
        VariantError: unknown contig, position outside the genome, non-SNV alleles or a REF mismatch.
    """
    ref, alt = str(ref).upper(), str(alt).upper()
    if len(ref) != 1 or len(alt) != 1:
        raise VariantError(f"{chrom}:{pos} {ref}>{alt} is not a single-nucleotide variant (SNVs only)")
    contig = genome.resolve(chrom)
    if not contig.start < int(pos) <= contig.end:
        raise VariantError(f"{chrom}:{pos}: outside the sequence in {genome.label} ({contig.describe()}); positions "
                           "are 1-based: use a FASTA that covers this position")
    start, end = window_bounds(int(pos), window, contig.start, contig.end)
    seq = genome.fetch(chrom, start, end)
    index = int(pos) - 1 - start
    if seq[index] != ref:
        raise VariantError(f"{chrom}:{pos}: REF is {ref!r} but {genome.label} has {seq[index]!r}; check the "
                           "genome build (e.g. GRCh37 vs GRCh38) and that positions are 1-based")
    return VariantWindow(chrom=str(chrom), start=start, ref_seq=seq, variant_index=index, ref=ref, alt=alt)


def outside(genome: Genome, chrom: str, spans: Iterable[tuple[int, int]]) -> list[str]:
    """Pieces of a contig's sequence outside ``spans`` (0-based, end-exclusive), e.g. to train on held-out data.

    Returns the upper-case pieces, left to right (empty pieces dropped).
    """
    contig = genome.resolve(chrom)
    pieces, cursor = [], contig.start
    for lo, hi in sorted((max(lo, contig.start), min(hi, contig.end)) for lo, hi in spans):
        if lo > cursor:
            pieces.append(genome.fetch(chrom, cursor, lo))
        cursor = max(cursor, hi)
    if cursor < contig.end:
        pieces.append(genome.fetch(chrom, cursor, contig.end))
    return pieces
