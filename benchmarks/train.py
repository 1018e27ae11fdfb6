"""``python -m benchmarks train``: how fast ``train.train`` trains ESM-2, one ``TrainConfig`` setting at a time.

Every case is the book's own training loop, :func:`bioft_tutorial.train.train`, called as a reader calls it:
``models.random_esm2(models.esm2_config(size), task="token", num_labels=3)`` (the real shape, random weights:
speed and memory depend only on shapes), prepared by ``lora.prepare_model(model, method,
lora.esm2_lora_config(r=8))``, trained on a list of ``{"input_ids", "labels"}`` dicts: random proteins with
real length statistics (:mod:`bioft_tutorial.data.synthetic`) or, with ``--data flip``, the shipped FLIP
secondary-structure training chains. Cases differ only in ``TrainConfig`` knobs (:data:`CASES`):

=================  ================================================================================
``fp32-padded``    ``precision="fp32", batching="padded"``
``bf16-padded``    ``precision="bf16"`` (bf16 autocast, frozen weights stored in bf16), padded
``bf16-packed``    ``batching="packed"``: chains packed into rows, no padding
``fast``           ``batching="packed", compile="inductor"``: the book's fast path
``fast-cg``        the fast path with ``compile_mode="reduce-overhead"``: each layer replayed as a CUDA graph
``peft-fast``      the fast path with PEFT's own LoRA layer (``esm2_lora_config(fused=False)``) instead of
                   :class:`bioft_tutorial.fused_lora.FusedLoraLinear`: what the fused layer buys
``fa4-fast``       the fast path with FlashAttention-4's kernels for the packed rows (``attention="fa4"``,
                   needs ``flash-attn-4``) instead of PyTorch's varlen FlashAttention-2; ``fa4-fast-cg``: the
                   same with every layer replayed as a CUDA graph (FlashAttention-4's launches cost host time)
``head-fast``      the fast path, only the head trains (nothing back-propagates into the encoder)
``floor-fast``     the head-only model with gradients flowing back through every layer, as LoRA's do:
                   a LoRA step without its adapters, the floor a LoRA step cannot beat
``full-fast``      the fast path, every weight trains
``3B-fast``        ESM-2 3B LoRA on the fast path with ``checkpointing=True`` at 8,192 tokens per step
``hf-trainer``     the baseline: ``transformers.Trainer`` + PEFT (its own LoRA layer) on the same chains
                   (:func:`bioft_tutorial.hf_trainer.train_with_trainer`)
=================  ================================================================================

Throughput is real (non-padding) tokens per second over the steps after warm-up, read from the run's
history. Each case catches its own failure and prints one line; the results file is rewritten after every
case (``book/results/gpu/train-<date>.json``; its fields: ``book/results/gpu/README.md``). ``--profile CASES``
runs each case under ``torch.profiler`` and writes its tables and where the GPU waits
(:mod:`benchmarks.timeline`) instead (a diagnostic, not a result).
``--smoke``: the tiny model on the CPU in seconds (compiled cases use the ``aot_eager`` backend).
"""
from __future__ import annotations

import argparse
import fnmatch
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks import timeline
from benchmarks.harness import ResultsFile, peak_tflops, pick_device, run_case, smoke_threads, steady_steps
from bioft_tutorial import data, fused_lora, hf_trainer, lora, models, train
from bioft_tutorial.data import synthetic

COMMAND = "train"


