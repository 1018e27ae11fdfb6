"""``python -m bioft_tutorial.bench train``: LoRA training throughput and memory of ESM-2, path by path.

Each case trains ESM-2 of the real shape (random weights: speed and memory depend only on shapes) on
random proteins whose lengths are drawn like real ones (log-normal, median 300 residues, capped at
1,022), token classification with 3 classes, LoRA r=8 on query/key/value/dense. Paths, each adding one
technique to the one before (:data:`~bioft_tutorial.bench.train_workload.PATHS`):

==========  ===========================================================================================
naive       fp32, every chain padded to 1,024 tokens, 2 chains per step (the baseline of every run)
bf16        bf16 autocast; chains sorted into length buckets, padded batches of a token budget
bf16-base   the frozen weights *stored* in bf16 (autocast no longer re-casts them each step)
packed      chains packed into rows of the token budget, no padding, variable-length attention
package     + static shapes, ``torch.compile`` of the repeated ``EsmLayer``, fused AdamW
==========  ===========================================================================================

Cases run in priority order (:data:`CASES`) until ``--budget-s`` is spent; each one is timed after
warm-up steps, catches its own failure, prints one summary line and one JSON line, and the results
file is rewritten after every case (``book/results/gpu/train-<date>.json``; schema in its README).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from bioft_tutorial import packing
from bioft_tutorial.bench.results import write_results
from bioft_tutorial.bench.train_workload import (PATHS, Recipe, batch_stats, build_model, free_memory, make_batches,
                                                 matmul_params, memory_stats, peak_tflops, prepare_model,
                                                 protein_lengths, random_chains, step_flops, sync, timed_steps,
                                                 train_step)
from bioft_tutorial.distributed import DistInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One measurement: a model size, a method and a path."""

    model: str
    path: str
    method: str = "lora"
    tokens: int = 16384  # token budget per step (padding included) for bucketed and packed batches
    checkpointing: bool = False
    steps: int = 6
    warmup: int = 3
    est_s: float = 20.0  # rough H100 cost, for the time budget

    tag: str = ""  # distinguishes variants, e.g. "nockpt"
    group: str = "headline"  # "headline" (the targets), "family" (the other sizes) or "diagnostic"

    @property
    def name(self) -> str:
        """``<model>[-full]-<path>[-<tag>]``, e.g. ``650M-package``, ``650M-full-naive``, ``3B-package-nockpt``."""
        parts = [self.model, "" if self.method == "lora" else self.method, self.path, self.tag]
        return "-".join(p for p in parts if p)


def _cases() -> list[Case]:
    big = dict(tokens=8192, checkpointing=True)
    head = [Case("650M", "naive", est_s=15), Case("650M", "package", est_s=45),
            Case("3B", "package", est_s=60, **big), Case("650M", "numerics", steps=0, warmup=0, est_s=15),
            Case("650M", "bf16", est_s=12), Case("650M", "bf16-base", est_s=12), Case("650M", "packed", est_s=12),
            Case("650M", "naive", method="full", est_s=12), Case("650M", "package", method="full", est_s=50),
            Case("15B", "packed", steps=2, warmup=1, est_s=60, **big)]
    family = [Case(size, path, group="family", est_s=30 if path == "package" else 6)
              for size in ("8M", "35M", "150M") for path in ("naive", "bf16", "package")]
    family += [Case("3B", "naive", group="family", est_s=20), Case("3B", "bf16", tokens=8192, group="family", est_s=20),
               Case("3B", "package", tokens=8192, tag="nockpt", group="family", est_s=50)]
    # What the LoRA adapters cost (the same step with no adapter: the floor a LoRA step cannot beat), and
    # whether twice the tokens per step pays.
    diagnostic = [Case("650M", "package", method="head", group="diagnostic", est_s=30),
                  Case("650M", "package", tokens=32768, tag="32k", group="diagnostic", est_s=45)]
    return head + family + diagnostic


