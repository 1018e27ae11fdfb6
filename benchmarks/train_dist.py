"""``python -m benchmarks train-dist --nproc N``: ``train.train`` on N GPUs of one host against one GPU, one job.

Each case (:data:`DIST_CASES`: ESM-2 650M with DDP, 3B and 15B with FSDP2) trains LoRA r=8 with the book's
loop on random proteins (:mod:`bioft_tutorial.data.synthetic`), twice, from the same initial weights on the
same global batches:

1. on one GPU, in this process, with ``grad_accum_steps=N`` (one optimizer step sees the N batches that
   N processes see together);
2. under ``torchrun --nproc_per_node=N`` with ``TrainConfig(parallel="ddp" | "fsdp2")``, one batch per process.

The loss curves must agree (the loss is a token sum over the global batch: ``loss_curve_max_abs_diff``);
``scaling_efficiency`` is the per-GPU throughput of (2) over that of (1). LoRA dropout is 0 so that both
runs draw no random numbers. ``--smoke``: the tiny model in fp32 on CPU processes (gloo), where the curves
agree to rounding (the tests check it).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from benchmarks.harness import ResultsFile, free_memory, memory_stats, pick_device, run_case, smoke_threads, steady_steps
from bioft_tutorial import distributed, lora, models, train
from bioft_tutorial.data import synthetic

COMMAND = "train-dist"
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DistCase:
    """A model, a way to spread it over GPUs (``TrainConfig.parallel``) and the knobs of both runs."""

    name: str
    model: str
    parallel: str  # "ddp" or "fsdp2"
    compile: str | None = None
    checkpointing: bool = False
    token_budget: int = 16384
    steps: int = 8
    warmup: int = 3
    est_s: float = 90.0


DIST_CASES = [
    DistCase("650M-ddp", "650M", "ddp", compile="inductor"),
    DistCase("3B-fsdp2", "3B", "fsdp2", checkpointing=True, token_budget=8192),
    DistCase("15B-fsdp2", "15B", "fsdp2", checkpointing=True, token_budget=8192, steps=3, warmup=1, est_s=180),
]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {COMMAND}", description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, help="processes (GPUs) of the data-parallel run (default: every GPU; 2 in smoke)")
    p.add_argument("--cases", default="*", help="comma-separated globs over " + ", ".join(c.name for c in DIST_CASES))
    p.add_argument("--budget-s", type=float, default=1800.0, help="time limit of the torchrun job, seconds")
    p.add_argument("--out", help="results folder (default book/results/gpu; smoke: _build/benchmarks-smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny model, fp32, CPU processes with gloo (for tests)")
    p.add_argument("--worker", metavar="RECORDS", help=argparse.SUPPRESS)  # set by the launcher under torchrun
    return p.parse_args(argv)


def _cases(args: argparse.Namespace) -> list[DistCase]:
    globs = [g.strip() for g in args.cases.split(",")]
    cases = [c for c in DIST_CASES if any(fnmatch.fnmatch(c.name, g) for g in globs)]
    if args.smoke:
        cases = [replace(c, compile=None, checkpointing=False, token_budget=512, steps=2, warmup=1) for c in cases[:2]]
    if not cases:
        raise SystemExit(f"{COMMAND}: no case matches --cases {args.cases!r}")
    return cases


def _run(case: DistCase, args: argparse.Namespace, device: torch.device, nproc: int, grad_accum: int,
         parallel: str) -> dict:
    """``train.train`` of one case (a fresh model, same seed, the same chains for any ``nproc``); its steady
    throughput and loss curve."""
    config = models.tiny_esm2_config() if args.smoke else models.esm2_config(case.model)
    model = lora.prepare_model(models.random_esm2(config, task="token", num_labels=3, seed=args.seed), "lora",
                               lora.esm2_lora_config(r=8, dropout=0.0))
    median, cap = (40, 200) if args.smoke else (300, 1022)
    n_chains = (case.warmup + case.steps + 2) * nproc * case.token_budget // median
    chains = synthetic.random_chains(synthetic.protein_lengths(n_chains, args.seed, median=median, cap=cap),
                                     models.load_tokenizer(), seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        history = train.train(model, chains, None, train.TrainConfig(
            output_dir=tmp, max_steps=case.warmup + case.steps, warmup_steps=1, token_budget=case.token_budget,
            min_token_budget=min(1024, case.token_budget), grad_accum_steps=grad_accum, parallel=parallel,
            precision="fp32" if args.smoke else "bf16", batching="packed", compile=case.compile,
            checkpointing=case.checkpointing, eval_every=None, save_every=None, progress=False,
            device=device.type, seed=args.seed)).history
    return {**steady_steps(history, case.warmup), "loss_curve": [round(x, 6) for x in history["loss"]]}


def worker(args: argparse.Namespace) -> list[dict]:
    """Under torchrun: every case on every process; rank 0 appends one JSON line per case to ``--worker``."""
    info = distributed.init_distributed("cpu" if args.smoke else None)
    records = []
    for case in _cases(args):
        free_memory(info.device)
        try:
            run = _run(case, args, info.device, info.world_size, 1, case.parallel)
            peak = torch.tensor(memory_stats(info.device)["peak_mem_gib"] or 0.0, device=info.device)
            torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
            record = {"case": case.name, **run, "peak_mem_gib": round(float(peak), 2) if peak else None}
        except Exception as err:  # noqa: BLE001 - recorded; the launcher reports it
            record = {"case": case.name, "error": f"rank {info.rank}: {type(err).__name__}: {str(err)[:1000]}"}
        records.append(record)
        if info.is_main:
            with open(args.worker, "a") as handle:
                handle.write(json.dumps(record) + "\n")
    distributed.cleanup_distributed()
    return records


def _torchrun(args: argparse.Namespace, nproc: int) -> dict[str, dict]:
    """Run the worker under torchrun; the records it wrote, by case (a failed job leaves them out)."""
    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "records.jsonl"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
               "benchmarks", COMMAND, "--worker", str(lines), "--cases", args.cases, "--seed", str(args.seed)]
        env = {**os.environ, **distributed.SAFE_NCCL_ENV, "OMP_NUM_THREADS": "1"}
        try:
            done = subprocess.run(cmd + (["--smoke"] if args.smoke else []), cwd=ROOT, env=env, text=True,
                                  capture_output=True, timeout=args.budget_s)
            tail = "\n".join((done.stderr or "").strip().splitlines()[-15:])
        except subprocess.TimeoutExpired:
            tail = f"the torchrun job was stopped after --budget-s {args.budget_s:.0f} s"
        found = [json.loads(x) for x in lines.read_text().splitlines()] if lines.exists() else []
    return {r["case"]: r for r in found} | {"_tail": {"error": tail}}


def _merge(single: dict, multi: dict | None, nproc: int, tail: str) -> dict:
    """One record: the one-GPU run's fields as ``single_gpu_*``, the N-process run's, and their comparison."""
    if multi is None or "error" in multi:
        return {**single, "error": (multi or {}).get("error") or f"no record from the torchrun job: {tail}"}
    per_gpu = multi["tokens_per_s"] / nproc
    single_tps = single.get("tokens_per_s")
    diff = max(abs(a - b) for a, b in zip(multi["loss_curve"], single.get("loss_curve", []))) \
        if single.get("loss_curve") else None
    return {**{k: v for k, v in single.items() if k not in multi}, **multi,
            "single_gpu_tokens_per_s": single_tps, "single_gpu_peak_mem_gib": single.get("peak_mem_gib"),
            "loss_curve_single": single.get("loss_curve"), "tokens_per_s": round(per_gpu, 1),
            "total_tokens_per_s": multi["tokens_per_s"], "loss_curve_max_abs_diff": diff,
            "scaling_efficiency": round(per_gpu / single_tps, 3) if single_tps else None}


def main(argv: list[str] | None = None) -> list[dict]:
    """Launcher: one-GPU runs here, then the torchrun job; merge, print and write ``train-dist-<date>.json``."""
    args = parse_args(list(argv or []))
    if args.worker:
        return worker(args)
    device = pick_device(args.smoke, COMMAND)
    nproc = args.nproc or (2 if args.smoke else torch.cuda.device_count())
    link = distributed.interconnect() if device.type == "cuda" else {}
    results, singles = ResultsFile(COMMAND, args.out, args.smoke), {}
    with smoke_threads(args.smoke):
        for case in _cases(args):
            base = {"case": case.name, **asdict(case), "world_size": nproc, "method": "lora", "lora_r": 8,
                    "smoke": args.smoke, "interconnect": link.get("link"), "p2p": link.get("p2p")}
            singles[case.name] = run_case(base, lambda: _run(case, args, device, nproc, nproc, "ddp"), device,
                                          lambda r: f"one GPU: {r['tokens_per_s']:,.0f} real tokens/s", COMMAND)
    start = time.perf_counter()
    multi = _torchrun(args, nproc)
    records = [_merge(s, multi.get(name), nproc, multi["_tail"]["error"]) for name, s in singles.items()]
    for r in records:
        line = r.get("error", "")[:300] or (f"{r['tokens_per_s']:,.0f} real tokens/s per GPU, efficiency "
                                             f"{r['scaling_efficiency']}, loss curves differ by {r['loss_curve_max_abs_diff']:.1e}")
        print(f"[{COMMAND}] {r['case']} x{nproc}: {line}", flush=True)
    results.write(records)
    print(f"[{COMMAND}] wrote {results.path} (torchrun job {time.perf_counter() - start:.0f} s)", flush=True)
    return records