@dataclass(frozen=True)
class Case:
    """One measurement: a model size, a method and the ``TrainConfig`` knobs (or the Trainer baseline)."""

    name: str
    model: str = "650M"
    method: str = "lora"
    precision: str = "bf16"
    batching: str = "packed"
    compile: str | None = "inductor"
    compile_mode: str | None = None  # "reduce-overhead": every layer a CUDA graph
    checkpointing: bool = False
    token_budget: int = 16384
    runner: str = "train.train"  # or "transformers.Trainer"
    steps: int = 30
    warmup: int = 5
    group: str = "default"  # "default", "family" (the other sizes) or "checkpointing" (--cases GROUP)
    floor: bool = False  # head only, but the backward pass runs through every layer (a LoRA step without adapters)
    fused_lora: bool = True  # bioft_tutorial.fused_lora's layer; False: PEFT's own
    attention: str = "auto"  # TrainConfig.attention: the packed rows' kernel ("fa4": FlashAttention-4)
    est_s: float = 30.0  # rough cost on an H100/H200 (compilation included), for --budget-s

    def settings(self, smoke: bool) -> dict:
        """The ``TrainConfig`` knobs of this case (smoke: compile with ``aot_eager``, no C++ compiler needed)."""
        backend = "aot_eager" if smoke and self.compile else self.compile
        return dict(precision=self.precision, batching=self.batching, compile=backend,
                    compile_mode=None if smoke else self.compile_mode, checkpointing=self.checkpointing,
                    token_budget=self.token_budget, attention="auto" if smoke else self.attention)


#: Every case, in the order they run (the most important first, in case the time budget runs out).
CASES: list[Case] = [
    Case("650M-fast", est_s=45),
    Case("650M-fast-cg", compile_mode="reduce-overhead", est_s=45),  # the fast path, each layer a CUDA graph
    Case("650M-peft-fast", fused_lora=False, est_s=40),  # PEFT's own LoRA layer on the fast path
    Case("650M-hf-trainer", precision="bf16", batching="padded", compile=None, runner="transformers.Trainer",
         fused_lora=False, est_s=25),
    Case("3B-fast", model="3B", checkpointing=True, token_budget=8192, est_s=45),
    Case("650M-floor-fast", method="head", floor=True, est_s=25),
    Case("650M-fa4-fast", attention="fa4", est_s=60),  # FlashAttention-4 for the packed rows (JIT-compiled)
    Case("650M-fa4-fast-cg", compile_mode="reduce-overhead", attention="fa4", est_s=60),  # and each layer a CUDA graph
    Case("650M-floor-fa4-fast", method="head", floor=True, attention="fa4", est_s=30),
    Case("3B-fa4-fast", model="3B", checkpointing=True, token_budget=8192, attention="fa4", est_s=50),
    Case("650M-fp8-fast", precision="fp8", est_s=50),  # the fast path with FP8 frozen linears (bioft_tutorial.fp8)
    Case("3B-fp8-fast", model="3B", precision="fp8", checkpointing=True, token_budget=8192, est_s=55),
    Case("650M-head-fp8-fast", method="head", precision="fp8", est_s=25),
    Case("650M-floor-fp8-fast", method="head", floor=True, precision="fp8", est_s=25),
    Case("650M-fp32-padded", precision="fp32", batching="padded", compile=None, steps=8, warmup=2, est_s=25),
    Case("650M-bf16-padded", batching="padded", compile=None, est_s=25),
    Case("650M-bf16-packed", compile=None, est_s=20),
    Case("650M-head-fast", method="head", est_s=25),
    Case("650M-full-fast", method="full", est_s=30),
    Case("650M-fast-32k", token_budget=32768, steps=20, est_s=45),  # twice the rows: fixed per-step costs halve
    Case("3B-fast-4k", model="3B", token_budget=4096, est_s=40),  # no checkpointing: does it fit 24 GiB, how fast
    # what checkpointing keeps with each LoRA layer, compiled or not (--cases checkpointing)
    Case("3B-peft-fast", model="3B", checkpointing=True, token_budget=8192, fused_lora=False, group="checkpointing",
         est_s=45),
    Case("3B-bf16-packed", model="3B", checkpointing=True, token_budget=8192, compile=None, group="checkpointing",
         est_s=45),
    Case("3B-peft-bf16-packed", model="3B", checkpointing=True, token_budget=8192, compile=None, fused_lora=False,
         group="checkpointing", est_s=45),
    *[Case(f"{size}-fast", model=size, group="family", est_s=25) for size in ("8M", "35M", "150M")],
    Case("15B-fast", model="15B", checkpointing=True, token_budget=8192, steps=6, warmup=2, group="family",
         est_s=120),
]


