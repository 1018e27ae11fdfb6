"""``python -m bioft_tutorial.bench zero-shot``: how fast zero-shot scoring is (notebook 01).

Scores all 19 x 286 single substitutions of the TEM-1 beta-lactamase wild type (ProteinGym BLAT_ECOLX)
with ESM-2 650M of random weights (speed depends only on shapes), with both methods of
:func:`bioft_tutorial.zero_shot.score_substitutions`, end to end (parsing included). The same run measures
two baselines:

* the same two methods with fp32 weights (the default dtype when you do not choose one);
* naive masked scoring, one forward pass per *mutant* (a loop over mutants, batch 1), timed on the first
  ``--naive-positions`` positions and extrapolated to all mutants (flagged ``"extrapolated": true``).

The fast cases run in ``--dtype`` (bfloat16 by default: the dtype ESM-2 runs in on Ampere and later
GPUs; fp16 works as well). Targets from the issue, on one H100: wt-marginal < 0.5 s, masked-marginal < 10 s.
Each time is the median of ``--repeats`` CUDA-synchronised runs after ``--warmup`` untimed runs.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from bioft_tutorial import data, models, zero_shot
from bioft_tutorial.bench.results import stored_results as _stored_results
from bioft_tutorial.bench.results import write_results

log = logging.getLogger(__name__)
COMMAND = "zero-shot"
TARGET_S = {"wt-marginal": 0.5, "masked-marginal": 10.0}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bioft_tutorial.bench {COMMAND}", description=__doc__.split("\n")[0])
    p.add_argument("--size", default="650M", choices=list(models.ESM2_FAMILY), help="ESM-2 shape (random weights)")
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES), help="dtype of the fast cases")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass (masked-marginal)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    p.add_argument("--naive-positions", type=int, default=4, help="positions timed for the naive baseline")
    p.add_argument("--out", default=None, help="results folder (default book/results/gpu; smoke: _build/bench-smoke)")
    p.add_argument("--tag", default=None, help="extra word in the results file name")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, a 40-residue wild type, in seconds")
    return p


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> list[float]:
    """Seconds of each of ``repeats`` synchronised calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _run_case(name: str, fn: Callable[[], dict], device: torch.device) -> dict:
    """Run one case, catching its failure, and print a one-line summary."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        record = {"case": name, **fn()}
        if device.type == "cuda":
            record["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    except Exception as err:  # one crashed case must not lose the others
        log.exception("case %s failed", name)
        record = {"case": name, "error": f"{type(err).__name__}: {err}"}
    summary = record.get("error") or (f"{record['seconds_median']:.4f} s median ({record['dtype']}, "
                                       f"{record['n_mutants']} mutants, {record['forward_rows']} rows)")
    print(f"[{COMMAND}] {name}: {summary}", flush=True)
    return record


def _scoring_case(model, tok, wt_seq: str, mutants: list[str], method: str, args, device) -> dict:
    def run():
        return zero_shot.score_substitutions(model, tok, wt_seq, mutants, method, batch_size=args.batch_size,
                                             progress=False)

    seconds = _timed(run, device, args.repeats, args.warmup)
    rows = 1 if method == "wt-marginal" else len({zero_shot.parse_mutant(m, wt_seq)[0].position for m in mutants})
    median = statistics.median(seconds)
    record = _describe(model, wt_seq, mutants, rows, seconds, args)
    record |= {"method": method, "batch_size": args.batch_size, "extrapolated": False}
    if method in TARGET_S and not args.smoke:
        record |= {"target_s": TARGET_S[method], "meets_target": median < TARGET_S[method]}
    return record


def _naive_case(model, tok, wt_seq: str, mutants: list[str], args, device) -> dict:
    """Masked scoring with one forward pass per mutant (what a plain loop does), on a subset, extrapolated."""
    subset = [m for m in mutants if int(m[1:-1]) <= args.naive_positions]

    def run():
        for m in subset:
            zero_shot.score_substitutions(model, tok, wt_seq, [m], "masked-marginal", batch_size=1, progress=False)

    seconds = _timed(run, device, repeats=1, warmup=1)
    per_mutant = seconds[0] / len(subset)
    record = _describe(model, wt_seq, mutants, len(mutants), [per_mutant * len(mutants)], args)
    return record | {"method": "masked, one pass per mutant", "batch_size": 1, "extrapolated": True,
                     "timed_mutants": len(subset), "timed_seconds": seconds[0]}


def _describe(model, wt_seq: str, mutants: list[str], rows: int, seconds: list[float], args) -> dict:
    median = statistics.median(seconds)
    return {
        "model": f"ESM-2 {'tiny' if args.smoke else args.size} (random weights)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": model.config._attn_implementation,
        "wt_length": len(wt_seq), "n_mutants": len(mutants), "forward_rows": rows,
        "tokens": rows * (len(wt_seq) + 2), "seconds_median": median, "seconds_all": seconds,
        "mutants_per_s": len(mutants) / median, "tokens_per_s": rows * (len(wt_seq) + 2) / median,
        "repeats": len(seconds), "smoke": args.smoke,
    }


def _model(args, dtype: torch.dtype, device: torch.device):
    config = models.tiny_esm2_config() if args.smoke else models.esm2_config(args.size)
    return models.random_esm2(config, task="mlm", dtype=dtype, device=device).eval()


def _cases_in_dtype(args, dtype: torch.dtype, fast: bool, tok, wt_seq: str, mutants: list[str],
                    device: torch.device) -> list[dict]:
    """Both methods (and, for the fast dtype, the naive baseline) with one model of ``dtype``."""
    suffix = "" if fast else f" ({str(dtype).removeprefix('torch.')} baseline)"
    try:
        model = _model(args, dtype, device)
    except Exception as err:  # e.g. out of memory: record it and go on with the next dtype
        log.exception("building the %s model failed", dtype)
        return [{"case": f"{method}{suffix}", "error": f"{type(err).__name__}: {err}"} for method in zero_shot.METHODS]
    records = [_run_case(f"{method}{suffix}", lambda: _scoring_case(model, tok, wt_seq, mutants, method, args, device),
                         device) for method in zero_shot.METHODS]
    if fast:
        records.append(_run_case("naive masked (baseline)",
                                 lambda: _naive_case(model, tok, wt_seq, mutants, args, device), device))
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def _print_speedups(records: list[dict]) -> None:
    """One line per baseline: how many times faster the fast case is."""
    seconds = {r["case"]: r["seconds_median"] for r in records if "seconds_median" in r}
    pairs = [("masked-marginal", "naive masked (baseline)")]
    pairs += [(m, f"{m} (float32 baseline)") for m in zero_shot.METHODS]
    for fast, slow in pairs:
        if fast in seconds and slow in seconds:
            print(f"[{COMMAND}] {fast} is {seconds[slow] / seconds[fast]:.1f}x faster than {slow}", flush=True)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every case, write the results file and return the records."""
    args = _parser().parse_args(argv)
    if args.smoke:
        args.repeats, args.warmup, args.naive_positions = min(args.repeats, 2), min(args.warmup, 1), 2
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{COMMAND}: no CUDA device; run with --smoke on a CPU")
    wt_seq = data.blat_wild_type()[: 40 if args.smoke else None]
    mutants, tok = zero_shot.single_mutants(wt_seq), models.load_tokenizer()
    fast = DTYPES["float32" if args.smoke else args.dtype]
    records = []
    for dtype in dict.fromkeys([fast, torch.float32]):  # the fast dtype, then the fp32 baseline
        records += _cases_in_dtype(args, dtype, dtype == fast, tok, wt_seq, mutants, device)
    _print_speedups(records)
    extra = {"tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "argv": list(argv or [])}
    records = [r | extra for r in records]
    out = args.out or ("_build/bench-smoke" if args.smoke else None)
    path = write_results(COMMAND, records, out, tag=args.tag)
    print(f"[{COMMAND}] wrote {path}", flush=True)
    return records


def stored_results(results_dir: str | Path | None = None) -> list[dict]:
    """Measured GPU records of this command in ``book/results/gpu`` (see :func:`results.stored_results`)."""
    return _stored_results(COMMAND, results_dir)



if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(main(), indent=2, default=str))
