"""``python -m benchmarks fp8-numerics``: do FP8 frozen linears, and PEFT's LoRA layer, follow the bf16 loss curve?

ESM-2 650M (the real shape, random weights) with LoRA r=8 on query/key/value/dense plus the head, trained by
:func:`bioft_tutorial.train.train` on the shipped FLIP secondary-structure training chains (all 9,742 unless
``--chains`` says fewer) on the book's fast path (``batching="packed", compile="inductor"``), from the same
initial weights over the same batches (same seed), up to four times (``--runs``), in this order:

* ``bf16``: ``precision="bf16"`` for ``--steps`` steps (default 300): the book's default, the reference;
* ``fp8``: ``precision="fp8"`` for ``--steps`` steps (:mod:`bioft_tutorial.fp8`);
* ``bf16-peft``: ``bf16`` with PEFT's own LoRA layer (``esm2_lora_config(fused=False)``) instead of the
  package's :class:`~bioft_tutorial.fused_lora.FusedLoraLinear`, which every other run uses: the same
  arithmetic in another order, so it must stray no further than rounding does;
* ``fp32``: ``precision="fp32"`` for the first ``--fp32-steps`` (default 20): what rounding alone changes, to
  scale the other deviations by (the fp8 and bf16-peft records get their verdicts once this run is in).

The learning rate is constant after a ``--warmup``-step ramp, so the shorter fp32 run follows the same schedule
as the others; the fp32 run is not compiled (packed fp32 attention runs chain by chain; see :func:`_backend`).
Each run's record holds its loss curve (``loss_curve``: nats per labelled residue, one value per step, the loss
of that step's batch before the update) and its speed; the fp8 and fp32 records hold their per-step relative
difference from bf16, ``|L - L_bf16| / L_bf16``: ``max_rel_diff``, ``mean_rel_diff`` (all common steps) and
``mean_rel_diff_first`` (the fp32 run's steps), and the fp8 record the verdict.

Tolerance, fixed before any run (stored with the verdict as ``within_tolerance`` and ``tolerance``):

1. every loss is finite;
2. over the first ``--fp32-steps`` steps, the mean relative difference of fp8 from bf16 is at most 32 times
   that of bf16 from fp32 (:data:`MAX_RATIO`). FP8 keeps 4 significant bits for activations and weights (e4m3)
   and 3 for gradients (e5m2) where bf16 keeps 8: its rounding is 16 to 32 times coarser. If the FP8 products
   only add their rounding, the deviation stays within that factor; a wrong scale, saturation or gradient
   underflow gives a deviation that grows far past it;
3. the mean loss of the last ``--window`` steps (default 50) of fp8 is within 1% of bf16's
   (:data:`MAX_END_DIFF`): where the training ends is what a reader keeps, and a 1% loss difference is a
   fraction of the step-to-step scatter of a 16k-token batch's loss, which is stored beside it as ``loss_noise``
   (the standard deviation of bf16's step-to-step loss changes over the window, divided by sqrt 2, relative to
   its mean) so that the reader can see the margin.

PEFT's layer is judged by the same rules with a ratio of at most 2 (:data:`MAX_LAYER_RATIO`): both runs round
to bf16, only in another order, so their deviation should be that of bf16 from fp32, not a multiple of it.

Where FP8 is off (the CPU, older GPUs: ``fp8_layers`` is 0), there is no verdict (``within_tolerance``: null).
Expected time on one H200: about 4 minutes (a 650M step of 16k tokens takes ~0.2 s in bf16 or fp8, compiled, and
an estimated 1-2 s in fp32, eager).
``--smoke``: the tiny model on the CPU in seconds (FP8 is off there: the code path, not the numerics).
"""
from __future__ import annotations

import argparse
import math
import tempfile

import numpy as np
import torch

from benchmarks.harness import ResultsFile, pick_device, run_case, smoke_threads, steady_steps
from bioft_tutorial import data, fp8, lora, models, train

COMMAND = "fp8-numerics"
#: Largest allowed ratio of the fp8-vs-bf16 to the bf16-vs-fp32 mean relative loss difference (tolerance 2).
MAX_RATIO = 32.0
#: Largest allowed relative difference of the mean loss over the last ``--window`` steps (tolerance 3).
MAX_END_DIFF = 0.01
#: Tolerance 2 for PEFT's LoRA layer against the fused one (both bf16).
MAX_LAYER_RATIO = 2.0
#: The runs, in the order they train: name -> (precision, LoRA layer). fp32 last: the slow fp32 run only scales
#: the verdicts, and a time limit should cut it, not the runs judged.
RUNS = {"bf16": ("bf16", "fused"), "fp8": ("fp8", "fused"), "bf16-peft": ("bf16", "peft"), "fp32": ("fp32", "fused")}
#: The runs that get a verdict, and their ratio limit.
JUDGED = {"fp8": MAX_RATIO, "bf16-peft": MAX_LAYER_RATIO}