def select_cases(patterns: str) -> list[Case]:
    """Cases whose name matches one of the comma-separated globs (``"650M-*"``), or a group (``"default"``,
    ``"family"``, ``"all"``), in :data:`CASES` order."""
    globs = [g.strip() for g in patterns.split(",") if g.strip()]
    chosen = [c for c in CASES if any(g in ("all", c.group) or fnmatch.fnmatch(c.name, g) for g in globs)]
    if not chosen:
        raise SystemExit(f"{COMMAND}: no case matches --cases {patterns!r}; cases: {', '.join(c.name for c in CASES)}")
    return chosen


def training_chains(args: argparse.Namespace, cases: list[Case]) -> tuple[list[dict], str]:
    """The chains every case trains on: synthetic (enough for the longest case) or FLIP's training set."""
    tokenizer = models.load_tokenizer()
    if args.data == "flip":
        chains = data.load_flip_secondary_structure("train", max_chains=args.chains, seed=args.seed)
        return data.secondary_structure_examples(chains, tokenizer, as_dataset=False), "FLIP secondary structure"
    median, cap = (40, 200) if args.smoke else (300, data.MAX_RESIDUES)
    need = max((c.warmup + c.steps + 4) * c.token_budget for c in cases) // median
    lengths = synthetic.protein_lengths(max(need, 64), args.seed, median=median, cap=cap)
    return synthetic.random_chains(lengths, tokenizer, seed=args.seed), "synthetic"


def build_model(case: Case, smoke: bool, seed: int, device: torch.device) -> torch.nn.Module:
    """The reader's model: ESM-2 of the case's shape with random weights, prepared for the case's method.

    It is made on ``device`` (seconds, not a minute of CPU time for 3B) and, where ``train.train`` would store
    the frozen weights in bf16 anyway, made in bf16 (a 15B model never exists in fp32; the trainable weights
    become fp32 in ``train.train``).
    """
    config = models.tiny_esm2_config() if smoke else models.esm2_config(case.model)
    bf16 = case.runner == "train.train" and case.precision in ("bf16", "fp8") and case.method != "full"
    model = models.random_esm2(config, task="token", num_labels=3, seed=seed, device=device,
                               dtype=torch.bfloat16 if bf16 else torch.float32)
    config = lora.esm2_lora_config(r=8, fused=case.fused_lora) if case.method == "lora" else None
    model = lora.prepare_model(model, case.method, config)
    if case.floor:  # the embeddings' output asks for a gradient: the backward pass then runs through every layer
        model.enable_input_require_grads()
    return model


def _train(case: Case, model, chains: list[dict], args, device, tmp: str, profiler=None):
    """``train.train`` with the case's knobs and no evaluation or checkpoint; returns its history."""
    config = train.TrainConfig(
        output_dir=tmp, max_steps=case.warmup + case.steps, learning_rate=1e-4 if case.method == "full" else 5e-4,
        warmup_steps=min(10, case.warmup + case.steps - 1), min_token_budget=min(1024, case.token_budget),
        eval_every=None, save_every=None, progress=False, device=device.type, seed=args.seed,
        **case.settings(args.smoke))
    hook = None if profiler is None else (lambda step, batch: profiler.step())
    return train.train(model, chains, None, config, before_forward=hook).history


