"""``python -m benchmarks zero-shot``: how fast chapter 1's zero-shot scoring is.

Scores all 19 x 286 single substitutions of the TEM-1 beta-lactamase wild type (ProteinGym BLAT_ECOLX) with
:func:`bioft_tutorial.zero_shot.score_substitutions`, end to end (parsing included), with ESM-2 650M of
random weights, both methods. The same run measures two baselines:

* the same two methods with fp32 weights (the default dtype when you do not choose one);
* naive masked scoring, one call (one forward pass) per *mutant* at batch 1, timed on the mutants of the
  first ``--naive-positions`` positions and extrapolated to all (``"extrapolated": true``).

Each time is the median of ``--repeats`` GPU-synchronised calls after ``--warmup`` untimed ones.
``--smoke``: the tiny model on the CPU, a 40-residue wild type, in seconds.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks.harness import ResultsFile, pick_device, run_case, smoke_threads, timed
from bioft_tutorial import data, models, zero_shot

COMMAND = "zero-shot"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {COMMAND}", description=__doc__.split("\n")[0])
    p.add_argument("--size", default="650M", choices=list(models.ESM2_FAMILY), help="ESM-2 shape (random weights)")
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES), help="weight dtype of the fast cases")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass (masked-marginal)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per case (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--naive-positions", type=int, default=4, help="positions timed for the naive baseline")
    p.add_argument("--out", help="results folder (default book/results/gpu; smoke: _build/benchmarks-smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, in seconds (for tests)")
    return p.parse_args(argv)


def _seconds(fn, device: torch.device, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    return [timed(fn, device) for _ in range(repeats)]


def _describe(wt_seq: str, n_mutants: int, rows: int, seconds: list[float]) -> dict:
    median = statistics.median(seconds)
    return {"wt_length": len(wt_seq), "n_mutants": n_mutants, "forward_rows": rows, "seconds_median": median,
            "seconds_all": seconds, "mutants_per_s": n_mutants / median,
            "tokens_per_s": rows * (len(wt_seq) + 2) / median}


def _scoring(model, tok, wt_seq: str, mutants: list[str], method: str, args, device) -> dict:
    """One method of ``score_substitutions`` over every mutant, timed."""
    def score():
        zero_shot.score_substitutions(model, tok, wt_seq, mutants, method, batch_size=args.batch_size, progress=False)

    rows = 1 if method == "wt-marginal" else len({m[1:-1] for m in mutants})  # masked: one row per position
    seconds = _seconds(score, device, args.repeats, args.warmup)
    return _describe(wt_seq, len(mutants), rows, seconds) | {"method": method, "batch_size": args.batch_size,
                                                             "extrapolated": False}


def _naive(model, tok, wt_seq: str, mutants: list[str], args, device) -> dict:
    """Masked scoring one mutant per call at batch 1, on a subset, extrapolated to every mutant."""
    subset = [m for m in mutants if int(m[1:-1]) <= args.naive_positions]

    def score():
        for m in subset:
            zero_shot.score_substitutions(model, tok, wt_seq, [m], "masked-marginal", batch_size=1, progress=False)

    (seconds,) = _seconds(score, device, repeats=1, warmup=1)
    total = seconds / len(subset) * len(mutants)
    return _describe(wt_seq, len(mutants), len(mutants), [total]) | {
        "method": "masked-marginal, one call per mutant", "batch_size": 1, "extrapolated": True,
        "timed_mutants": len(subset), "timed_seconds": seconds}


def _summary(r: dict) -> str:
    return (f"{r['seconds_median']:.4f} s median ({r['dtype']}, {r['n_mutants']} mutants, {r['forward_rows']} rows"
            f"{', extrapolated' if r['extrapolated'] else ''})")


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every case, write the results file and return the records."""
    args = parse_args(list(argv or []))
    if args.smoke:
        args.repeats, args.warmup, args.naive_positions = min(args.repeats, 2), min(args.warmup, 1), 2
    device = pick_device(args.smoke, COMMAND)
    wt_seq = data.blat_wild_type()[: 40 if args.smoke else None]
    mutants, tok = zero_shot.single_mutants(wt_seq), models.load_tokenizer()
    config = models.tiny_esm2_config() if args.smoke else models.esm2_config(args.size)
    results, records = ResultsFile(COMMAND, args.out, args.smoke), []
    fast = DTYPES["float32" if args.smoke else args.dtype]
    with smoke_threads(args.smoke):
        for dtype in dict.fromkeys([fast, torch.float32]):  # the fast dtype, then the fp32 baseline
            name = str(dtype).removeprefix("torch.")
            model = models.random_esm2(config, task="mlm", dtype=dtype, device=device).eval()
            common = {"model": f"ESM-2 {'tiny' if args.smoke else args.size} (random weights)", "dtype": name,
                      "parameters": sum(p.numel() for p in model.parameters()), "smoke": args.smoke}
            suffix = "" if dtype == fast else f" ({name} baseline)"
            cases = {f"{m}{suffix}": (lambda m=m: _scoring(model, tok, wt_seq, mutants, m, args, device))
                     for m in zero_shot.SCORING_METHODS}
            if dtype == fast:
                cases["naive masked (baseline)"] = lambda: _naive(model, tok, wt_seq, mutants, args, device)
            for case, fn in cases.items():
                records.append(run_case({"case": case, **common}, fn, device, _summary, COMMAND))
                results.write(records)
            del model
    print(f"[{COMMAND}] wrote {results.path}", flush=True)
    return records
