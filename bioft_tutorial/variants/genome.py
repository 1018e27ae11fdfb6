"""Reference genome access: a FASTA file read by indexed access (pyfaidx), or a dict contig -> sequence.

Coordinates
-----------
Variant positions (``pos``) are 1-based, as in VCF. :meth:`Genome.fetch` takes 0-based, end-exclusive
chromosome coordinates (Python slice convention): the base at 1-based position ``p`` is
``genome.fetch(chrom, p - 1, p)``. Returned sequence is upper-cased (soft-masked repeats, written in
lower case by UCSC and Ensembl, become ordinary bases).

Region FASTA files
------------------
A FASTA record may hold a slice of a chromosome rather than the whole of it. Its first base then has a
chromosome position other than 1, and the genome must be told which:

* a record id of the form ``name:start-end`` (1-based, inclusive, as written by ``samtools faidx``) is
  read as contig ``name`` starting at position ``start``; the shipped BRCA1 slice is
  ``>NC_000017.10:41100001-41300000``;
* or pass ``starts={"record_id": first_base_position}`` explicitly.

Contig names
------------
Chromosome names are matched exactly first, then through ``aliases`` (``{"17": "NC_000017.10"}``), then
by a canonical form that ignores a ``chr`` prefix, maps ``M``/``chrM`` to ``MT`` and maps human RefSeq
chromosome accessions ``NC_0000NN.v`` to ``NN`` (23 = X, 24 = Y). So ``"17"``, ``"chr17"`` and
``"NC_000017.10"`` all find the shipped record. The accession version (``.10`` = GRCh37, ``.11`` =
GRCh38) is *not* checked: a REF-allele check (see :mod:`.io`) catches a build mismatch.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

REGION_ID = re.compile(r"^(?P<name>[^:\s]+):(?P<start>[\d,]+)-(?P<end>[\d,]+)$")
_REFSEQ_HUMAN = re.compile(r"^NC_0000(?P<num>\d\d)\.\d+$")


class VariantError(ValueError):
    """Bad variant or genome input. The message names the file, line or row, the value and the fix."""


def canonical_contig(name: str) -> str:
    """Canonical chromosome name: ``"chr17"``, ``"17"``, ``"NC_000017.10"`` -> ``"17"``; ``"chrM"`` -> ``"MT"``."""
    name = str(name).strip()
    match = _REFSEQ_HUMAN.match(name)
    if match:
        num = int(match["num"])
        return {23: "X", 24: "Y"}.get(num, str(num))
    if name.lower().startswith("chr"):
        name = name[3:]
    return "MT" if name.upper() in ("M", "MT") else name


def parse_region_id(record_id: str) -> tuple[str, int, int] | None:
    """``"NC_000017.10:41100001-41300000"`` -> ``("NC_000017.10", 41100001, 41300000)``; else ``None``."""
    match = REGION_ID.match(record_id)
    if not match:
        return None
    start, end = int(match["start"].replace(",", "")), int(match["end"].replace(",", ""))
    return match["name"], start, end


@dataclass(frozen=True)
class Contig:
    """One FASTA record placed on its chromosome.

    Attributes:
        name: chromosome name used in coordinates (``"NC_000017.10"``).
        record: the record id in the FASTA file or dict (``"NC_000017.10:41100001-41300000"``).
        start: 0-based chromosome coordinate of the record's first base.
        length: number of bases in the record.
    """

    name: str
    record: str
    start: int
    length: int

    @property
    def end(self) -> int:
        """0-based, exclusive end (chromosome coordinates)."""
        return self.start + self.length

    def describe(self) -> str:
        """``"NC_000017.10:41,100,001-41,300,000"`` (1-based, inclusive)."""
        return f"{self.name}:{self.start + 1:,}-{self.end:,}"


class Genome:
    """A reference genome: a FASTA path (indexed with pyfaidx, never loaded whole) or ``{contig: sequence}``.

    Args:
        source: path to a FASTA file (plain, or bgzip-compressed with a ``.gzi``), or a mapping from record
            id to sequence.
        starts: ``{record_id: 1-based chromosome position of the record's first base}`` for region
            records whose id does not say it (see the module docstring). Default: parsed from
            ``name:start-end`` ids, else 1.
        aliases: extra names, ``{alias: contig name or record id}``, e.g. ``{"17": "NC_000017.10"}``.
        index_dir: where to keep the ``.fai`` index. Default: beside the FASTA (like ``samtools faidx``)
            when that folder is writable, else a folder under the system temp directory.

    Raises:
        FileNotFoundError: the FASTA path does not exist.
        VariantError: an empty or malformed FASTA, a region id whose span disagrees with its length, or
            two records that claim the same contig.
    """

    def __init__(self, source: str | Path | Mapping[str, str], *, starts: Mapping[str, int] | None = None,
                 aliases: Mapping[str, str] | None = None, index_dir: str | Path | None = None):
        self.source = source if isinstance(source, Mapping) else Path(source)
        self.label = "genome dict" if isinstance(source, Mapping) else str(source)
        self._fasta = None
        if isinstance(source, Mapping):
            self._seqs = {str(k): str(v) for k, v in source.items()}
            lengths = {k: len(v) for k, v in self._seqs.items()}
        else:
            self._fasta = _open_fasta(Path(source), index_dir)
            lengths = {k: len(rec) for k, rec in self._fasta.records.items()}
        if not lengths:
            raise VariantError(f"{self.label}: no sequences; give a FASTA with at least one record")
        empty = [record for record, length in lengths.items() if length == 0]
        if empty:
            raise VariantError(f"{self.label}: record {empty[0]!r} has no sequence (a header line with nothing "
                               "under it); the file is truncated or malformed: download or copy it again")
        self.contigs = _place_records(lengths, dict(starts or {}), self.label)
        by_record = {c.record: name for name, c in self.contigs.items()}
        self.aliases = {str(k): by_record.get(str(v), str(v)) for k, v in (aliases or {}).items()}
        for alias, target in self.aliases.items():
            if target not in self.contigs:
                raise VariantError(f"alias {alias!r} -> {target!r}: no contig or record {target!r} in {self.label}; "
                                   f"contigs: {', '.join(self.contigs)}")
        self._canonical: dict[str, list[str]] = {}
        for name in self.contigs:
            self._canonical.setdefault(canonical_contig(name), []).append(name)

    def __repr__(self) -> str:
        spans = ", ".join(c.describe() for c in list(self.contigs.values())[:3])
        more = f", ... ({len(self.contigs)} contigs)" if len(self.contigs) > 3 else ""
        return f"Genome({self.label!r}: {spans}{more})"

    def find(self, chrom: str) -> Contig | None:
        """The contig called ``chrom`` (exactly, by alias, or by canonical name), or ``None``."""
        chrom = str(chrom).strip()
        name = chrom if chrom in self.contigs else self.aliases.get(chrom)
        if name is None:
            matches = self._canonical.get(canonical_contig(chrom), [])
            name = matches[0] if len(matches) == 1 else None
        return self.contigs.get(name) if name else None

    def resolve(self, chrom: str) -> Contig:
        """Like :meth:`find`, but an unknown name raises :class:`VariantError` listing the contigs."""
        contig = self.find(chrom)
        if contig is None:
            raise VariantError(unknown_contig_message(chrom, self))
        return contig

    def fetch(self, chrom: str, start: int, end: int) -> str:
        """Upper-case sequence of chromosome coordinates ``[start, end)`` (0-based, end-exclusive).

        Raises:
            VariantError: unknown contig, or a span outside the sequence the genome holds.
        """
        contig = self.resolve(chrom)
        if not contig.start <= start <= end <= contig.end:
            raise VariantError(
                f"{chrom}:{start + 1:,}-{end:,} is outside the sequence in {self.label} "
                f"({contig.describe()}); use a FASTA that covers it")
        lo, hi = start - contig.start, end - contig.start
        if self._fasta is not None:
            seq = str(self._fasta[contig.record][lo:hi])
        else:
            seq = self._seqs[contig.record][lo:hi]
        return seq.upper()

    def base(self, chrom: str, pos: int) -> str:
        """The (upper-case) base at 1-based position ``pos``."""
        return self.fetch(chrom, pos - 1, pos)

    def close(self) -> None:
        """Close the FASTA file handle (a no-op for dict genomes)."""
        if self._fasta is not None:
            self._fasta.close()

    def __enter__(self) -> "Genome":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def as_genome(genome: "Genome | str | Path | Mapping[str, str]") -> Genome:
    """Return ``genome`` if it is a :class:`Genome`, else build one from a FASTA path or a dict."""
    return genome if isinstance(genome, Genome) else Genome(genome)


def unknown_contig_message(chrom: str, genome: Genome) -> str:
    """Error text for a chromosome name the genome does not know, with the names it does know."""
    names = list(genome.contigs)
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    return (f"unknown contig {chrom!r}: {genome.label} has {shown}. Check the chromosome naming "
            f"('17' vs 'chr17' vs 'NC_000017.10' are matched automatically) or pass "
            f"aliases={{{str(chrom)!r}: {names[0]!r}}} to Genome")


def _place_records(lengths: dict[str, int], starts: dict[str, int], label: str) -> dict[str, Contig]:
    unknown = set(starts) - set(lengths)
    if unknown:
        raise VariantError(f"starts= names {sorted(unknown)} are not records of {label}; records: {list(lengths)}")
    contigs: dict[str, Contig] = {}
    for record, length in lengths.items():
        region = parse_region_id(record)
        if record in starts:
            name, first = (region[0] if region else record), int(starts[record])
        elif region:
            name, first, last = region
            if last - first + 1 != length:
                raise VariantError(
                    f"{label}: record {record!r} says it spans {last - first + 1:,} bases but holds {length:,}; "
                    "fix the header, or pass starts={record_id: first_position} to say where it begins")
        else:
            name, first = record, 1
        if first < 1:
            raise VariantError(f"{label}: record {record!r} starts at position {first}; positions are 1-based (>= 1)")
        if name in contigs:
            raise VariantError(f"{label}: records {contigs[name].record!r} and {record!r} are both contig "
                               f"{name!r}; keep one record per contig (merge regions or use two Genomes)")
        contigs[name] = Contig(name=name, record=record, start=first - 1, length=length)
    return contigs


def _index_path(path: Path, index_dir: str | Path | None) -> Path:
    beside = path.with_name(path.name + ".fai")
    if index_dir is None and (beside.exists() or os.access(path.parent, os.W_OK)):
        return beside
    folder = Path(index_dir) if index_dir is not None else Path(tempfile.gettempdir()) / "bioft-fai"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return folder / f"{path.name}.{digest}.fai"


def _open_fasta(path: Path, index_dir: str | Path | None):
    import pyfaidx

    if not path.exists():
        raise FileNotFoundError(f"{path}: no such FASTA file; check the path (relative to {Path.cwd()})")
    if path.is_dir():
        raise VariantError(f"{path} is a folder; pass the path of the FASTA file inside it (e.g. {path}/genome.fa)")
    if path.stat().st_size == 0:
        raise VariantError(f"{path}: the FASTA file is empty; download or copy it again")
    try:
        fasta = pyfaidx.Fasta(str(path), indexname=str(_index_path(path, index_dir)), as_raw=True,
                              sequence_always_upper=True, rebuild=True)
    except ImportError as err:  # pyfaidx reads bgzip through Biopython
        raise VariantError(f"{path}: a compressed FASTA needs Biopython for indexed access (pip install "
                           "biopython, then compress with bgzip), or decompress it (gunzip)") from err
    except pyfaidx.UnsupportedCompressionFormat as err:
        raise VariantError(f"{path}: gzip-compressed FASTA cannot be read by indexed access; decompress it "
                           "(gunzip) or recompress it with bgzip (htslib)") from err
    except (pyfaidx.FastaIndexingError, ValueError) as err:  # UnicodeDecodeError is a ValueError too
        raise VariantError(f"{path}: not a well-formed FASTA ({err}). Every record needs a '>' header and "
                           "lines of equal width; rewrap it, e.g. `seqkit seq -w 60 in.fa > out.fa`") from err
    log.debug("opened %s (index %s)", path, fasta.faidx.indexname)
    return fasta
