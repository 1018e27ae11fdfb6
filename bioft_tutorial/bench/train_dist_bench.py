"""``torchrun --nproc_per_node=N -m bioft_tutorial.bench train-dist``: data-parallel LoRA training of ESM-2.

Cases (:data:`DIST_CASES`): ESM-2 650M with DDP, 3B and 15B with FSDP2 (weights sharded over the GPUs).
Each case, in one job on one host:

1. builds the same model on every process (same seed);
2. **single GPU**, rank 0 alone (the others wait): the loss curve of a few steps whose global batch is
   ``N`` packed rows (accumulated), then throughput with one row per step;
3. restores the initial weights, wraps the model (DDP or FSDP2) and runs the same steps on ``N``
   processes, one row each: the loss curve (must match step 2) and throughput.

Records carry ``world_size``, ``strategy``, per-GPU ``tokens_per_s`` and ``single_gpu_tokens_per_s``
(``scaling_efficiency`` = their ratio), ``peak_mem_gib`` (largest over processes), both loss curves and
the interconnect as detected. ``--smoke`` runs the tiny model in fp32 on CPU processes (gloo): the
curves then agree to float rounding, which is what the CI test checks.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import time
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from bioft_tutorial.bench.results import write_results
from bioft_tutorial.bench.train_workload import (PATHS, Recipe, batch_stats, build_model, free_memory, make_batches,
                                                 matmul_params, memory_stats, peak_tflops, prepare_model,
                                                 protein_lengths, random_chains, static_max_chains, step_flops,
                                                 timed_steps)
from bioft_tutorial.distributed import (DistInfo, SAFE_NCCL_ENV, cleanup_distributed, init_distributed,
                                        interconnect, wrap_model)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistCase:
    """A model, a strategy and the recipe each process runs."""

    model: str
    strategy: str  # "ddp" or "fsdp2"
    path: str = "package"  # a key of train_workload.PATHS
    tokens: int = 16384  # tokens per row; one row per process per step
    checkpointing: bool = False
    curve_steps: int = 4
    steps: int = 5
    warmup: int = 2
    est_s: float = 60.0

    @property
    def name(self) -> str:
        return f"{self.model}-{self.strategy}"


DIST_CASES = [
    DistCase("650M", "ddp", est_s=80),
    DistCase("3B", "fsdp2", path="packed", tokens=8192, checkpointing=True, est_s=80),
    DistCase("15B", "fsdp2", path="packed", tokens=8192, checkpointing=True, curve_steps=2, steps=2,
             warmup=1, est_s=120),
]


def _global_batches(case: DistCase, rows: int, steps: int, seed: int, smoke: bool) -> list[list[dict]]:
    """``steps`` global batches of ``rows`` packed rows each (the same on every process)."""
    median, cap = (40, 200) if smoke else (300, 1022)
    chains = random_chains(protein_lengths((steps * rows + 4) * case.tokens // median, seed,
                                           median=median, cap=cap), seed)
    packed = make_batches(chains, "packed", case.tokens, steps * rows, seed, static_max_chains(case.tokens))
    if len(packed) < steps * rows:
        raise RuntimeError(f"only {len(packed)} packed rows for {steps} steps of {rows} rows")
    return [packed[s * rows:(s + 1) * rows] for s in range(steps)]


def _throughput(model, optimizer, batches: list[list[dict]], case: DistCase, recipe: Recipe, info: DistInfo,
                size: str) -> dict:
    """Time ``case.warmup + case.steps`` steps; ``batches[i]`` holds this process's rows of step ``i``."""
    times, _ = timed_steps(model, optimizer, batches, recipe.autocast, info)
    timed = times[case.warmup:]
    stats = [batch_stats(b) for step in batches[case.warmup:] for b in step]
    real = float(_sum(sum(s["real"] for s in stats), info))
    flops = float(_sum(sum(step_flops(size, "lora", s) for s in stats), info))
    peak = peak_tflops(torch.cuda.get_device_name(info.device)) if info.device.type == "cuda" else None
    per_gpu = real / sum(timed) / info.world_size
    return {"tokens_per_s": round(per_gpu, 1), "total_tokens_per_s": round(per_gpu * info.world_size, 1),
            "step_s": round(sum(timed) / len(timed), 4),
            "mfu": round(flops / sum(timed) / info.world_size / (peak * 1e12), 4) if peak else None,
            "first_step_s": round(times[0], 2)}


def _sum(value: float, info: DistInfo) -> torch.Tensor:
    t = torch.tensor(float(value), dtype=torch.float64, device=info.device)
    if info.is_distributed:
        dist.all_reduce(t)
    return t


