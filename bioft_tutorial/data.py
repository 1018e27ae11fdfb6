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

import numpy as np
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
    """Read a FASTA file (plain or ``.gz``) into ``{id: sequence}``; see :func:`parse_fasta`.

    Raises:
        FileNotFoundError: no such file.
        DataError: the file is not UTF-8 text or not valid gzip, or one of :func:`parse_fasta`'s errors.
    """
    try:
        with _open_text(path) as handle:
            return parse_fasta(handle, source=str(path))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as err:
        raise DataError(f"{path}: not a readable FASTA text file ({type(err).__name__}: {err}); check that it is "
                        "FASTA, and that a '.gz' name really holds a complete gzip file") from err


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


# --- Training examples, crops and length-bucketed batches (used by train.py) -------------------------------
# Everything below needs only numpy, torch and (lazily) datasets. Labels use -100 for "no label here"
# (special tokens, unresolved residues, residues owned by another crop, padding): the value PyTorch's
# cross-entropy ignores.

IGNORE_INDEX = -100
#: Residues per chain ESM-2 accepts (1,026 positions minus <cls> and <eos>).
MAX_RESIDUES = 1022


def crop_windows(length: int, max_residues: int = MAX_RESIDUES, overlap: int = 256) -> list[tuple[int, int, int, int]]:
    """Overlapping crops of a chain too long for the model, and the residues each crop *owns*.

    The rule used throughout the book: a chain of at most ``max_residues`` is one crop. A longer chain is
    cut into crops of ``max_residues`` whose starts are ``max_residues - overlap`` apart (the last crop ends
    at the chain's end); where two crops overlap, the left one owns residues up to the middle of the
    overlap and the right one the rest. Every residue is owned by exactly one crop and, away from the
    chain's ends, sees at least ``overlap // 2`` residues of context on each side. Training labels only
    owned residues, and inference stitches owned residues back together, so each residue counts once.

    Args:
        length: residues in the chain.
        max_residues: longest crop (1,022 for ESM-2).
        overlap: residues shared by neighbouring crops (``0 <= overlap < max_residues``).

    Returns:
        ``[(start, end, own_start, own_end), ...]``, 0-based half-open residue intervals.
    """
    if not 0 <= overlap < max_residues:
        raise ValueError(f"overlap={overlap} must be >= 0 and < max_residues={max_residues}")
    if length <= max_residues:
        return [(0, length, 0, length)]
    stride = max_residues - overlap
    starts = list(range(0, length - max_residues, stride)) + [length - max_residues]
    windows = []
    for i, start in enumerate(starts):
        end = start + max_residues
        own_start = 0 if i == 0 else (start + windows[-1][1]) // 2
        own_end = length if i == len(starts) - 1 else (starts[i + 1] + end) // 2
        windows.append((start, end, own_start, own_end))
    return windows


def encode_protein(sequence: str, vocab: dict[str, int], source: str = "sequence") -> list[int]:
    """Token ids of the residues (no special tokens). Lower case is accepted and upper-cased.

    Raises:
        DataError: a character the vocabulary does not have (``*``, digits, spaces), naming its position.
    """
    ids = []
    for pos, aa in enumerate(sequence.upper(), start=1):
        if aa not in vocab or len(aa) != 1 or not aa.isalpha():
            raise DataError(
                f"{source}: character {aa!r} at position {pos} (1-based) is not an amino acid the model knows; "
                "remove stop codons '*', gaps, digits and spaces, or map rare letters to 'X'"
            )
        ids.append(vocab[aa])
    if not ids:
        raise DataError(f"{source}: empty sequence; every chain needs at least one residue")
    return ids


