"""Files: FASTA, tables (CSV, TSV, Parquet, xlsx), shipped assets, atomic writes, a SHA-256-verified download cache.

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


class DataError(ValueError):
    """Bad input data. The message names the file, the line or row, and what to do."""


def asset_path(*parts: str) -> Path:
    """Path of a shipped data file, e.g. ``asset_path("brca1", "GRCh37_chr17_BRCA1_region.fa")``."""
    path = Path(str(resources.files("bioft_tutorial") / "assets" / Path(*parts)))
    if not path.exists():
        raise FileNotFoundError(f"no shipped asset {path}; reinstall the package (pip install -e .)")
    return path


def open_text(path: str | Path) -> IO[str]:
    """Open a UTF-8 text file, plain or gzip/bgzip-compressed (``.gz``, ``.bgz``), for reading.

    Raises:
        FileNotFoundError: no such file, naming the path and the folder it is relative to.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file; check the path (relative to {Path.cwd()})")
    if path.suffix in (".gz", ".bgz"):
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
    """Read a FASTA file (plain or ``.gz``) into ``{id: sequence}``; see :func:`parse_fasta`.

    Raises:
        FileNotFoundError: no such file.
        DataError: the file is not UTF-8 text or not valid gzip, or one of :func:`parse_fasta`'s errors.
    """
    return parse_text_file(path, parse_fasta, "FASTA")


def parse_text_file(path: str | Path, parse, kind: str, error: type[ValueError] = DataError):
    """``parse(lines, source=path)`` over a text file, plain or gzip/bgzip-compressed.

    Args:
        path: the file; parse: a parser of lines such as :func:`parse_fasta`; kind: the format, for messages
            (``"FASTA"``); error: the exception for a file that is not readable text.

    Raises:
        FileNotFoundError: no such file.
        ValueError: (``error``) the file is not UTF-8 text or not complete gzip, naming the file.
    """
    try:
        with open_text(path) as handle:
            return parse(handle, source=str(path))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise error(f"{path}: not a readable {kind} text file ({type(err).__name__}: {err}); check that it is a "
                    f"{kind} file, and that a '.gz' name really holds a complete gzip file") from err


def read_table(path: str | Path, **kwargs) -> pd.DataFrame:
    """A table from ``.csv``, ``.tsv``/``.txt`` (tab-separated), ``.parquet`` or ``.xlsx`` (``.gz`` for text).

    ``kwargs`` go to the pandas reader. File errors become :class:`DataError` naming the file, or
    ``FileNotFoundError``.
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such file; check the path (relative to {Path.cwd()})")
    name = Path(path).name.lower().removesuffix(".gz")
    try:
        if name.endswith((".xlsx", ".xls")):
            return pd.read_excel(path, **kwargs)
        if name.endswith(".parquet"):
            return pd.read_parquet(path, **kwargs)
        return pd.read_csv(path, sep="\t" if name.endswith((".tsv", ".txt")) else ",", **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; expected a header line such as 'mutant,DMS_score'") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a well-formed CSV ({str(err).strip()}); check the separators and quotes "
                        "of the line it names (a stray '\"' or an extra comma)") from err


def read_fasta_headers(path: str | Path) -> dict[str, str]:
    """``{id: full header line without '>'}`` for a FASTA file, in file order."""
    with open_text(path) as handle:
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