def _max(value: float | None, info: DistInfo) -> float | None:
    if value is None:
        return None
    t = torch.tensor(float(value), dtype=torch.float64, device=info.device)
    if info.is_distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return round(float(t), 2)


def _phase(fn, info: DistInfo, run_here: bool = True):
    """Run ``fn`` on this process (if ``run_here``), then agree with the others on whether every one succeeded.

    Raises:
        RuntimeError: on every process, when ``fn`` failed on any of them (so that none waits forever).
    """
    result, error = None, None
    if run_here:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - reported to every rank below
            log.exception("rank %d failed", info.rank)
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
    failed = float(_sum(1.0 if error else 0.0, info))
    if failed:
        raise RuntimeError(error or f"failed on {int(failed)} other process(es); see their log")
    return result


def run_dist_case(case: DistCase, info: DistInfo, smoke: bool, seed: int = 0, global_rows: int | None = None) -> dict:
    """Measure one case; call it on every process. Returns the record (complete on rank 0).

    Args:
        global_rows: packed rows per global batch (default: one per process); each process takes rows
            ``rank, rank + N, ...`` of it and accumulates their gradients.
    """
    recipe = PATHS[case.path]
    if smoke:  # fp32 on CPU: the curves must agree to rounding
        recipe = replace(recipe, frozen_bf16=False, autocast=False, compile=False, fused_adamw=False)
    size, world = "tiny" if smoke else case.model, info.world_size
    rows = global_rows or world
    if rows < world:
        raise ValueError(f"--global-rows {rows} < {world} processes: every process needs a row")
    curve = _global_batches(case, rows, case.curve_steps, seed, smoke)
    speed = _global_batches(case, world, case.warmup + case.steps, seed + 1, smoke)
    fused = recipe.fused_adamw and info.device.type == "cuda"

    def build():
        torch.manual_seed(seed)
        model = build_model(size, "lora", recipe, info.device)
        backend = prepare_model(model, recipe, case.checkpointing)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()
                   if "lora_" in k or "modules_to_save" in k}
        return model, backend, initial

    model, backend, initial = _phase(build, info)
    record: dict = {"attention_backend": backend, "matmul_params": matmul_params(size), "global_rows": rows}

    def single():  # rank 0 alone: the curve on whole global batches, then one row per step
        one = DistInfo(device=info.device)
        optimizer = _adamw(model, fused)
        _, curve_single = timed_steps(model, optimizer, curve, recipe.autocast, one)
        speed_single = _throughput(model, optimizer, [step[:1] for step in speed], case, recipe, one, size)
        model.load_state_dict(initial, strict=False)
        return {"loss_curve_single": curve_single, "single_gpu_tokens_per_s": speed_single["tokens_per_s"],
                "single_gpu_mfu": speed_single["mfu"],
                "single_gpu_peak_mem_gib": memory_stats(info.device)["peak_mem_gib"]}

    def warm():  # the other ranks meanwhile compile (if the recipe compiles): forward and backward, no update
        _, _ = timed_steps(model, _NoUpdate(model), [curve[0][:1]], recipe.autocast, DistInfo(device=info.device))
        return {}

    free_memory(info.device)
    record.update(_phase(single if info.is_main else warm, info))
    free_memory(info.device)

    def data_parallel():
        wrapped = wrap_model(model, info, case.strategy, param_dtype=torch.bfloat16 if recipe.frozen_bf16 else None)
        optimizer = _adamw(wrapped, fused)
        mine = [[step[info.rank::world] for step in steps] for steps in (curve, speed)]
        _, loss_curve = timed_steps(wrapped, optimizer, mine[0], recipe.autocast, info)
        return {"loss_curve": loss_curve, **_throughput(wrapped, optimizer, mine[1], case, recipe, info, size)}

    record.update(_phase(data_parallel, info))
    record["peak_mem_gib"] = _max(memory_stats(info.device)["peak_mem_gib"], info)
    if info.is_main:
        if record.get("single_gpu_tokens_per_s"):
            record["scaling_efficiency"] = round(record["tokens_per_s"] / record["single_gpu_tokens_per_s"], 3)
        record["loss_curve_max_abs_diff"] = max(abs(a - b) for a, b in zip(record["loss_curve"],
                                                                           record["loss_curve_single"]))
    return record


