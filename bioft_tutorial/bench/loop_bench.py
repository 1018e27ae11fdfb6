"""``python -m bioft_tutorial.bench loop-vs-trainer``: notebook 03's training step, package loop vs HF ``Trainer``.

Trains ESM-2 650M of the real shape (random weights: speed and memory depend only on shapes) with LoRA
r=8 on query/key/value/dense plus the token-classification head, on the shipped FLIP secondary-structure
training chains (real lengths and labels, chains longer than 1,022 residues cropped), two ways in the
same run:

* ``package loop``: :func:`bioft_tutorial.train.train` as notebook 03 calls it: bf16 autocast, frozen
  base stored in bf16, length-bucketed padded batches of ``--token-budget`` tokens, fused AdamW;
* ``hf-trainer`` (the baseline): ``transformers.Trainer`` the way most tutorials use it: fp32 weights,
  ``bf16=True`` (autocast), ``train_sampling_strategy="group_by_length"`` and the largest fixed batch
  that still fits the longest chain in the same token budget (``token_budget // 1024`` chains).

Each case runs ``--warmup`` untimed steps then ``--steps`` timed ones, and records real (non-padding)
tokens per second, the padding fraction, seconds per step and peak GPU memory. Each case catches its
own failure (recorded as ``{"error": ...}``) and prints one summary line. ``--smoke`` runs the tiny
model on the CPU in seconds (used by the tests).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from bioft_tutorial import data, lora, models, train
from bioft_tutorial.bench.results import stored_results as _stored_results
from bioft_tutorial.bench.results import write_results

log = logging.getLogger(__name__)
COMMAND = "loop-vs-trainer"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bioft_tutorial.bench {COMMAND}", description=__doc__.split("\n")[0])
    p.add_argument("--size", default="650M", choices=list(models.ESM2_FAMILY), help="ESM-2 shape (random weights)")
    p.add_argument("--steps", type=int, default=100, help="timed optimizer steps per case")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before timing")
    p.add_argument("--token-budget", type=int, default=16384, help="tokens per batch, padding included")
    p.add_argument("--chains", type=int, default=4000, help="FLIP training chains to sample")
    p.add_argument("--cases", default="package loop,hf-trainer", help="comma-separated cases to run")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, a few steps (for tests)")
    p.add_argument("--out", default=None, help="results folder (default book/results/gpu; smoke: _build/bench-smoke)")
    p.add_argument("--tag", default=None, help="extra word in the results file name")
    return p


def _model(args, device: torch.device) -> torch.nn.Module:
    config = models.tiny_esm2_config() if args.smoke else models.esm2_config(args.size)
    base = models.random_esm2(config, "token", 3, seed=0, device=device)
    return lora.prepare_model(base, "lora", lora.esm2_lora_config(r=8, alpha=16, dropout=0.05))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _package_case(args, examples, device, fast: bool = False) -> dict:
    """``train.train`` as chapter 3 runs it; ``fast``: packed rows and compiled layers (``TrainConfig.compile``)."""
    model = _model(args, device)
    extra = dict(batching="packed", compile="aot_eager" if device.type == "cpu" else "inductor") if fast else {}
    with tempfile.TemporaryDirectory() as tmp:
        config = train.TrainConfig(output_dir=tmp, max_steps=args.warmup + args.steps, learning_rate=5e-4,
                                   warmup_steps=min(10, args.warmup), token_budget=args.token_budget,
                                   min_token_budget=min(1024, args.token_budget), eval_every=10**9,
                                   save_every=10**9, progress=False, device=str(device), **extra)
        result = train.train(model, examples, None, config)
    timed = result.history.iloc[args.warmup:]
    seconds = float((timed["tokens"] / timed["tokens_per_s"]).sum())
    lengths = np.array([len(e["input_ids"]) for e in examples])
    plan = data.token_budget_batches(lengths, args.token_budget, seed=0)
    padded = sum(len(b) * lengths[b].max() for b in plan)
    real = lengths.sum()
    first = result.history.iloc[0]
    return {"tokens_per_s": float(timed["tokens"].sum()) / seconds, "step_s": seconds / len(timed),
            "pad_fraction": None if fast else 1 - real / padded, "final_loss": float(result.history["loss"].iloc[-1]),
            "first_step_s": float(first["tokens"] / first["tokens_per_s"]),  # includes compiling, if any
            "precision": "bf16 autocast, frozen base bf16" if device.type == "cuda" else "fp32",
            "batching": (f"packed rows of up to {args.token_budget} tokens, compiled layers ({extra['compile']})"
                         if fast else f"length-bucketed, {args.token_budget}-token budget")}


def _trainer_case(args, examples, device) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = _model(args, device)
    tokenizer = models.load_tokenizer()
    batch_size = max(1, args.token_budget // 1024)
    counts: list[tuple[int, int]] = []  # (real, padded) tokens of each batch, in the order they are made

    def collate(batch):
        out = data.collate_padded(batch, tokenizer.pad_token_id)
        counts.append((int(out["attention_mask"].sum()), out["input_ids"].numel()))
        return out

    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, *unused, **kwargs):
            _sync(device)
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, max_steps=args.warmup + args.steps, per_device_train_batch_size=batch_size,
            learning_rate=5e-4, warmup_steps=min(10, args.warmup), lr_scheduler_type="cosine",
            bf16=device.type == "cuda", use_cpu=device.type == "cpu", eval_strategy="no", save_strategy="no",
            logging_strategy="no", report_to="none", train_sampling_strategy="group_by_length",
            remove_unused_columns=False, label_names=["labels"],
            dataloader_num_workers=0, disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=targs, train_dataset=examples, data_collator=collate,
                          processing_class=tokenizer, callbacks=[StepTimer()])
        result = trainer.train()
    seconds = times[-1] - times[args.warmup - 1] if args.warmup else times[-1] - times[0]
    timed = counts[args.warmup: args.warmup + args.steps]
    return {"tokens_per_s": sum(r for r, _ in timed) / seconds, "step_s": seconds / args.steps,
            "pad_fraction": 1 - sum(r for r, _ in timed) / sum(p for _, p in timed),
            "final_loss": float(result.training_loss), "batch_size": batch_size,
            "precision": "fp32 weights, bf16 autocast" if device.type == "cuda" else "fp32",
            "batching": f"group_by_length, {batch_size} chains per batch"}


CASES = {"package loop": _package_case, "hf-trainer": _trainer_case,
         "package loop packed-compiled": lambda args, examples, device: _package_case(args, examples, device, True)}


def _run_case(name: str, fn, args, examples, device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    record = {"case": name, "model": "tiny" if args.smoke else args.size, "method": "lora",
              "steps": args.steps, "warmup": args.warmup, "token_budget": args.token_budget}
    try:
        record |= fn(args, examples, device)
        if device.type == "cuda":
            record["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"[{COMMAND}] {name}: {record['tokens_per_s']:,.0f} real tokens/s, {record['step_s']:.3f} s/step, "
              f"padding {record['pad_fraction'] or 0:.0%}, peak {record.get('peak_mem_gib', float('nan')):.1f} GiB",
              flush=True)
    except Exception as err:  # noqa: BLE001 - one failing case must not lose the others
        record["error"] = f"{type(err).__name__}: {err}"
        log.debug(traceback.format_exc())
        print(f"[{COMMAND}] {name}: FAILED {record['error'][:300]}", flush=True)
    gc.collect()
    return record


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the cases, write the results file and return the records."""
    args = _parser().parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.token_budget, args.chains = min(args.steps, 4), min(args.warmup, 1), 2048, 48
    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{COMMAND}: no CUDA device; run with --smoke on a CPU")
    chains = data.load_flip_secondary_structure("train", max_chains=args.chains, seed=0)
    # a list of dicts: the GPU host needs no `datasets`; Trainer's length grouping reads len(input_ids)
    examples = data.secondary_structure_examples(chains, models.load_tokenizer(), as_dataset=False)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(names) - set(CASES)
    if unknown:
        raise SystemExit(f"{COMMAND}: unknown case(s) {sorted(unknown)}; use {sorted(CASES)}")
    torch.manual_seed(0)
    records = [_run_case(name, CASES[name], args, examples, device) for name in names]
    ok = {r["case"]: r for r in records if "error" not in r}
    fast = ok.get("package loop packed-compiled")
    if fast and "package loop" in ok:  # the baseline of the fast path: the default loop, same run
        fast["baseline_tokens_per_s"] = ok["package loop"]["tokens_per_s"]
        fast["speedup_vs_package_loop"] = fast["tokens_per_s"] / ok["package loop"]["tokens_per_s"]
    if "package loop" in ok and "hf-trainer" in ok:
        ok["package loop"]["baseline_tokens_per_s"] = ok["hf-trainer"]["tokens_per_s"]
        ok["package loop"]["speedup_vs_trainer"] = ok["package loop"]["tokens_per_s"] / ok["hf-trainer"]["tokens_per_s"]
    extra = {"chains": len(chains), "examples": len(examples), "smoke": args.smoke,
             "mean_tokens_per_chain": float(np.mean([len(e["input_ids"]) for e in examples])),
             "argv": list(argv or [])}
    records = [r | extra for r in records]
    path = write_results(COMMAND, records, args.out or ("_build/bench-smoke" if args.smoke else None), tag=args.tag)
    print(json.dumps({"wrote": str(path)}), flush=True)
    return records


def stored_results(results_dir: str | Path | None = None) -> list[dict]:
    """Measured GPU records of this command in ``book/results/gpu`` (see :func:`results.stored_results`)."""
    return _stored_results(COMMAND, results_dir)
