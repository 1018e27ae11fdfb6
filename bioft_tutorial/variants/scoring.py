"""Score single-nucleotide variants with any DNA language model: ``delta_ll = LL(alt window) - LL(ref window)``.

``LL`` is the model's **mean log-likelihood per predicted position, in nats**, of an 8,192-bp window centred
on the variant (see :mod:`.windows`). A negative ``delta_ll`` means the model finds the alternate sequence
less likely than the reference, which for a good model hints at a damaging variant.

Work is shared wherever the numbers are provably the same:

* each distinct reference window is scored once (the 3,893 BRCA1 SNVs sit at 1,326 positions, so 1,326
  reference windows), and so is each distinct alternate window;
* with a model that offers it (``log_likelihoods_shared_prefix``), an alternate window reuses its reference's
  state for the bases before the variant and computes only the rest;
* with ``cache_dir``, every window score is stored on disk as soon as its batch finishes, so a rerun after an
  interruption computes only what is missing (see :mod:`.cache`).

A CUDA out-of-memory error halves the batch and retries, down to one window, logging each step.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..oom import halving_batches
from .cache import WindowCache
from .checks import check_variants, problem_report, raise_for_problems
from .genome import Genome, as_genome
from .io import standardize_variants
from .windows import DEFAULT_WINDOW, reverse_complement, substitute, window_bounds

log = logging.getLogger(__name__)
SCORE_COLUMNS = ("ref_ll", "alt_ll", "delta_ll")
_ADVICE = "use a shorter window, a smaller model or a GPU with more memory"


def score_variants(lm, genome: Genome | str | Path | Mapping[str, str], variants: pd.DataFrame,
                   window: int = DEFAULT_WINDOW, batch_size: int | None = None, cache_dir: str | Path | None = None,
                   reverse_complement: bool = False, on_invalid: str = "raise", shared_prefix: bool = True,
                   progress: bool = True) -> pd.DataFrame:
    """Score every SNV of ``variants`` by the change in the model's mean log-likelihood of its window.

    Args:
        lm: a DNA language model (``name``, ``max_length``, ``log_likelihoods``; see :mod:`.interface`).
        genome: a :class:`~.genome.Genome`, a FASTA path or ``{contig: sequence}``.
        variants: columns chrom, pos (1-based), ref, alt (plus any others, kept), e.g. from
            :func:`~.io.read_vcf`, :func:`~.io.read_variants_csv` or :func:`~.io.read_findlay_xlsx`.
        window: window length in bases, variant at ``window // 2`` (clipped at contig ends).
        batch_size: windows per forward pass (default: ``lm.batch_size`` or 8). Halved on out-of-memory.
        cache_dir: folder for the resumable on-disk cache of window scores (``None``: no cache).
        reverse_complement: average each window's score with that of its reverse complement.
        on_invalid: ``"raise"`` (default) stops at any row that cannot be scored with one message listing
            them; ``"skip"`` scores the rest, gives skipped rows NaN and adds a ``problem`` column.
        shared_prefix: let a model that supports it reuse the reference's state for the bases before the
            variant (same numbers up to float rounding, about half the work for alternate windows).
        progress: show a tqdm progress bar.

    Returns:
        A copy of ``variants`` (same rows, order and index) plus ``ref_ll``, ``alt_ll`` (mean log-likelihood
        per predicted position, nats) and ``delta_ll = alt_ll - ref_ll``. ``.attrs["scoring"]`` counts the
        windows scored, read from the cache and found corrupted, and the seconds taken.

    Raises:
        VariantError: rows that cannot be scored (with ``on_invalid="raise"``), see :mod:`.checks`.
        ValueError: ``window`` longer than ``lm.max_length``, or a bad ``on_invalid``.
    """
    t0 = time.perf_counter()
    if on_invalid not in ("raise", "skip"):
        raise ValueError(f"on_invalid={on_invalid!r}; use 'raise' or 'skip'")
    if window > lm.max_length:
        raise ValueError(f"window={window:,} bases exceeds {lm.name}'s max_length={lm.max_length:,}; "
                         "pass a smaller window")
    genome = as_genome(genome)
    problems = check_variants(genome, variants)
    if on_invalid == "raise":
        raise_for_problems(genome, variants, problems)
    elif not problems.empty:
        log.warning(problem_report(genome, variants, problems))
    plan = _plan(genome, standardize_variants(variants), set(problems["position"]), window)
    cache = WindowCache(cache_dir, getattr(lm, "cache_key", lm.name)) if cache_dir is not None else None
    scores, stats = _score_plan(lm, plan, reverse_complement, cache, batch_size or getattr(lm, "batch_size", 8),
                                shared_prefix, progress)
    out = variants.copy()
    out["ref_ll"], out["alt_ll"] = _window_scores(plan, scores, reverse_complement)
    out["delta_ll"] = out["alt_ll"] - out["ref_ll"]
    if on_invalid == "skip":
        out["problem"] = ""
        out.iloc[problems["position"].to_numpy(dtype=int), out.columns.get_loc("problem")] = problems["problem"].values
    stats["seconds"] = round(time.perf_counter() - t0, 3)
    out.attrs["scoring"] = stats
    log.info("scored %d variants with %s: %s", len(out), lm.name, stats)
    return out


def _plan(genome: Genome, std: pd.DataFrame, skip: set, window: int) -> dict:
    """Distinct reference windows, and per variant row its (reference, variant index, alt) or None."""
    refs: dict[tuple, str] = {}
    rows: list[tuple | None] = []
    for i, (chrom, pos, alt) in enumerate(zip(std["chrom"], std["pos"], std["alt"])):
        if i in skip:
            rows.append(None)
            continue
        contig = genome.resolve(chrom)
        start, end = window_bounds(int(pos), window, contig.start, contig.end)
        span = (contig.name, start, end)
        if span not in refs:
            refs[span] = genome.fetch(contig.name, start, end)
        rows.append((span, int(pos) - 1 - start, alt))
    return {"refs": refs, "rows": rows}


def _groups(plan: dict, rc: bool) -> list[tuple[str, list[str], int]]:
    """``(ref sequence, [alt sequences], split)`` per (reference window, variant index), forward strand first."""
    alts: dict[tuple, list[str]] = {}
    for row in plan["rows"]:
        if row is not None:
            span, index, alt = row
            seq = substitute(plan["refs"][span], index, alt)
            bucket = alts.setdefault((span, index), [])
            if seq not in bucket:
                bucket.append(seq)
    groups = [(plan["refs"][span], seqs, index) for (span, index), seqs in alts.items()]
    if rc:
        groups += [(reverse_complement(ref), [reverse_complement(a) for a in seqs], len(ref) - 1 - index)
                   for ref, seqs, index in groups]
    return groups


def _score_plan(lm, plan: dict, rc: bool, cache: WindowCache | None, batch_size: int, shared_prefix: bool,
                progress: bool) -> tuple[dict[str, float], dict]:
    groups = _groups(plan, rc)
    wanted = list(dict.fromkeys(s for ref, alts, _ in groups for s in (ref, *alts)))
    scores: dict[str, float] = {}
    if cache is not None:
        for seq in wanted:
            value = cache.get(seq)
            if value is not None:
                scores[seq] = value
    stats = {"variants_scored": sum(r is not None for r in plan["rows"]), "ref_windows": len(plan["refs"]),
             "windows": len(wanted), "from_cache": len(scores), "computed": 0,
             "corrupted_cache_entries": cache.corrupted if cache else 0, "shared_prefix": False}
    use_shared = shared_prefix and getattr(lm, "supports_shared_prefix", False)
    pending = [g for g in groups if any(s not in scores for s in (g[0], *g[1]))] if use_shared else []
    plain = [s for s in wanted if s not in scores]
    if use_shared:  # groups whose variant is the first base have no prefix to share: score them plainly
        plain = list(dict.fromkeys(s for ref, alts, split in pending if not 1 <= split < len(ref)
                                   for s in (ref, *alts) if s not in scores))
        pending = [g for g in pending if 1 <= g[2] < len(g[0])]
        stats["shared_prefix"] = True
    total = len(plain) + sum(1 + len(alts) for _, alts, _ in pending)
    with tqdm(total=total, desc=f"scoring windows ({lm.name})", unit="window", disable=not progress) as bar:
        def keep(seqs: Sequence[str], values: np.ndarray) -> None:
            for seq, value in zip(seqs, np.asarray(values, dtype=float)):
                scores[seq] = float(value)
                if cache is not None:
                    cache.put(seq, float(value))
            stats["computed"] += len(seqs)
            bar.update(len(seqs))

        plain.sort(key=len)
        for chunk, values in halving_batches(lambda c: lm.log_likelihoods(c, reduce="mean"), plain, batch_size,
                                             "window", _ADVICE):
            keep(chunk, values)
        for _, bucket in _buckets(pending).items():
            for chunk, (ref_ll, alt_ll) in halving_batches(lambda c: _shared(lm, c), bucket, batch_size,
                                                           "reference window", _ADVICE):
                keep([g[0] for g in chunk], ref_ll)
                keep([a for g in chunk for a in g[1]], alt_ll)
    return scores, stats


def _buckets(groups: list) -> dict[tuple[int, int], list]:
    buckets: dict[tuple[int, int], list] = {}
    for group in groups:
        buckets.setdefault((len(group[0]), group[2]), []).append(group)
    return buckets


def _shared(lm, groups: list) -> tuple[np.ndarray, np.ndarray]:
    refs = [g[0] for g in groups]
    alts = [a for g in groups for a in g[1]]
    parent = [i for i, g in enumerate(groups) for _ in g[1]]
    return lm.log_likelihoods_shared_prefix(refs, alts, parent, groups[0][2], reduce="mean")


def _window_scores(plan: dict, scores: dict[str, float], rc: bool) -> tuple[np.ndarray, np.ndarray]:
    ref_ll = np.full(len(plan["rows"]), np.nan)
    alt_ll = np.full(len(plan["rows"]), np.nan)
    for i, row in enumerate(plan["rows"]):
        if row is None:
            continue
        span, index, alt = row
        ref, alt_seq = plan["refs"][span], substitute(plan["refs"][span], index, alt)
        ref_ll[i], alt_ll[i] = scores[ref], scores[alt_seq]
        if rc:
            ref_ll[i] = 0.5 * (ref_ll[i] + scores[reverse_complement(ref)])
            alt_ll[i] = 0.5 * (alt_ll[i] + scores[reverse_complement(alt_seq)])
    return ref_ll, alt_ll