class _NoUpdate:
    """Optimizer stand-in for warm-up: clears the gradients, leaves the weights as they were."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)


def _adamw(model: torch.nn.Module, fused: bool) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=fused)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="torchrun --nproc_per_node=N -m bioft_tutorial.bench train-dist",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="all",
                    help="comma-separated globs over " + ", ".join(c.name for c in DIST_CASES))
    ap.add_argument("--budget-s", type=float, default=280.0, help="skip cases that would end past this, seconds")
    ap.add_argument("--out", help="results folder (default book/results/gpu; smoke writes only with --out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--global-rows", type=int, help="packed rows per global batch of the loss curve (default: N)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, fp32, CPU processes with gloo (for tests)")
    return ap.parse_args(argv)


def _environment(info: DistInfo) -> dict:
    link = interconnect() if info.device.type == "cuda" else {"gpu_count": 0, "p2p": None, "link": None}
    return {"world_size": info.world_size, "backend": info.backend, "interconnect": link.get("link"),
            "p2p": link.get("p2p"), "gpus_on_host": link.get("gpu_count"),
            "gpu_names": sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
            if info.device.type == "cuda" else [], "topology": link.get("topology"),
            **{k: os.environ.get(k) for k in SAFE_NCCL_ENV}}


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the selected cases on every process; rank 0 prints and writes ``train-dist-<date>.json``."""
    args = parse_args(list(argv or []))
    globs = [g.strip() for g in args.cases.split(",")] if args.cases != "all" else ["*"]
    cases = [c for c in DIST_CASES if any(fnmatch.fnmatch(c.name, g) for g in globs)]
    if args.smoke:
        cases = [replace(c, tokens=256, steps=2, warmup=1, curve_steps=3) for c in cases[:2]]
    threads = torch.get_num_threads()
    if args.smoke:
        torch.set_num_threads(1)  # tiny tensors; CI machines with few cores
    try:
        return _run(cases, args)
    finally:
        torch.set_num_threads(threads)


def _run(cases: list[DistCase], args: argparse.Namespace) -> list[dict]:
    info = init_distributed("cpu" if args.smoke else None)
    if info.device.type != "cuda" and not args.smoke:
        raise SystemExit("no CUDA GPU: use --smoke for the CPU (gloo) check")
    env = _environment(info)
    out = args.out or (None if args.smoke else "book/results/gpu")
    start, records, path = time.perf_counter(), [], None
    try:
        for case in cases:
            record = {"case": case.name, "model": "tiny" if args.smoke else case.model, "method": "lora",
                      "path": case.path, "strategy": case.strategy, "token_budget": case.tokens,
                      "checkpointing": case.checkpointing, "steps": case.steps, "warmup": case.warmup,
                      "curve_steps": case.curve_steps, "lora_r": 8, "smoke": args.smoke,
                      **{k: v for k, v in env.items() if k != "topology"}}
            elapsed = time.perf_counter() - start
            if not args.smoke and elapsed + case.est_s > args.budget_s:
                record["skipped"] = f"time budget: {elapsed:.0f} s spent, case needs ~{case.est_s:.0f} s"
            else:
                case_start = time.perf_counter()
                try:
                    record.update(run_dist_case(case, info, args.smoke, args.seed, args.global_rows))
                except Exception as exc:  # noqa: BLE001 - every rank raises together (see _phase)
                    record["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
                record["case_s"] = round(time.perf_counter() - case_start, 1)
                free_memory(info.device)
            records.append(record)
            if info.is_main:
                print(_summary(record), flush=True)
                print(json.dumps(record, default=str), flush=True)
                if out:
                    new = write_results("train-dist", records, out, tag="smoke" if args.smoke else None)
                    if path is not None and path != new and path.exists():
                        path.unlink()
                    path = new
    finally:
        cleanup_distributed()
    if info.is_main and path is not None:
        print(f"[train-dist] wrote {path} ({time.perf_counter() - start:.0f} s)", flush=True)
    return records


def _summary(r: dict) -> str:
    head = f"[train-dist] {r['case']:<12} x{r['world_size']}"
    if "error" in r or "skipped" in r:
        return f"{head} {'ERROR ' + r['error'] if 'error' in r else 'skipped: ' + r['skipped']}"
    return (f"{head} {r['tokens_per_s']:>9,.0f} tokens/s per GPU (single {r.get('single_gpu_tokens_per_s') or 0:,.0f}, "
            f"efficiency {r.get('scaling_efficiency', float('nan')):.2f})  peak "
            f"{r['peak_mem_gib'] if r['peak_mem_gib'] is not None else '-'} GiB  "
            f"loss curve max |diff| {r['loss_curve_max_abs_diff']:.2e}  link {r['interconnect']}")
