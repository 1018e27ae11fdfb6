"""Mutant strings: parse ``"A42G:T50C"`` against a wild type, list single mutants, diff full sequences.

Notation (ProteinGym's): a substitution is ``<wild-type aa><position><mutant aa>`` with a 1-based position,
several substitutions of one variant are joined by ``":"``. The wild type itself (no substitution) is
written ``""``, ``"WT"`` or ``"_wt"`` (MaveDB, Enrich2); it parses to no substitutions, so it scores 0 and
keeps its row in a DMS table.

Errors are ``ValueError`` naming the mutant, the position and the fix (often the ``offset`` that makes
the numbering match). Needs only the standard library.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
#: How a table may write the wild type (compared case-insensitively, after stripping spaces).
WILD_TYPE_NAMES = ("", "wt", "_wt")
_MUTANT = re.compile(r"^([A-Za-z])(-?\d+)([A-Za-z])$")


@dataclass(frozen=True)
class Substitution:
    """One amino-acid change: ``wt`` at ``position`` (1-based, in ``wt_seq``) becomes ``mt``."""

    wt: str
    position: int
    mt: str


def is_wild_type(mutant: object) -> bool:
    """Whether ``mutant`` names the wild type: ``""``, ``"WT"`` or ``"_wt"`` (any case, spaces ignored)."""
    return isinstance(mutant, str) and mutant.strip().lower() in WILD_TYPE_NAMES


def parse_mutant(mutant: str, wt_seq: str, offset: int = 0) -> tuple[Substitution, ...]:
    """Parse and check a ProteinGym-style mutant such as ``"A42G"`` or ``"A42G:T50C"``.

    Args:
        mutant: substitutions ``<wild-type aa><position><mutant aa>`` joined by ``":"``; the wild type
            is ``""``, ``"WT"`` or ``"_wt"``.
        wt_seq: the wild-type sequence the mutant refers to.
        offset: subtracted from each written position to get the 1-based position in ``wt_seq``:
            ``0`` when the mutant is numbered like ``wt_seq`` (ProteinGym), ``23`` when ``wt_seq``
            starts at residue 24 of the numbering the mutants use.

    Returns:
        The substitutions, positions 1-based in ``wt_seq``; ``()`` for the wild type.

    Raises:
        ValueError: not text, bad format, a letter outside the 20 amino acids, a position outside
            ``wt_seq``, a wild-type letter that does not match ``wt_seq`` (the message suggests an offset
            when a neighbour matches), or a position that appears twice.
    """
    if not isinstance(mutant, str):
        raise ValueError(f"mutant {mutant!r}: expected text like 'A42G' or 'A42G:T50C'; write the wild type "
                         "as 'WT'")
    if is_wild_type(mutant):
        return ()
    subs = tuple(_parse_one(mutant, part.strip(), wt_seq, offset) for part in mutant.split(":"))
    positions = [s.position for s in subs]
    twice = [p for p in positions if positions.count(p) > 1]
    if twice:
        raise ValueError(f"mutant {mutant!r}: position {twice[0] + offset} appears twice; a variant changes each "
                         "position at most once (merge or drop the duplicate)")
    return subs


def _parse_one(mutant: str, part: str, wt_seq: str, offset: int) -> Substitution:
    match = _MUTANT.match(part)
    if match is None:
        wt_hint = "; write the wild type as 'WT'" if part.lower() in ("wt", "_wt", "wildtype", "wild-type") else ""
        raise ValueError(f"mutant {mutant!r}: {part!r} is not like 'A42G' (wild-type letter, 1-based position, "
                         f"mutant letter); join several substitutions with ':'{wt_hint}")
    wt, written, mt = match.group(1), int(match.group(2)), match.group(3)
    for letter in (wt, mt):
        if letter not in AMINO_ACIDS:
            hint = " (use upper case)" if letter.upper() in AMINO_ACIDS else ""
            raise ValueError(f"mutant {mutant!r}: {letter!r} is not one of the 20 amino acids {AMINO_ACIDS}{hint}")
    position = written - offset
    if not 1 <= position <= len(wt_seq):
        where = f"position {written}" + (f" (= {position} with offset={offset})" if offset else "")
        hint = ("positions are 1-based; for 0-based numbering use offset=-1" if position == 0 else
                "is it numbered for a longer construct? Set offset so that position - offset indexes wt_seq")
        raise ValueError(f"mutant {mutant!r}: {where} is outside the sequence of {len(wt_seq)} residues "
                         f"(1..{len(wt_seq)}); {hint}")
    if wt_seq[position - 1] != wt:
        raise ValueError(_mismatch_message(mutant, wt, written, position, wt_seq, offset))
    return Substitution(wt, position, mt)


def _mismatch_message(mutant: str, wt: str, written: int, position: int, wt_seq: str, offset: int) -> str:
    written_as = f"; written {written} with offset={offset}" if offset else ""
    msg = f"mutant {mutant!r}: sequence has {wt_seq[position - 1]!r} at position {position} (1-based{written_as})"
    for shift in (-1, 1):
        near = position + shift
        if 1 <= near <= len(wt_seq) and wt_seq[near - 1] == wt:
            return (f"{msg}; it has {wt!r} at {near} — is your numbering offset by one? "
                    f"Try offset={offset - shift}")
    return (f"{msg}, not {wt!r}; check that wt_seq is the sequence these mutants were written for, and their "
            "numbering (set offset if they use another scheme)")


def single_mutants(wt_seq: str) -> list[str]:
    """All 19 x ``len(wt_seq)`` single substitutions, e.g. ``["M1A", "M1C", ...]`` (1-based)."""
    return [f"{wt}{i}{mt}" for i, wt in enumerate(wt_seq, start=1) for mt in AMINO_ACIDS if mt != wt]


def apply_mutant(wt_seq: str, mutant: str | Sequence[Substitution], offset: int = 0) -> str:
    """The full sequence of a mutant: ``apply_mutant("MKT", "K2A") == "MAT"``.

    Args:
        wt_seq: the wild-type sequence.
        mutant: a mutant string (checked with :func:`parse_mutant`) or substitutions it returned.
        offset: numbering offset of a mutant string (see :func:`parse_mutant`).
    """
    subs = parse_mutant(mutant, wt_seq, offset) if isinstance(mutant, str) else mutant
    seq = list(wt_seq)
    for sub in subs:
        seq[sub.position - 1] = sub.mt
    return "".join(seq)


def mutants_from_sequences(wt_seq: str, sequences: Sequence[str], offset: int = 0,
                           source: str = "sequences") -> list[str]:
    """Mutant strings of full-length variant sequences, by comparing each with the wild type residue by residue.

    Args:
        wt_seq: the wild-type sequence.
        sequences: variant sequences of the same length as ``wt_seq`` (a list, or a pandas Series whose index
            labels name the rows in errors, e.g. the file's line numbers).
        offset: added to each 1-based position when writing the mutant (the inverse of :func:`parse_mutant`'s).
        source: names the sequences in errors (a file name).

    Returns:
        One mutant per sequence, in input order: ``"A1C:D5E"`` for several differences (positions ascending),
        ``""`` for a sequence equal to the wild type. ``parse_mutant(m, wt_seq, offset)`` reads each back.

    Raises:
        ValueError: a sequence that is not text, has another length than ``wt_seq`` (an insertion or
            deletion: align it first, or drop the row), or carries something other than one of the 20 amino
            acids where it differs from the wild type; each names the row (1-based, or the Series' label).
    """
    index = getattr(sequences, "index", None)  # a pandas Series names its rows; list.index is a method
    labels = range(1, len(sequences) + 1) if index is None or callable(index) else index
    return [_diff(wt_seq, seq, offset, f"{source}, row {label}") for label, seq in zip(labels, sequences)]


def _diff(wt_seq: str, seq: object, offset: int, where: str) -> str:
    if not isinstance(seq, str):
        raise ValueError(f"{where}: {seq!r} is not a sequence; drop the row or fill in its sequence")
    if len(seq) != len(wt_seq):
        raise ValueError(f"{where}: {len(seq)} residues, but the wild type has {len(wt_seq)}; only substitutions can "
                         "be written as mutants (align insertions and deletions first, or drop the row)")
    parts = []
    for position, (wt, mt) in enumerate(zip(wt_seq, seq), start=1):
        if wt == mt:
            continue
        if mt not in AMINO_ACIDS:
            hint = " (use upper case)" if mt.upper() in AMINO_ACIDS else ""
            raise ValueError(f"{where}: {mt!r} at position {position} (1-based) is not one of the 20 amino acids "
                             f"{AMINO_ACIDS}{hint}; fix or drop the row")
        parts.append(f"{wt}{position + offset}{mt}")
    return ":".join(parts)