#: Every case, in the order they run (highest priority first).
CASES: list[Case] = _cases()
#: ``--smoke`` runs one case per recipe (all on the tiny model).
SMOKE_CASES = ("650M-naive,650M-package,3B-package,650M-numerics,650M-bf16,650M-bf16-base,650M-packed,"
               "650M-full-naive,650M-full-package,650M-head-package")


def _chains_for(case: Case, smoke: bool, seed: int) -> list[dict]:
    """Enough random chains for the case's batches."""
    median, cap = (40, 200) if smoke else (300, 1022)
    steps = case.steps + case.warmup
    n = 2 * steps if case.path == "naive" else (steps + 4) * case.tokens // median
    return random_chains(protein_lengths(max(n, 16), seed, median=median, cap=cap), seed)


def case_recipe(case: Case, smoke: bool = False) -> Recipe | None:
    """The case's recipe; in smoke mode fp32 without compile (bf16 kernels are slow on most CPUs, and the
    smoke run checks the code, not the speed). ``None`` for the numerics case."""
    recipe = PATHS.get(case.path)
    return replace(recipe, frozen_bf16=False, autocast=False, compile=False) if smoke and recipe else recipe


def run_case(case: Case, device: torch.device, smoke: bool = False, seed: int = 0) -> dict:
    """Measure one case (see the module docstring); returns its record (without the environment fields)."""
    recipe = case_recipe(case, smoke)
    size = "tiny" if smoke else case.model
    chains = _chains_for(case, smoke, seed)
    batches = make_batches(chains, recipe.batching, case.tokens, case.warmup + case.steps, seed)
    start = time.perf_counter()
    model = build_model(size, case.method, recipe, device)
    sync(device)
    build_s = time.perf_counter() - start
    backend = prepare_model(model, recipe, case.checkpointing)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=recipe.fused_adamw and device.type == "cuda")
    times, losses = timed_steps(model, optimizer, [[b] for b in batches], recipe.autocast, DistInfo(device=device))
    stats = [batch_stats(b) for b in batches[case.warmup:]] or [batch_stats(b) for b in batches]
    timed = times[case.warmup:] or times
    seconds, real = sum(timed), sum(s["real"] for s in stats)
    flops = sum(step_flops(size, case.method, s) for s in stats)
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    steady = float(np.median(timed))
    return {
        "tokens_per_s": round(real / seconds, 1), "step_s": round(seconds / len(timed), 4),
        "tokens_per_step": round(real / len(timed), 1),
        "pad_fraction": round(1 - real / sum(s["total"] for s in stats), 4),
        **memory_stats(device), "mfu": round(flops / seconds / (peak * 1e12), 4) if peak else None,
        "model_tflops_per_s": round(flops / seconds / 1e12, 2), "peak_tflops": peak,
        "compile_s": round(times[0] - steady, 1) if recipe.compile else None, "first_step_s": round(times[0], 2),
        "step_times_ms": [round(1000 * t, 1) for t in timed],
        "build_s": round(build_s, 1), "attention_backend": backend, "rows_per_step": len(batches[0]["input_ids"]),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "trainable_params": sum(p.numel() for p in trainable),
        "total_params": sum(p.numel() for p in model.parameters()),
        "matmul_params": matmul_params(size),
    }


def _trainable_grads(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().double().flatten() for p in model.parameters() if p.requires_grad])