def measure(case: Case, chains: list[dict], args: argparse.Namespace, device: torch.device) -> dict:
    """Build, train and time one case; the record's measured fields (see the module docstring)."""
    from torch._dynamo.utils import counters

    start = time.perf_counter()
    model = build_model(case, args.smoke, args.seed, device)
    build_s = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak of training, not of building the model
    graphs = counters["stats"]["unique_graphs"]
    with tempfile.TemporaryDirectory() as tmp:
        if case.runner == "transformers.Trainer":
            history = hf_trainer.train_with_trainer(model, chains, tmp, max_steps=case.warmup + case.steps,
                                                    token_budget=case.token_budget, device=device.type,
                                                    seed=args.seed)
        else:
            history = _train(case, model, chains, args, device, tmp)
    record = steady_steps(history, case.warmup)
    if case.method == "lora" and case.fused_lora and fused_lora.CHECKPOINT_MARKS_LOST and any(
            getattr(m, "_bioft_compiled_checkpoint", False) for m in model.modules()):
        record["lora_layer"] = "peft"  # compiled and checkpointed on torch < 2.13: the fused layer steps aside
    kernels = {getattr(m, "_bioft_backend", None) for m in model.modules() if type(m).__name__ == "EsmSelfAttention"}
    record["attention_kernel"] = kernels.pop() if len(kernels) == 1 and case.batching == "packed" else None
    if "train_loss" in history.attrs:  # Trainer reports one mean loss for the run
        record["loss_mean"] = round(history.attrs["train_loss"], 4)
    if case.compile:
        record["compile_s"] = round(record["first_step_s"] - record["step_s"], 1)
        record["dynamo_graphs"] = counters["stats"]["unique_graphs"] - graphs  # 0: ran eagerly (not compiled)
    lengths = np.array([len(c["input_ids"]) for c in chains], dtype=float)
    config = models.tiny_esm2_config() if args.smoke else models.esm2_config(case.model)
    per_token = lora.flops_per_token(config, case.method, float((lengths ** 2).sum() / lengths.sum()))
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    record |= {"flops_per_token": per_token, "model_tflops_per_s": round(per_token * record["tokens_per_s"] / 1e12, 2),
               "peak_tflops": peak, "mfu": round(per_token * record["tokens_per_s"] / (peak * 1e12), 4) if peak else None,
               "build_s": round(build_s, 1), "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "total_params": sum(p.numel() for p in model.parameters()), "matmul_params": lora.matmul_params(config)}
    return record


def describe(case: Case, args: argparse.Namespace, source: str, n_chains: int) -> dict:
    """The case's settings, as stored in its record before it is measured."""
    knobs = {k: v for k, v in case.settings(args.smoke).items() if k != "token_budget"}
    setting = ("Trainer: bf16=True, group_by_length, fixed batch" if case.runner != "train.train" else
               ", ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in knobs.items()
                         if v not in (None, False) and not (k == "attention" and v == "auto")))
    return {"case": case.name, "group": case.group, "model": "tiny" if args.smoke else case.model,
            "method": case.method, "runner": case.runner, "setting": setting, **knobs,
            "token_budget": case.token_budget, "steps": case.steps, "warmup": case.warmup, "lora_r": 8
            if case.method == "lora" else None, "lora_layer": ("fused" if case.fused_lora else "peft")
            if case.method == "lora" else None, "data": source, "chains": n_chains, "smoke": args.smoke}


def _summary(r: dict) -> str:
    mem = f"{r['peak_mem_gib']:.1f} GiB" if r.get("peak_mem_gib") is not None else "-"
    extra = f", compile {r['compile_s']:.0f} s, {r['dynamo_graphs']} graphs" if "compile_s" in r else ""
    ratio = f", x{r['vs_trainer']:.2f} Trainer" if r.get("vs_trainer") else ""
    return (f"{r['tokens_per_s']:>10,.0f} real tokens/s, step {r['step_s']:.3f} s, peak {mem}, "
            f"MFU {r['mfu'] if r['mfu'] is not None else '-'}{extra}{ratio}")