def secondary_structure_examples(df: pd.DataFrame, tokenizer, max_residues: int = MAX_RESIDUES,
                                 overlap: int = 256, as_dataset: bool = True):
    """Token-classification examples for ESM-2 from :func:`load_flip_secondary_structure` rows.

    Each chain becomes one example, or several for chains longer than ``max_residues`` (see
    :func:`crop_windows`). ``labels`` hold class ids ``0/1/2`` for ``H/E/C`` at resolved residues the
    crop owns, and ``-100`` at ``<cls>``, ``<eos>``, unresolved residues (mask ``0``) and residues owned
    by a neighbouring crop.

    Args:
        df: rows with ``id``, ``sequence``, ``labels`` (``H/E/C``) and ``mask`` (``0/1``).
        tokenizer: an ESM-2 tokenizer (``get_vocab()``, ``cls_token_id``, ``eos_token_id``).

    Returns:
        ``datasets.Dataset`` (or, with ``as_dataset=False``, a list of dicts) with ``id``, ``crop_start``
        (0-based residue offset), ``input_ids`` (``length + 2`` ints) and ``labels`` (same length).
    """
    missing = {"id", "sequence", "labels", "mask"} - set(df.columns)
    if missing:
        raise DataError(f"secondary-structure table: missing column(s) {sorted(missing)}; found {list(df.columns)}. "
                        "Give every chain an id, its sequence, one H/E/C label and one 0/1 mask value per residue")
    validate_token_labels(df, source="secondary-structure table")  # a short label string would shift every label
    vocab, class_id = tokenizer.get_vocab(), {c: i for i, c in enumerate(SS_LABELS)}
    rows: dict[str, list] = {"id": [], "crop_start": [], "input_ids": [], "labels": []}
    for row in df.itertuples(index=False):
        ids = encode_protein(row.sequence, vocab, source=f"chain {row.id!r}")
        for start, end, own_start, own_end in crop_windows(len(ids), max_residues, overlap):
            labels = [class_id[lab] if m == "1" and own_start <= i < own_end else IGNORE_INDEX
                      for i, (lab, m) in enumerate(zip(row.labels, row.mask)) if start <= i < end]
            rows["id"].append(row.id)
            rows["crop_start"].append(start)
            rows["input_ids"].append([tokenizer.cls_token_id, *ids[start:end], tokenizer.eos_token_id])
            rows["labels"].append([IGNORE_INDEX, *labels, IGNORE_INDEX])
    if not as_dataset:
        return [dict(zip(rows, values)) for values in zip(*rows.values())]
    from datasets import Dataset

    return Dataset.from_dict(rows)


def sequence_regression_examples(df: pd.DataFrame, tokenizer, sequence_column: str = "mutated_sequence",
                                 target_column: str = "DMS_score", center: float = 0.0, scale: float = 1.0):
    """Sequence-level regression examples: ``input_ids`` and one float label ``(target - center) / scale``.

    Returns:
        ``datasets.Dataset`` with ``input_ids`` (``<cls> residues <eos>``) and ``labels`` (float).

    Raises:
        DataError: a missing column, or a sequence longer than :data:`MAX_RESIDUES` (crop it first:
        a fitness value belongs to the whole chain, so it cannot be split like per-residue labels).
    """
    from datasets import Dataset

    missing = {sequence_column, target_column} - set(df.columns)
    if missing:
        raise DataError(f"DMS table: missing column(s) {sorted(missing)}; found {list(df.columns)}")
    if scale <= 0:
        raise ValueError(f"scale={scale} must be > 0 (e.g. the standard deviation of the training targets)")
    targets = pd.to_numeric(df[target_column], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(targets).all():
        i = int((~np.isfinite(targets)).argmax())
        raise DataError(f"DMS table, row {i}, column {target_column!r}: {df[target_column].iloc[i]!r} is not a finite "
                        "number; drop or fix such rows first (a NaN target would make the loss NaN)")
    vocab, input_ids = tokenizer.get_vocab(), []
    for i, seq in enumerate(df[sequence_column]):
        if not isinstance(seq, str):
            raise DataError(f"DMS table, row {i}, column {sequence_column!r}: {seq!r} is not a sequence; drop "
                            "rows without one")
        if len(seq) > MAX_RESIDUES:
            raise DataError(f"DMS table, row {i}: sequence of {len(seq)} residues is longer than {MAX_RESIDUES}; "
                            "crop it around the mutated region first")
        ids = encode_protein(seq, vocab, source=f"DMS table, row {i}")
        input_ids.append([tokenizer.cls_token_id, *ids, tokenizer.eos_token_id])
    labels = ((targets - center) / scale).tolist()
    return Dataset.from_dict({"input_ids": input_ids, "labels": labels})


def dms_split(df: pd.DataFrame, by: str = "random", fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
              seed: int = 0) -> pd.Series:
    """Assign each mutant to ``"train"``/``"validation"``/``"test"``.

    ``by="random"`` splits mutants at random. ``by="position"`` splits the *positions*: every mutant at a
    held-out position is in the held-out set, so the model never saw any substitution at a test position
    (no leakage through the site; harder, and closer to predicting an unexplored site).

    Returns:
        Series of split names, aligned with ``df.index``.
    """
    if by not in ("random", "position") or len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"use by='random' or 'position' and three fractions summing to 1 (got {by!r}, {fractions})")
    rng = np.random.default_rng(seed)
    keys = df["position"].unique() if by == "position" else df.index.to_numpy()
    keys = rng.permutation(keys)
    n_train, n_val = int(round(fractions[0] * len(keys))), int(round(fractions[1] * len(keys)))
    name = {k: "train" for k in keys[:n_train]}
    name.update({k: "validation" for k in keys[n_train:n_train + n_val]})
    name.update({k: "test" for k in keys[n_train + n_val:]})
    source = df["position"] if by == "position" else pd.Series(df.index, index=df.index)
    return source.map(name).rename("split")