def relative_difference(curve: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``|curve - reference| / |reference|`` step by step, over the steps both have."""
    n = min(len(curve), len(reference))
    return np.abs(np.asarray(curve[:n]) - np.asarray(reference[:n])) / np.abs(np.asarray(reference[:n]))


def compare(curve: np.ndarray, reference: np.ndarray, first: int) -> dict:
    """Max and mean relative difference over the common steps, and the mean over the first ``first`` steps."""
    diff = relative_difference(curve, reference)
    return {"max_rel_diff": float(diff.max()), "mean_rel_diff": float(diff.mean()),
            "mean_rel_diff_first": float(diff[:first].mean()), "compared_steps": int(len(diff))}


def verdict(curves: dict[str, np.ndarray], first: int, window: int, candidate: str = "fp8",
            max_ratio: float = MAX_RATIO) -> dict:
    """The tolerance of the module docstring applied to the ``candidate`` curve against ``bf16``, with ``fp32``
    for the scale of rounding."""
    bf16, low = curves["bf16"], curves[candidate]
    ratio = (relative_difference(low, bf16)[:first].mean()
             / max(relative_difference(bf16, curves["fp32"])[:first].mean(), 1e-12))
    end_bf16, end_low = float(bf16[-window:].mean()), float(low[-window:].mean())
    end_diff = abs(end_low - end_bf16) / abs(end_bf16)
    noise = float(np.diff(bf16[-window:]).std() / math.sqrt(2) / abs(end_bf16)) if window > 2 else None
    checks = {"finite": bool(all(np.isfinite(curves[k]).all() for k in ("bf16", candidate, "fp32"))),
              "early_ratio_ok": bool(ratio <= max_ratio), "end_ok": bool(end_diff <= MAX_END_DIFF)}
    return {"early_ratio": float(ratio), "end_mean_loss_bf16": end_bf16, f"end_mean_loss_{candidate}": end_low,
            "end_rel_diff": end_diff, "loss_noise": noise, "window": window, "checks": checks,
            "within_tolerance": all(checks.values()),
            "tolerance": {"max_ratio": max_ratio, "first_steps": first, "max_end_rel_diff": MAX_END_DIFF}}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks {COMMAND}", description=__doc__.split("\n")[0])
    p.add_argument("--size", default="650M", choices=list(models.ESM2_FAMILY), help="ESM-2 shape (random weights)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated runs, bf16 among them: {', '.join(RUNS)}")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps of every run but fp32")
    p.add_argument("--fp32-steps", type=int, default=20, help="optimizer steps of the fp32 run (the first ones)")
    p.add_argument("--warmup", type=int, default=10, help="learning-rate warm-up steps (then constant)")
    p.add_argument("--window", type=int, default=50, help="last steps whose mean loss is compared")
    p.add_argument("--token-budget", type=int, default=16384, help="tokens per step (packed rows)")
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--chains", type=int, help="FLIP training chains to sample (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="results folder (default book/results/gpu; smoke: _build/benchmarks-smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU, in seconds (for tests)")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.fp32_steps, args.warmup, args.window = 6, 3, 1, 3
        args.token_budget, args.chains = 1024, args.chains or 64
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    if "bf16" not in wanted or set(wanted) - set(RUNS):
        p.error(f"--runs {args.runs!r}: choose among {', '.join(RUNS)}, bf16 (the reference) included")
    args.runs = [r for r in RUNS if r in wanted]
    if not 0 <= args.warmup < args.fp32_steps <= args.steps or not 1 <= args.window <= args.steps:
        p.error(f"need 0 <= --warmup ({args.warmup}) < --fp32-steps ({args.fp32_steps}) <= --steps ({args.steps}) "
                f"and 1 <= --window ({args.window}) <= --steps")
    return args


def _backend(precision: str, smoke: bool) -> str | None:
    """The fast path's compilation, except for fp32: fp32 attention on packed rows runs one SDPA call per chain
    (FlashAttention takes only 16-bit inputs), and each new chain length would recompile the static-shape layer."""
    return None if precision == "fp32" else "aot_eager" if smoke else "inductor"


def run(name: str, steps: int, chains: list[dict], args: argparse.Namespace, device: torch.device) -> dict:
    """Train the LoRA model from its seeded initial weights as run ``name`` says; the record's measured fields."""
    precision, layer = RUNS[name]
    config = models.tiny_esm2_config() if args.smoke else models.esm2_config(args.size)
    model = models.random_esm2(config, task="token", num_labels=3, seed=args.seed, device=device)
    model = lora.prepare_model(model, "lora", lora.esm2_lora_config(r=8, fused=layer == "fused"))
    with tempfile.TemporaryDirectory() as tmp:
        settings = train.TrainConfig(
            output_dir=tmp, max_steps=steps, learning_rate=args.learning_rate, warmup_steps=args.warmup,
            schedule="constant", token_budget=args.token_budget, min_token_budget=min(1024, args.token_budget),
            eval_every=None, save_every=None, progress=False, device=device.type, seed=args.seed,
            precision=precision, batching="packed", compile=_backend(precision, args.smoke))
        history = train.train(model, chains, None, settings).history
    speed = steady_steps(history, min(args.warmup, steps - 1))
    return {"loss_curve": [float(x) for x in history["loss"]], "fp8_layers": len(fp8.fp8_linears(model)),
            **{k: speed[k] for k in ("tokens_per_s", "step_s", "first_step_s", "tokens_per_step")}}


def _summary(r: dict) -> str:
    versus = f", vs bf16: mean {r['mean_rel_diff']:.2e}, max {r['max_rel_diff']:.2e}" if "mean_rel_diff" in r else ""
    verdict_text = f", within tolerance: {r['within_tolerance']}" if "within_tolerance" in r else ""
    return (f"{len(r['loss_curve'])} steps, loss {r['loss_curve'][0]:.4f} -> {r['loss_curve'][-1]:.4f}, "
            f"{r['tokens_per_s']:,.0f} tokens/s, {r['fp8_layers']} FP8 layers{versus}{verdict_text}")


def main(argv: list[str] | None = None) -> list[dict]:
    """Train the runs, compare their loss curves, write the results file, return the records."""
    args = parse_args(list(argv or []))
    device = pick_device(args.smoke, COMMAND)
    results, records = ResultsFile(COMMAND, args.out, args.smoke), {}
    with smoke_threads(args.smoke):
        flip = data.load_flip_secondary_structure("train", max_chains=args.chains, seed=args.seed)
        chains = data.secondary_structure_examples(flip, models.load_tokenizer(), as_dataset=False)
        model_name = "tiny" if args.smoke else args.size
        for name in args.runs:
            precision, layer = RUNS[name]
            steps = args.fp32_steps if precision == "fp32" else args.steps
            record = {"case": f"{model_name}-lora-{name}", "run": name, "model": model_name, "method": "lora",
                      "lora_r": 8, "lora_layer": layer, "precision": precision, "steps": steps,
                      "token_budget": args.token_budget, "learning_rate": args.learning_rate, "warmup": args.warmup,
                      "schedule": "constant", "data": "FLIP secondary structure", "chains": len(chains),
                      "seed": args.seed, "smoke": args.smoke}
            records[name] = run_case(record, lambda: _measure(name, steps, chains, args, device, records),
                                     device, _summary, COMMAND)
            _judge(records, args)
            results.write(list(records.values()))
    print(f"[{COMMAND}] wrote {results.path}", flush=True)
    return list(records.values())


def _measure(name: str, steps: int, chains: list[dict], args, device, records: dict) -> dict:
    """One run, compared with the bf16 run in ``records``."""
    measured = run(name, steps, chains, args, device)
    curves = {n: np.array(r["loss_curve"]) for n, r in records.items() if "loss_curve" in r}
    if name == "bf16" or "bf16" not in curves:
        return measured
    return measured | compare(np.array(measured["loss_curve"]), curves["bf16"], args.fp32_steps)


def _judge(records: dict, args) -> None:
    """Put the verdicts on the fp8 and bf16-peft records: ``None`` until the fp32 run is in, or where a run
    failed or FP8 was off."""
    curves = {n: np.array(r["loss_curve"]) for n, r in records.items() if "loss_curve" in r}
    for name, max_ratio in JUDGED.items():
        if name not in records or "error" in records[name]:
            continue
        judged = {"bf16", name, "fp32"} <= curves.keys() and (name != "fp8" or records[name].get("fp8_layers", 0) > 0)
        records[name] |= verdict(curves, args.fp32_steps, args.window, name, max_ratio) if judged else \
            {"within_tolerance": None}
