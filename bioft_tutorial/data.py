"""Readers for the book's data, validated on load, and a verified download cache.

Shipped with the package (see ``bioft_tutorial/assets/*/SOURCE.md`` for origin and licence):

* FLIP secondary structure (NetSurfP-2.0 chains, H/E/C labels, resolved-residue mask):
  :func:`load_flip_secondary_structure`.
* ProteinGym BLAT_ECOLX_Stiffler_2015 DMS (4,996 single substitutions of TEM-1):
  :func:`load_blat_dms`, :func:`blat_wild_type`.
* The Findlay et al. 2018 BRCA1 SGE table and the hg19 chr17 region FASTA: :func:`asset_path`.

Every reader raises :class:`DataError` (a ``ValueError``) naming the file, line or row and the fix.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tempfile
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import IO, Iterable

import pandas as pd

SS_LABELS = "HEC"  # helix, strand, coil: the label order used everywhere (class ids 0, 1, 2)
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
#: Split sizes of the shipped FLIP secondary-structure data (checked on load).
FLIP_SS_COUNTS = {"train": 9712, "validation": 1080, "test": 364}
BLAT_N_MUTANTS = 4996


class DataError(ValueError):
    """Bad input data. The message names the file, the line or row, and what to do."""


def asset_path(*parts: str) -> Path:
    """Path of a shipped data file, e.g. ``asset_path("brca1", "GRCh37_chr17_BRCA1_region.fa")``."""
    path = Path(str(resources.files("bioft_tutorial") / "assets" / Path(*parts)))
    if not path.exists():
        raise FileNotFoundError(f"no shipped asset {path}; reinstall the package (pip install -e .)")
    return path


def _open_text(path: str | Path) -> IO[str]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path (relative to {Path.cwd()})")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def parse_fasta(lines: Iterable[str], source: str = "<string>") -> dict[str, str]:
    """Parse FASTA text into ``{id: sequence}`` (id = header up to the first space), in file order.

    Raises:
        DataError: text before the first header, an empty id, a duplicate id, or a record with no sequence.
    """
    records: dict[str, str] = {}
    chunks: list[str] = []
    current, header_line = None, 0
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith(">"):
            _close_record(records, current, chunks, source, header_line)
            current, header_line, chunks = line[1:].split(maxsplit=1)[0] if line[1:].strip() else "", lineno, []
            if not current:
                raise DataError(f"{source}, line {lineno}: empty FASTA header '>'; give every record an id")
            if current in records:
                raise DataError(
                    f"{source}, line {lineno}: duplicate FASTA id {current!r}; ids must be unique (rename one record)"
                )
        elif current is None:
            raise DataError(
                f"{source}, line {lineno}: sequence text {line[:20]!r} before the first '>' header; "
                "is this a FASTA file?"
            )
        else:
            chunks.append(line)
    _close_record(records, current, chunks, source, header_line)
    if not records:
        raise DataError(f"{source}: no FASTA records found; the file is empty or not FASTA")
    return records


def _close_record(records: dict, current: str | None, chunks: list[str], source: str, line: int) -> None:
    if current is None:
        return
    seq = "".join(chunks)
    if not seq:
        raise DataError(f"{source}, line {line}: FASTA record {current!r} has no sequence")
    records[current] = seq


def read_fasta(path: str | Path) -> dict[str, str]:
    """Read a FASTA file (plain or ``.gz``) into ``{id: sequence}``; see :func:`parse_fasta`."""
    with _open_text(path) as handle:
        return parse_fasta(handle, source=str(path))


def read_fasta_headers(path: str | Path) -> dict[str, str]:
    """``{id: full header line without '>'}`` for a FASTA file, in file order."""
    with _open_text(path) as handle:
        return {line[1:].split()[0]: line[1:].strip() for line in handle if line.startswith(">")}


def write_fasta(records: dict[str, str], path: str | Path | None = None, width: int = 60) -> str:
    """Write ``{id: sequence}`` as FASTA (wrapped at ``width``); returns the text, writes it if ``path``."""
    text = "".join(
        f">{rid}\n" + "".join(seq[i:i + width] + "\n" for i in range(0, len(seq), width))
        for rid, seq in records.items()
    )
    if path is not None:
        atomic_write_bytes(Path(path), text.encode())
    return text


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
        n = len(row.sequence)
        if len(row.labels) != n or len(row.mask) != n:
            raise DataError(
                f"{source}: chain {row.id!r} has {n} residues but {len(row.labels)} labels and {len(row.mask)} "
                "mask values; every residue needs exactly one label and one mask value"
            )
        bad = set(row.labels) - set(alphabet)
        if bad:
            raise DataError(f"{source}: chain {row.id!r} has labels {sorted(bad)} outside {alphabet!r}")
        if set(row.mask) - {"0", "1"}:
            raise DataError(f"{source}: chain {row.id!r} mask has values other than 0/1")


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
    df = pd.read_csv(path)
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$BIOFT_CACHE`` or ``$XDG_CACHE_HOME/bioft`` (``~/.cache/bioft``)."""
    root = os.environ.get("BIOFT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bioft"
    return Path(root)


def fetch_file(url: str, sha256: str, filename: str | None = None, cache_dir: str | Path | None = None,
               timeout: float = 60.0) -> Path:
    """Download ``url`` once into the user cache, verify its SHA-256, and return the cached path.

    A cached file is re-verified on every call. A download whose hash does not match is deleted and
    reported; nothing unverified is ever returned.

    Raises:
        DataError: the hash does not match (the file is deleted).
        ConnectionError: offline and not cached; the message names the file, the URL and what to do.
    """
    target = Path(cache_dir or default_cache_dir()) / (filename or url.rstrip("/").rsplit("/", 1)[-1])
    if target.exists():
        if sha256_file(target) == sha256:
            return target
        target.unlink()  # a corrupted or stale cache entry is never trusted
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as handle:
            for block in iter(lambda: response.read(1 << 20), b""):
                handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
    except (urllib.error.URLError, OSError) as err:
        tmp.unlink(missing_ok=True)
        raise ConnectionError(
            f"could not download {target.name} from {url} ({err}); you seem to be offline. Download it on a "
            f"machine with internet and copy it to {target} (SHA-256 {sha256}), or set BIOFT_CACHE to a folder "
            "that has it"
        ) from err
    got = sha256_file(tmp)
    if got != sha256:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"{url}: SHA-256 {got} does not match the expected {sha256}; the download was deleted. "
            "The file changed upstream or was corrupted in transit: retry, or check the URL"
        )
    os.replace(tmp, target)
    return target