def token_budget_batches(lengths, token_budget: int, *, padded: bool = True, shuffle: bool = True,
                         seed: int = 0) -> list[list[int]]:
    """Length-bucketed batches under a token budget.

    Examples are sorted by length (ties broken at random), cut greedily into batches whose cost stays
    within ``token_budget``, and the batches are shuffled. The cost of a batch is ``n * longest`` when it
    is padded (padding counts, because the GPU computes it) or ``sum(lengths)`` when it is packed.

    Args:
        lengths: tokens per example (special tokens included).
        token_budget: the most tokens a batch may cost.
        padded: cost with padding (``True``) or packed without padding (``False``).
        shuffle: random tie-breaks and batch order (``False``: sorted, deterministic, for evaluation).
        seed: seed of that randomness; same seed, same batches.

    Returns:
        Lists of example indices, one per batch.

    Raises:
        ValueError: an example is longer than ``token_budget``; the message names it and the fix.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if token_budget < 1:
        raise ValueError(f"token_budget={token_budget} must be >= 1")
    if lengths.size and lengths.max() > token_budget:
        i = int(lengths.argmax())
        raise ValueError(f"example {i} has {lengths[i]} tokens, more than token_budget={token_budget}: a batch of one "
                         f"would not fit. Raise token_budget to at least {lengths[i]} or crop long chains "
                         "(data.crop_windows)")
    rng = np.random.default_rng(seed)
    tie = rng.random(lengths.size) if shuffle else np.arange(lengths.size)
    batches, current, longest, total = [], [], 0, 0
    for i in np.lexsort((tie, lengths)):
        n = int(lengths[i])
        cost = (len(current) + 1) * max(longest, n) if padded else total + n
        if current and cost > token_budget:
            batches.append(current)
            current, longest, total = [], 0, 0
        current.append(int(i))
        longest, total = max(longest, n), total + n
    if current:
        batches.append(current)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate_padded(examples: list[dict], pad_token_id: int = 1) -> dict[str, "torch.Tensor"]:
    """Pad a list of examples into one batch for ``model(**batch)``.

    Args:
        examples: dicts with ``input_ids`` (list of ints) and optionally ``labels`` (a list of ints
            per token, or one number per example).
        pad_token_id: the tokenizer's ``<pad>`` id (1 for ESM-2).

    Returns:
        ``input_ids`` (B, L) int64, ``attention_mask`` (B, L) int64 (1 = real token) and ``labels``:
        (B, L) int64 padded with -100 for per-token labels, or (B,) for per-example labels (float32
        for regression targets, int64 for class ids).
    """
    import torch

    longest = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, e in enumerate(examples):
        input_ids[row, : len(e["input_ids"])] = torch.as_tensor(e["input_ids"])
        attention_mask[row, : len(e["input_ids"])] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if "labels" in examples[0]:
        first = examples[0]["labels"]
        if isinstance(first, (list, tuple, np.ndarray)):
            labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
            for row, e in enumerate(examples):
                labels[row, : len(e["labels"])] = torch.as_tensor(e["labels"])
        else:
            dtype = torch.float32 if isinstance(first, (float, np.floating)) else torch.long
            labels = torch.tensor([e["labels"] for e in examples], dtype=dtype)
        batch["labels"] = labels
    return batch
