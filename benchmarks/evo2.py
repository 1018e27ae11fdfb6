"""``python -m benchmarks evo2``: how fast chapter 4 scores BRCA1 variants with Evo 2.

The Evo 2 7B architecture (``evo2/configs/evo2-7b-8k.yml``) with **random weights** (speed depends only on
shapes; the scores mean nothing), 8,192-bp windows around the real BRCA1 SNVs (Findlay et al. 2018). One run
measures, on one GPU:

* ``evo2 score_sequences b1 (baseline)``: the ``evo2`` package's own ``score_sequences`` at batch 1, the way
  ``Evo2.score_sequences`` calls it;
* ``evo2 score_sequences b<B>``: the same at this benchmark's batch size;
* ``forward``: the model's forward pass at batch ``B`` on token ids already on the GPU (no tokenising, no
  log-softmax): the ceiling for a scorer that runs every window through the whole model;
* ``score_variants (full windows)``: :func:`bioft_tutorial.variants.score_variants` end to end (table,
  genome, windows, on-disk cache), every window through the whole model;
* ``score_variants (shared prefix)``: the same with alternate windows reusing their reference's prefix, the
  default.

The ``score_variants`` cases score the SNVs of the first ``--positions`` BRCA1 positions and report windows
per second (``seq_per_s``; with shared prefixes an *effective* rate) and the time for all 1,326 + 3,893 =
5,219 BRCA1 windows **extrapolated** from the subset (flagged). ``--smoke``: a tiny random transformer on the
CPU in seconds (the ``evo2`` package needs CUDA, so its cases use the package's own scorer as a stand-in).
``--profile``: ``score_variants`` (shared prefix) on the first ``--positions`` positions under
``torch.profiler`` instead; writes its kernel table and where the GPU waits (:mod:`benchmarks.timeline`):
the most that replaying the work as CUDA graphs could remove (a diagnostic, not a result).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import timeline
from benchmarks.harness import ResultsFile, pick_device, run_case, smoke_threads, sync, timed
from bioft_tutorial.data import asset_path
from bioft_tutorial.variants import Genome, TinyDNALM, read_findlay_xlsx, score_variants, variant_window
from bioft_tutorial.variants.evo2_backend import Evo2LM, build_evo2_random, evo2_config

COMMAND = "evo2"
BRCA1_WINDOWS = 1326 + 3893  # distinct reference windows + alternate windows of the 3,893 SNVs
CASES = ("baseline", "score-batch", "forward", "full-windows", "shared-prefix")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {COMMAND}", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="evo2-7b-8k", help="evo2 package config name or YAML path")
    p.add_argument("--window", type=int, default=8192, help="window length (bases)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    p.add_argument("--positions", type=int, default=24, help="BRCA1 positions scored by score_variants")
    p.add_argument("--baseline-windows", type=int, default=12, help="windows timed for each score_sequences case")
    p.add_argument("--forward-batches", type=int, default=3, help="timed batches of the forward case")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--out", help="results folder (default book/results/gpu; smoke: _build/benchmarks-smoke)")
    p.add_argument("--tag", help="extra word in the results file name")
    p.add_argument("--smoke", action="store_true", help="tiny random transformer on the CPU, short windows")
    p.add_argument("--profile", action="store_true", help="profile score_variants (shared prefix); no results")
    return p.parse_args(argv)


def _setup(args) -> tuple:
    """The model, the genome, the BRCA1 subset and its distinct reference windows."""
    start = time.perf_counter()
    if args.smoke:
        lm = TinyDNALM(seed=0, max_length=args.window, batch_size=args.batch_size)
        label = "tiny random transformer (smoke)"
    else:
        lm = Evo2LM(model=build_evo2_random(evo2_config(args.config), stable_poles=True),
                    model_name=f"{args.config} (random weights)", batch_size=args.batch_size)
        label = lm.name
    genome = Genome(asset_path("brca1", "GRCh37_chr17_BRCA1_region.fa"))
    table = read_findlay_xlsx(asset_path("brca1", "41586_2018_461_MOESM3_ESM.xlsx"))
    subset = table[table["pos"].isin(list(dict.fromkeys(table["pos"]))[:args.positions])]
    refs = [variant_window(genome, r.chrom, r.pos, r.ref, r.alt, args.window).ref_seq
            for r in subset.drop_duplicates("pos").itertuples()]
    common = {"model": label, "window": args.window, "smoke": args.smoke,
              "build_s": round(time.perf_counter() - start, 1), "parameters": sum(p.numel() for p in lm.model.parameters())}
    return lm, genome, subset, refs, common


def _score_sequences(lm, refs: list[str], batch: int, n: int, device) -> dict:
    """``evo2.scoring.score_sequences`` as ``Evo2.score_sequences`` calls it (smoke: the package's scorer)."""
    seqs = (refs * (1 + n // len(refs)))[:n]
    if device.type == "cuda":
        from evo2.scoring import score_sequences
        from vortex.model.tokenizer import CharLevelTokenizer

        tokenizer, path = CharLevelTokenizer(512), "evo2.scoring.score_sequences"

        def score(chunk):
            with torch.no_grad():
                return score_sequences(chunk, lm.model, tokenizer, batch_size=batch)
    else:
        path = "TinyDNALM.log_likelihoods (smoke stand-in for evo2's score_sequences)"

        def score(chunk):
            return [lm.log_likelihoods(chunk[i:i + batch]) for i in range(0, len(chunk), batch)]
    score(seqs[:batch])  # warm-up
    seconds = timed(lambda: score(seqs), device)
    return {"path": path, "batch": batch, "n_windows": n, "seconds": round(seconds, 3), "seq_per_s": n / seconds}


def _forward(lm, refs: list[str], batch: int, n_batches: int, device) -> dict:
    """The model's forward pass on token ids already on the device: the ceiling of full-window scoring."""
    ids, _ = lm.encode((refs * (1 + batch // len(refs)))[:batch])

    def run():
        with torch.inference_mode():
            for _ in range(n_batches):
                lm.logits(ids)
    with torch.inference_mode():
        lm.logits(ids)  # warm-up
    seconds = timed(run, device)
    return {"path": "model forward (token ids on the device)", "batch": batch, "n_windows": batch * n_batches,
            "seconds": round(seconds, 3), "seq_per_s": batch * n_batches / seconds}


def _score_variants(lm, genome, subset, args, device, shared: bool, scored: dict) -> dict:
    """``score_variants`` end to end (validation, windows, cache on disk) on the BRCA1 subset."""
    kwargs = dict(window=args.window, batch_size=args.batch_size, shared_prefix=shared, progress=False)
    score_variants(lm, genome, subset[subset["pos"] == subset["pos"].iloc[0]], **kwargs)  # warm-up
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        out = score_variants(lm, genome, subset, cache_dir=cache, **kwargs)
        sync(device)
        seconds = time.perf_counter() - start
    scored["shared" if shared else "full"] = out["delta_ll"].to_numpy()
    n, n_ref = out.attrs["scoring"]["computed"], out.attrs["scoring"]["ref_windows"]
    return {"path": f"score_variants (shared_prefix={shared})", "batch": args.batch_size, "n_windows": n,
            "ref_windows": n_ref, "alt_windows": n - n_ref, "n_variants": len(subset), "seconds": round(seconds, 3),
            "seq_per_s": n / seconds, "brca1_minutes_extrapolated": round(BRCA1_WINDOWS / (n / seconds) / 60, 2),
            "extrapolated": True, "extrapolation": f"{BRCA1_WINDOWS} windows at this run's rate on {n} windows "
                                                   f"(alt/ref {(n - n_ref) / n_ref:.2f} here, {3893 / 1326:.2f} for all of BRCA1)"}


def _agreement(scored: dict) -> dict:
    """How far the two ``score_variants`` paths' ``delta_ll`` agree (they compute the same numbers)."""
    if not {"full", "shared"} <= set(scored):
        return {}
    a, b = scored["full"], scored["shared"]
    finite = np.isfinite(a) & np.isfinite(b)
    out = {"delta_ll_finite_fraction": float(finite.mean())}
    if finite.sum() > 2:
        out["delta_ll_max_abs_diff_full_vs_shared"] = float(np.abs(a - b)[finite].max())
    return out


def _compare(records: list[dict]) -> list[dict]:
    """Add this run's baseline and forward rates, and the ratios to them, to every record."""
    ok = {r["case"]: r["seq_per_s"] for r in records if "seq_per_s" in r}
    base, forward = ok.get("evo2 score_sequences b1 (baseline)"), ok.get("forward")
    out = []
    for r in records:
        r = dict(r, baseline_seq_per_s=base, forward_seq_per_s=forward)
        if "seq_per_s" in r:
            r |= {"vs_baseline": r["seq_per_s"] / base if base else None,
                  "vs_forward": r["seq_per_s"] / forward if forward else None}
        out.append(r)
    return out


def profile_scoring(lm, genome, subset, args, device) -> Path:
    """``score_variants`` (shared prefix, after one warm-up position) under ``torch.profiler``: tables and idle."""
    from torch.profiler import ProfilerActivity, profile

    kwargs = dict(window=args.window, batch_size=args.batch_size, shared_prefix=True, progress=False)
    score_variants(lm, genome, subset[subset["pos"] == subset["pos"].iloc[0]], **kwargs)  # warm-up
    rest = subset[subset["pos"] != subset["pos"].iloc[0]]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        score_variants(lm, genome, rest, **kwargs)
        sync(device)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    tables = [prof.key_averages().table(sort_by=sort, row_limit=30)]
    with tempfile.TemporaryDirectory() as tmp:  # the trace itself is large: only its idle summary is kept
        prof.export_chrome_trace(f"{tmp}/trace.json")
        tables.insert(0, timeline.format_summary(timeline.idle_summary(f"{tmp}/trace.json")))
    results = ResultsFile(f"{COMMAND}-profile", args.out, args.smoke, args.tag)
    path = results.path.with_suffix(".txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# score_variants (shared prefix), {len(rest)} variants, window {args.window}, batch "
                    f"{args.batch_size}\n# {results.env}\n" + "\n\n".join(tables))
    return path


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the requested cases, write the results file after each and return the records."""
    args = parse_args(list(argv or []))
    if args.smoke:
        args.window, args.positions = min(args.window, 256), min(args.positions, 3)
        args.baseline_windows, args.forward_batches = min(args.baseline_windows, 4), min(args.forward_batches, 2)
    device = pick_device(args.smoke, COMMAND)
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    if set(chosen) - set(CASES):
        raise SystemExit(f"{COMMAND}: unknown case(s) {sorted(set(chosen) - set(CASES))}; use {', '.join(CASES)}")
    results, records, scored = ResultsFile(COMMAND, args.out, args.smoke, args.tag), [], {}
    with smoke_threads(args.smoke):
        lm, genome, subset, refs, common = _setup(args)
        if args.profile:
            print(f"[{COMMAND}] wrote {profile_scoring(lm, genome, subset, args, device)}", flush=True)
            return []
        cases = {"baseline": ("evo2 score_sequences b1 (baseline)",
                              lambda: _score_sequences(lm, refs, 1, args.baseline_windows, device)),
                 "score-batch": (f"evo2 score_sequences b{args.batch_size}", lambda: _score_sequences(
                     lm, refs, args.batch_size, max(args.baseline_windows, args.batch_size), device)),
                 "forward": ("forward", lambda: _forward(lm, refs, args.batch_size, args.forward_batches, device)),
                 "full-windows": ("score_variants (full windows)",
                                  lambda: _score_variants(lm, genome, subset, args, device, False, scored)),
                 "shared-prefix": ("score_variants (shared prefix)",
                                   lambda: _score_variants(lm, genome, subset, args, device, True, scored))}
        for key in chosen:
            name, fn = cases[key]
            records.append(run_case({"case": name, **common}, fn, device,
                                    lambda r: f"{r['seq_per_s']:.3f} windows/s, batch {r['batch']}", COMMAND))
            agreement = _agreement(scored)
            records = [r | (agreement if r["case"].startswith("score_variants") else {}) for r in _compare(records)]
            results.write(records)
    print(f"[{COMMAND}] wrote {results.path}", flush=True)
    return records