def numerics(size: str, device: torch.device, n_chains: int = 8, seed: int = 0) -> dict:
    """Relative difference of the loss and of the trainable gradients against fp32 padded Hugging Face.

    Same weights and chains throughout; LoRA ``B`` matrices are made non-zero so that every LoRA weight
    has a gradient. Variants: packed fp32, padded bf16 autocast, packed bf16 (frozen weights in bf16).
    Differences are ``|loss - ref| / |ref|`` and ``||g - g_ref|| / ||g_ref||``.
    """
    model = build_model(size, "lora", PATHS["naive"], device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    cap = 200 if size == "tiny" else 1022
    chains = random_chains(protein_lengths(n_chains, seed, median=min(300, cap // 4), cap=cap), seed)
    padded, packed = packing.collate_padded(chains), packing.collate_packed(chains)
    info = DistInfo(device=device)

    def run(batch: dict, autocast: bool) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        n = int((batch["labels"] != -100).sum())
        loss = train_step(model, _KeepGradients(), [batch], n, autocast, info) / n
        return float(loss), _trainable_grads(model)

    ref_loss, ref_grad = run(padded, False)
    record = {"tokens": batch_stats(packed)["real"], "chains": n_chains}
    record["attention_backend"] = packing.enable_packed_attention(model)
    variants = {"packed_fp32": (packed, False), "padded_bf16": (padded, True), "packed_bf16": (packed, True)}
    for label, (batch, autocast) in variants.items():
        if label == "packed_bf16":
            for p in model.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
        loss, grad = run(batch, autocast)
        record[f"loss_rel_diff_{label}"] = abs(loss - ref_loss) / abs(ref_loss)
        record[f"grad_rel_diff_{label}"] = float((grad - ref_grad).norm() / ref_grad.norm())
    return record


class _KeepGradients:
    """An optimizer stand-in for :func:`numerics`: no update, gradients left in place to be read."""

    def step(self) -> None:
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


# -------------------------------------------------------------------------------------------------- CLI
def select_cases(patterns: str, model: str = "all", method: str = "all") -> list[Case]:
    """Cases whose name matches a comma-separated glob (``"650M-*"``) or group (``"headline"``, ``"family"``,
    ``"all"``), filtered by model and method, in :data:`CASES` order."""
    globs = ["*"] if patterns in ("", "all") else [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [c for c in CASES if any(fnmatch.fnmatch(c.name, g) or g == c.group for g in globs)
              and model in ("all", c.model) and method in ("all", c.method)]
    if not chosen:
        raise SystemExit(f"no case matches --cases {patterns!r} --model {model} --method {method}; "
                         f"cases: {', '.join(c.name for c in CASES)}")
    return chosen


def _fill_baselines(records: list[dict]) -> None:
    """Give every measured record the naive tokens/s of the same model and method from this run."""
    naive = {(r["model"], r["method"]): r["tokens_per_s"] for r in records
             if r["path"] == "naive" and r.get("tokens_per_s")}
    for r in records:
        base = naive.get((r["model"], r["method"]))
        if r.get("tokens_per_s") and base and r["path"] not in ("naive", "numerics"):
            r["baseline_tokens_per_s"], r["speedup"] = base, round(r["tokens_per_s"] / base, 2)


def _summary(r: dict) -> str:
    if "error" in r or "skipped" in r:
        return f"[train] {r['case']:<22} {'ERROR ' + r['error'] if 'error' in r else 'skipped: ' + r['skipped']}"
    if r["path"] == "numerics":
        return (f"[train] {r['case']:<22} rel. diff vs fp32 padded: loss packed-bf16 "
                f"{r['loss_rel_diff_packed_bf16']:.2e}, grads packed-bf16 {r['grad_rel_diff_packed_bf16']:.2e} "
                f"(padded-bf16 {r['grad_rel_diff_padded_bf16']:.2e}), packed-fp32 {r['grad_rel_diff_packed_fp32']:.1e}")
    mem = f"{r['peak_mem_gib']:.1f} GiB" if r.get("peak_mem_gib") is not None else "-"
    extra = f", compile {r['compile_s']:.0f} s" if r.get("compile_s") is not None else ""
    return (f"[train] {r['case']:<22} {r['tokens_per_s']:>10,.0f} tokens/s  step {r['step_s']:.3f} s  "
            f"pad {r['pad_fraction']:.0%}  peak {mem}  MFU {r['mfu'] if r['mfu'] is not None else '-'}{extra}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bioft_tutorial.bench train", description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="headline",
                    help="comma-separated globs over case names, or groups: headline (default), family, all "
                         "(see --list)")
    ap.add_argument("--model", default="all", help="only cases of this ESM-2 size, e.g. 650M")
    ap.add_argument("--method", default="all", choices=["all", "lora", "full", "head"])
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip cases that would end past this, seconds")
    ap.add_argument("--steps", type=int, help="timed steps per case (default: the case's)")
    ap.add_argument("--warmup", type=int, help="warm-up steps per case, compile included (default: the case's)")
    ap.add_argument("--tokens", type=int, help="token budget per step of bucketed and packed cases (default: the "
                                                "case's: 16,384; 8,192 for 3B and 15B)")
    ap.add_argument("--out", help="results folder (default book/results/gpu; smoke writes only with --out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny random model on the CPU, seconds (for tests)")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the selected cases; print one summary line and one JSON line per case; write the results file."""
    args = parse_args(list(argv or []))
    patterns = SMOKE_CASES if args.smoke and args.cases == "headline" else args.cases
    cases = select_cases(patterns, args.model, args.method)
    if args.list:
        print("\n".join(f"{c.name:<24} {json.dumps(asdict(c))}" for c in cases))
        return []
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.smoke:
        raise SystemExit("no CUDA GPU: the train bench measures GPUs; use --smoke for the CPU check")
    threads = torch.get_num_threads()
    if args.smoke:  # tiny tensors: one thread is fastest, and spares a busy CI machine
        torch.set_num_threads(1)
    try:
        return _run_cases(cases, args, device)
    finally:
        torch.set_num_threads(threads)


def _run_cases(cases: list[Case], args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Run ``cases`` in order within the time budget; print and write after each (see :func:`main`)."""
    out = args.out or (None if args.smoke else "book/results/gpu")
    start, records, path = time.perf_counter(), [], None
    for case in cases:
        if args.smoke:
            case = replace(case, tokens=512, steps=2, warmup=1, checkpointing=case.checkpointing)
        case = replace(case, steps=args.steps if args.steps is not None else case.steps,
                       warmup=args.warmup if args.warmup is not None else case.warmup,
                       tokens=args.tokens or case.tokens)
        recipe = case_recipe(case, args.smoke)
        record = {"case": case.name, "model": "tiny" if args.smoke else case.model, "method": case.method,
                  "path": case.path, "token_budget": None if case.path in ("naive", "numerics") else case.tokens,
                  "checkpointing": case.checkpointing, "steps": case.steps, "warmup": case.warmup,
                  "recipe": asdict(recipe) if recipe else None, "lora_r": 8 if case.method == "lora" else None,
                  "smoke": args.smoke}
        elapsed = time.perf_counter() - start
        if not args.smoke and elapsed + case.est_s > args.budget_s:
            record["skipped"] = (f"time budget: {elapsed:.0f} s spent, case needs ~{case.est_s:.0f} s of "
                                 f"{args.budget_s:.0f} s")
        else:
            free_memory(device)
            case_start = time.perf_counter()
            try:
                size = "tiny" if args.smoke else case.model
                record.update(numerics(size, device, n_chains=4 if args.smoke else 8, seed=args.seed)
                              if case.path == "numerics"
                              else run_case(case, device, args.smoke, args.seed))
            except Exception as exc:  # noqa: BLE001 - one failing case must not lose the others
                log.exception("case %s failed", case.name)
                record["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            record["case_s"] = round(time.perf_counter() - case_start, 1)
            free_memory(device)
        records.append(record)
        _fill_baselines(records)
        print(_summary(record), flush=True)
        print(json.dumps(record, default=str), flush=True)
        if out:
            new = write_results("train", records, out, tag="smoke" if args.smoke else None)
            if path is not None and path != new and path.exists():
                path.unlink()
            path = new
    if path is not None:
        print(f"[train] wrote {path} ({time.perf_counter() - start:.0f} s)", flush=True)
    return records
