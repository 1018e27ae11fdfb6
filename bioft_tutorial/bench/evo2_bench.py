"""``python -m bioft_tutorial.bench evo2``: how fast Evo 2 scores BRCA1 variants (notebook 04).

The Evo 2 7B architecture (``evo2/configs/evo2-7b-8k.yml``) with **random weights** (speed depends only on
shapes; the scores mean nothing), 8,192-bp windows of the real BRCA1 SNVs. One run measures, on one GPU:

* ``evo2 score_sequences b1`` (the baseline): the ``evo2`` package's own ``score_sequences`` at batch 1;
* ``evo2 score_sequences b<B>``: the same at the bench's batch size;
* ``forward``: the model's raw forward pass at batch ``B`` (no tokenising, no log-softmax): the ceiling for
  a scorer that runs every window through the whole model;
* ``package (full windows)``: :func:`bioft_tutorial.variants.score_variants` end to end (table, genome,
  windows, cache on disk) with every window through the whole model;
* ``package (shared prefix)``: the same, with alternate windows reusing their reference's prefix
  (:mod:`bioft_tutorial.variants.neural`), the default.

Package cases score the SNVs of the first ``--positions`` BRCA1 positions and report windows per second
(``seq_per_s``; for the shared-prefix path an *effective* rate, since an alternate window costs about half a
pass) and the time for all 1,326 + 3,893 = 5,219 BRCA1 windows, **extrapolated** from the subset (flagged).
They also report how far the two package paths' ``delta_ll`` agree. Each case catches its own failure.

Issue targets (7B, one H100): package >= 1.1x the batch-1 baseline and >= 95% of the raw forward rate;
all 3,893 variants in <= 25 minutes. ``--smoke`` runs the tiny random transformer on the CPU in seconds.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bioft_tutorial.bench.results import stored_results as _stored_results
from bioft_tutorial.bench.results import write_results
from bioft_tutorial.data import asset_path
from bioft_tutorial.variants import Genome, TinyDNALM, read_findlay_xlsx, score_variants, variant_window
from bioft_tutorial.variants.evo2_backend import Evo2LM, build_evo2_random, evo2_config

log = logging.getLogger(__name__)
COMMAND = "evo2"
BRCA1_WINDOWS = 1326 + 3893  # distinct reference windows + alternate windows of the 3,893 SNVs
TARGET_MINUTES = 25.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bioft_tutorial.bench {COMMAND}", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="evo2-7b-8k", help="evo2 package config name or YAML path")
    p.add_argument("--window", type=int, default=8192, help="window length (bases)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--positions", type=int, default=24, help="BRCA1 positions scored by the package cases")
    p.add_argument("--baseline-windows", type=int, default=12, help="windows timed for each score_sequences case")
    p.add_argument("--forward-batches", type=int, default=3, help="timed batches of the raw forward case")
    p.add_argument("--cases", default="baseline,score-batch,forward,package-full,package-shared")
    p.add_argument("--out", default=None, help="results folder (default book/results/gpu; smoke: _build/bench-smoke)")
    p.add_argument("--tag", default=None, help="extra word in the results file name")
    p.add_argument("--smoke", action="store_true", help="tiny random transformer on the CPU, short windows")
    return p


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _run_case(name: str, fn: Callable[[], dict], device: torch.device) -> dict:
    """Run one case, catching its failure; record peak memory; print a one-line summary."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        record = {"case": name, **fn()}
        if device.type == "cuda":
            record["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    except Exception as err:  # one crashed case must not lose the others
        log.exception("case %s failed", name)
        record = {"case": name, "error": f"{type(err).__name__}: {err}"[:2000]}
    summary = record.get("error") or (f"{record['seq_per_s']:.3f} windows/s, batch {record['batch']}, "
                                       f"{record.get('peak_mem_gib', '-')} GiB")
    print(f"[{COMMAND}] {name}: {summary}", flush=True)
    return record


def _setup(args) -> tuple:
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{COMMAND}: no CUDA device; run with --smoke on a CPU")
    start = time.perf_counter()
    if args.smoke:
        lm = TinyDNALM(seed=0, max_length=args.window, batch_size=args.batch_size)
        model_label = "tiny random transformer (smoke)"
    else:
        lm = Evo2LM(model=build_evo2_random(evo2_config(args.config), stable_poles=True),
                    model_name=f"{args.config} (random weights)", batch_size=args.batch_size)
        model_label = lm.name
    build_s = time.perf_counter() - start
    genome = Genome(asset_path("brca1", "GRCh37_chr17_BRCA1_region.fa"))
    table = read_findlay_xlsx(asset_path("brca1", "41586_2018_461_MOESM3_ESM.xlsx"))
    positions = list(dict.fromkeys(table["pos"]))[:args.positions]
    subset = table[table["pos"].isin(positions)]
    refs = [variant_window(genome, r.chrom, r.pos, r.ref, r.alt, args.window).ref_seq
            for r in subset.drop_duplicates("pos").itertuples()]
    common = {"model": model_label, "window": args.window, "smoke": args.smoke, "build_seconds": round(build_s, 1),
              "parameters": sum(p.numel() for p in (lm.model.parameters()))}
    return device, lm, genome, subset, refs, common


def _evo2_score_case(lm, refs: list[str], batch: int, n: int, device) -> dict:
    """``evo2.scoring.score_sequences`` as ``Evo2.score_sequences`` calls it (smoke: our own plain loop)."""
    seqs = (refs * (1 + n // len(refs)))[:n]
    if device.type == "cuda":
        from evo2.scoring import score_sequences
        from vortex.model.tokenizer import CharLevelTokenizer

        tokenizer = CharLevelTokenizer(512)

        def score(chunk):
            with torch.no_grad():
                return score_sequences(chunk, lm.model, tokenizer, batch_size=batch)
        path = "evo2.scoring.score_sequences"
    else:  # no evo2 on a CPU: the plain neural path of the package stands in
        def score(chunk):
            return [lm.log_likelihoods(chunk[i:i + batch]) for i in range(0, len(chunk), batch)]
        path = "TinyDNALM.log_likelihoods (smoke stand-in for evo2 score_sequences)"
    score(seqs[:batch])  # warm-up
    seconds = _timed(lambda: score(seqs), device)
    return {"path": path, "batch": batch, "n_windows": n, "seconds": round(seconds, 3), "seq_per_s": n / seconds}


def _forward_case(lm, refs: list[str], batch: int, n_batches: int, device) -> dict:
    """The raw forward pass on token ids already on the device: the ceiling for full-window scoring."""
    ids, _ = lm.encode((refs * (1 + batch // len(refs)))[:batch])

    def run():
        with torch.inference_mode():
            for _ in range(n_batches):
                lm.logits(ids)
    with torch.inference_mode():
        lm.logits(ids)  # warm-up
    seconds = _timed(run, device)
    n = batch * n_batches
    return {"path": "model forward (token ids on device)", "batch": batch, "n_windows": n,
            "seconds": round(seconds, 3), "seq_per_s": n / seconds}


def _package_case(lm, genome, subset, args, device, shared: bool, scored: dict) -> dict:
    """score_variants end to end (validation, windows, cache on disk) on the BRCA1 subset."""
    warm = subset[subset["pos"] == subset["pos"].iloc[0]]
    score_variants(lm, genome, warm, window=args.window, batch_size=args.batch_size, shared_prefix=shared,
                   progress=False)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        out = score_variants(lm, genome, subset, window=args.window, batch_size=args.batch_size,
                             cache_dir=cache, shared_prefix=shared, progress=False)
        _sync(device)
        seconds = time.perf_counter() - start
    scored["shared" if shared else "full"] = out["delta_ll"].to_numpy()
    stats = out.attrs["scoring"]
    n, n_ref = stats["computed"], stats["ref_windows"]
    return {"path": "score_variants " + ("(shared prefix)" if shared else "(full windows)"), "batch": args.batch_size,
            "n_windows": n, "ref_windows": n_ref, "alt_windows": n - n_ref, "n_variants": len(subset),
            "seconds": round(seconds, 3), "seq_per_s": n / seconds,
            "brca1_minutes_extrapolated": round(BRCA1_WINDOWS / (n / seconds) / 60, 2), "extrapolated": True,
            "extrapolation": f"{BRCA1_WINDOWS} windows at this run's rate on {n} windows "
                             f"(alt/ref {(n - n_ref) / n_ref:.2f} here, {3893 / 1326:.2f} for all of BRCA1)"}


def _agreement(scored: dict) -> dict:
    if "full" not in scored or "shared" not in scored:
        return {}
    a, b = scored["full"], scored["shared"]
    finite = np.isfinite(a) & np.isfinite(b)
    out = {"delta_ll_finite_fraction": float(finite.mean())}
    if finite.sum() > 2:
        out["delta_ll_max_abs_diff_full_vs_shared"] = float(np.abs(a - b)[finite].max())
        out["delta_ll_mean_abs"] = float(np.abs(a[finite]).mean())
        out["delta_ll_pearson_full_vs_shared"] = float(np.corrcoef(a[finite], b[finite])[0, 1])
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the requested cases, write the results file and return the records."""
    args = _parser().parse_args(argv)
    if args.smoke:
        args.window, args.positions = min(args.window, 256), min(args.positions, 3)
        args.baseline_windows, args.forward_batches = min(args.baseline_windows, 4), min(args.forward_batches, 2)
    device, lm, genome, subset, refs, common = _setup(args)
    cases = args.cases.split(",")
    records, scored = [], {}
    if "baseline" in cases:
        records.append(_run_case("evo2 score_sequences b1 (baseline)",
                                 lambda: _evo2_score_case(lm, refs, 1, args.baseline_windows, device), device))
    if "score-batch" in cases and args.batch_size > 1:
        records.append(_run_case(f"evo2 score_sequences b{args.batch_size}", lambda: _evo2_score_case(
            lm, refs, args.batch_size, max(args.baseline_windows, args.batch_size), device), device))
    if "forward" in cases:
        records.append(_run_case("forward", lambda: _forward_case(lm, refs, args.batch_size, args.forward_batches,
                                                                  device), device))
    for shared in (False, True):
        if f"package-{'shared' if shared else 'full'}" in cases:
            records.append(_run_case(f"package ({'shared prefix' if shared else 'full windows'})",
                                     lambda: _package_case(lm, genome, subset, args, device, shared, scored), device))
    agreement = _agreement(scored)
    records = [common | r | (agreement if r["case"].startswith("package") else {}) for r in _compare(records)]
    out = args.out or ("_build/bench-smoke" if args.smoke else None)
    path = write_results(COMMAND, records, out, tag=args.tag or ("smoke" if args.smoke else None))
    print(f"[{COMMAND}] wrote {path}", flush=True)
    return records


def _compare(records: list[dict]) -> list[dict]:
    """Add this run's baseline and forward rates, and the ratios to them, to every record."""
    ok = [r for r in records if "error" not in r]
    base = next((r["seq_per_s"] for r in ok if r["case"].endswith("(baseline)")), None)
    forward = next((r["seq_per_s"] for r in ok if r["case"] == "forward"), None)
    out = []
    for r in records:
        r = dict(r, baseline_seq_per_s=base, forward_seq_per_s=forward)
        if "seq_per_s" in r and base:
            r["vs_baseline"] = r["seq_per_s"] / base
        if "seq_per_s" in r and forward:
            r["vs_forward"] = r["seq_per_s"] / forward
        if "brca1_minutes_extrapolated" in r:
            r["meets_25_min_target"] = r["brca1_minutes_extrapolated"] <= TARGET_MINUTES
        out.append(r)
    return out


def stored_results(results_dir: str | Path | None = None) -> list[dict]:
    """Measured GPU records of this command in ``book/results/gpu`` (see :func:`results.stored_results`)."""
    return _stored_results(COMMAND, results_dir)



if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(main(), indent=2, default=str))