def _compare(records: list[dict]) -> None:
    """Give every measured record this run's Trainer baseline of the same model and the ratio to it."""
    base = {r["model"]: r["tokens_per_s"] for r in records if r["runner"] != "train.train" and "tokens_per_s" in r}
    for r in records:
        if "tokens_per_s" in r and r["runner"] == "train.train" and r["model"] in base:
            r |= {"baseline_tokens_per_s": base[r["model"]],
                  "vs_trainer": r["tokens_per_s"] / base[r["model"]]}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {COMMAND}", description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="default", help="comma-separated globs over case names, or groups: "
                   "default, family, all: " + ", ".join(c.name for c in CASES))
    p.add_argument("--data", default="synthetic", choices=["synthetic", "flip"], help="chains to train on")
    p.add_argument("--chains", type=int, default=4000, help="FLIP training chains to sample (--data flip)")
    p.add_argument("--steps", type=int, help="timed steps per case (default: the case's)")
    p.add_argument("--warmup", type=int, help="warm-up steps per case, compilation included (default: the case's)")
    p.add_argument("--budget-s", type=float, default=3600.0, help="skip cases that would end past this, seconds")
    p.add_argument("--profile", metavar="CASES", help="run each case (globs, as --cases) under torch.profiler; write "
                   "its tables and GPU idle summary, no results")
    p.add_argument("--profile-steps", type=int, default=3, help="steps profiled after warm-up (--profile)")
    p.add_argument("--out", help="results folder (default book/results/gpu; smoke: _build/benchmarks-smoke)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, seconds (for tests)")
    return p.parse_args(argv)


def _adjust(case: Case, args: argparse.Namespace) -> Case:
    steps, warmup = (2, 1) if args.smoke else (case.steps, case.warmup)
    return replace(case, steps=args.steps or steps, warmup=args.warmup if args.warmup is not None else warmup,
                   token_budget=1024 if args.smoke else case.token_budget)


def profile_case(case: Case, chains: list[dict], args: argparse.Namespace, device: torch.device) -> Path:
    """Run ``case`` with ``torch.profiler`` over ``--profile-steps`` steps after warm-up; write the tables."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    case = replace(case, steps=args.profile_steps + 1)
    with profile(activities=activities, record_shapes=True,
                 schedule=schedule(wait=case.warmup, warmup=1, active=args.profile_steps)) as prof:
        with tempfile.TemporaryDirectory() as tmp:
            _train(case, build_model(case, args.smoke, args.seed, device), chains, args, device, tmp, profiler=prof)
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    tables = [prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=40),
              prof.key_averages().table(sort_by=sort, row_limit=30)]
    with tempfile.TemporaryDirectory() as tmp:  # the trace itself is large: only its idle summary is kept
        prof.export_chrome_trace(f"{tmp}/trace.json")
        tables.insert(0, timeline.format_summary(timeline.idle_summary(f"{tmp}/trace.json")))
    results = ResultsFile(f"{COMMAND}-profile-{case.name}", args.out, args.smoke)
    path = results.path.with_suffix(".txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {case}\n# {results.env}\n" + "\n\n".join(tables))
    return path


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the selected cases (within ``--budget-s``); print and write the results after each."""
    args = parse_args(list(argv or []))
    cases = [_adjust(c, args) for c in select_cases(args.profile or args.cases)]
    device = pick_device(args.smoke, COMMAND)
    with smoke_threads(args.smoke):
        chains, source = training_chains(args, cases)
        if args.profile:
            for case in cases:
                print(f"[{COMMAND}] wrote {profile_case(case, chains, args, device)}", flush=True)
            return []
        results, records, start = ResultsFile(COMMAND, args.out, args.smoke), [], time.perf_counter()
        for case in cases:
            record = describe(case, args, source, len(chains))
            spent = time.perf_counter() - start
            if not args.smoke and spent + case.est_s > args.budget_s:
                record["skipped"] = f"time budget: {spent:.0f} s of {args.budget_s:.0f} s spent, case needs ~{case.est_s:.0f} s"
                print(f"[{COMMAND}] {case.name}: skipped ({record['skipped']})", flush=True)
            else:
                record = run_case(record, lambda: measure(case, chains, args, device), device, _summary, COMMAND)
            records.append(record)
            _compare(records)
            results.write(records)
    print(f"[{COMMAND}] wrote {results.path} ({time.perf_counter() - start:.0f} s)", flush=True)
    return records
