"""``python -m bioft_tutorial.bench train``: LoRA training throughput and memory of ESM-2, path by path.

Each case trains ESM-2 of the real shape (random weights: speed and memory depend only on shapes) on
random proteins whose lengths are drawn like real ones (log-normal, median 300 residues, capped at
1,022), token classification with 3 classes, LoRA r=8 on query/key/value/dense. Paths, each adding one
technique to the one before (:data:`PATHS`):

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
import gc
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bioft_tutorial import packing
from bioft_tutorial.bench.results import write_results
from bioft_tutorial.distributed import DistInfo, all_reduce_sum, gradient_sync, token_loss
from bioft_tutorial.models import esm2_config, random_esm2, tiny_esm2_config

log = logging.getLogger(__name__)
AMINO_ACID_IDS = range(4, 24)  # the 20 standard residues in the ESM-2 vocabulary
CLS, PAD, EOS = 0, 1, 2
#: Dense bf16 peak of the tensor cores, TFLOP/s (vendor data sheets), matched on the device name.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4,
                    "B200": 2250.0, "A100": 312.0, "L40S": 362.1, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.2}


@dataclass(frozen=True)
class Recipe:
    """The techniques a path uses."""

    frozen_bf16: bool  # frozen weights stored in bf16 (trainable ones stay fp32)
    autocast: bool  # bf16 autocast around the forward pass
    batching: str  # "naive" (pad to 1,024, 2 chains), "bucketed" (padded, token budget), "packed"
    compile: bool  # torch.compile of each EsmLayer (one graph, reused by every layer), static shapes
    fused_adamw: bool


PATHS = {
    "naive": Recipe(False, False, "naive", False, False),
    "bf16": Recipe(False, True, "bucketed", False, False),
    "bf16-base": Recipe(True, True, "bucketed", False, False),
    "packed": Recipe(True, True, "packed", False, False),
    "package": Recipe(True, True, "packed", True, True),
}


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
    group: str = "headline"  # "headline" (the targets) or "family" (the other sizes)

    @property
    def name(self) -> str:
        """``<model>[-full]-<path>[-<tag>]``, e.g. ``650M-package``, ``650M-full-naive``, ``3B-package-nockpt``."""
        parts = [self.model, "full" if self.method == "full" else "", self.path, self.tag]
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
    return head + family


#: Every case, in the order they run (highest priority first).
CASES: list[Case] = _cases()
#: ``--smoke`` runs one case per recipe (all on the tiny model).
SMOKE_CASES = ("650M-naive,650M-package,3B-package,650M-numerics,650M-bf16,650M-bf16-base,650M-packed,"
               "650M-full-naive,650M-full-package")


# ------------------------------------------------------------------------------------------------ data
def protein_lengths(n: int, seed: int = 0, median: float = 300.0, sigma: float = 0.6, cap: int = 1022,
                    minimum: int = 30) -> np.ndarray:
    """Residues per chain, log-normal around ``median`` and capped like ESM-2's input (``(n,)`` int)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), minimum, cap).astype(int)


def random_chains(lengths: np.ndarray, seed: int = 0, num_labels: int = 3) -> list[dict]:
    """Tokenized random proteins with per-residue labels (-100 on <cls>/<eos> and 5% "unresolved")."""
    rng = np.random.default_rng(seed + 1)
    chains = []
    for n in lengths:
        labels = rng.integers(0, num_labels, n)
        labels[rng.random(n) < 0.05] = -100
        chains.append({"input_ids": [CLS, *rng.choice(AMINO_ACID_IDS, n).tolist(), EOS],
                       "labels": [-100, *labels.tolist(), -100]})
    return chains


def make_batches(chains: list[dict], batching: str, tokens: int, n: int, seed: int = 0) -> list[dict]:
    """``n`` batches of one kind from ``chains`` (padded: ``collate_padded``; packed: one static row each)."""
    rng = np.random.default_rng(seed)
    lengths = [len(c["input_ids"]) for c in chains]
    if batching == "naive":
        return [packing.collate_padded(chains[2 * i:2 * i + 2], pad_to=packing.ESM2_MAX_TOKENS) for i in range(n)]
    if batching == "bucketed":
        groups = bucket_groups(lengths, tokens)
        rng.shuffle(groups)
        return [packing.collate_padded([chains[i] for i in g]) for g in groups[:n]]
    rows = packing.pack_rows(lengths, tokens, max_chains=tokens // 64)
    used = lambda r: sum(lengths[i] for i in r)  # noqa: E731
    rows = sorted(rows[:-3] or rows, key=used, reverse=True)[:n]  # the fullest rows (the last ones are sparse)
    # one cu_seq_lens size for all of them (static shapes): the most chains of a row, padding chains included
    most = max(len(r) + math.ceil((tokens - used(r)) / packing.ESM2_MAX_TOKENS) for r in rows)
    return [packing.collate_packed([chains[i] for i in r], pad_to=tokens, max_chains=8 * math.ceil(most / 8))
            for r in rows]


def bucket_groups(lengths: list[int] | np.ndarray, tokens: int) -> list[list[int]]:
    """Length buckets: chains sorted by length, cut where the padded batch (chains x longest) would pass
    ``tokens``. Returns lists of indices into ``lengths``, shortest chains first."""
    groups, current = [], []
    for i in np.argsort(lengths, kind="stable"):
        if current and (len(current) + 1) * lengths[i] > tokens:
            groups.append(current)
            current = []
        current.append(int(i))
    return groups + [current] if current else groups


def batch_stats(batch: dict) -> dict:
    """Real (non-padding) tokens, all tokens, and the sum of squared chain lengths (for attention FLOPs)."""
    ids = batch["input_ids"]
    if "cu_seq_lens_q" in batch:
        lens = [len(c) for c in packing.unpack(ids, batch["cu_seq_lens_q"]) if c[0].item() != PAD]
    else:
        lens = batch["attention_mask"].sum(-1).tolist()
    return {"real": int(sum(lens)), "total": int(ids.numel()), "sq": float(sum(n * n for n in lens)),
            "labelled": int((batch["labels"] != -100).sum())}


# ----------------------------------------------------------------------------------------------- model
def build_model(size: str, method: str, recipe: Recipe, device: torch.device, lora_r: int = 8) -> torch.nn.Module:
    """ESM-2 for token classification (3 classes), random weights, LoRA or all weights trainable.

    Frozen weights are built directly in bf16 on ``device`` when the recipe stores them in bf16 (a 15B
    model never exists in fp32); trainable weights (LoRA, the head) are fp32.
    """
    config = tiny_esm2_config() if size == "tiny" else esm2_config(size)
    dtype = torch.bfloat16 if recipe.frozen_bf16 and method == "lora" else torch.float32
    model = random_esm2(config, task="token", num_labels=3, dtype=dtype, device=device)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                                                 target_modules=["query", "key", "value", "dense"],
                                                 modules_to_save=["classifier"]))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model.train()


def prepare_model(model: torch.nn.Module, recipe: Recipe, checkpointing: bool) -> str:
    """Apply the recipe's model-side techniques; returns the attention backend (``"varlen"``/``"sdpa"``)."""
    backend = packing.enable_packed_attention(model) if recipe.batching == "packed" else "sdpa"
    if checkpointing:  # recompute each layer in the backward pass instead of keeping its activations
        model.config.use_cache = False  # an encoder has no cache; avoids a warning (and a graph break) per layer
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if recipe.compile:
        torch._dynamo.reset()
        model.enable_input_require_grads()  # layer 0's input then needs grad like the others: one graph
        for m in model.modules():
            if type(m).__name__ == "EsmLayer":
                m.compile(dynamic=False)
    return backend


def matmul_params(size: str) -> int:
    """Weights that multiply every token (the encoder's linear layers): ``12 * hidden**2`` per layer."""
    config = tiny_esm2_config() if size == "tiny" else esm2_config(size)
    return 12 * config.hidden_size ** 2 * config.num_hidden_layers


def step_flops(size: str, method: str, stats: dict) -> float:
    """Useful FLOPs of one step: ``c * N`` per real token (c = 4 for LoRA: forward and input gradients; 6
    for full fine-tuning: plus weight gradients) plus attention, ``12 * L**2 * hidden`` per chain and layer."""
    config = tiny_esm2_config() if size == "tiny" else esm2_config(size)
    coef = 4 if method == "lora" else 6
    return coef * matmul_params(size) * stats["real"] + 12 * stats["sq"] * config.hidden_size * config.num_hidden_layers


def peak_tflops(gpu: str) -> float | None:
    """Dense bf16 peak of the named GPU from :data:`PEAK_BF16_TFLOPS` (``None`` if unknown)."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in gpu:
            return PEAK_BF16_TFLOPS[key]
    return None


# ------------------------------------------------------------------------------------------------ steps
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list[dict],
               n_labelled: int, autocast: bool, info: DistInfo) -> torch.Tensor:
    """One optimizer step over ``micro_batches`` (this process's rows of the global batch).

    Args:
        n_labelled: labelled tokens of the whole global batch (every process, every micro-batch).

    Returns:
        This process's summed cross-entropy over its labelled tokens (nats; a tensor, not synchronised).
    """
    total = torch.zeros((), device=info.device)
    for i, batch in enumerate(micro_batches):
        batch = packing.move_batch(batch, info.device)
        labels = batch.pop("labels")
        with gradient_sync(model, i == len(micro_batches) - 1), \
                torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = token_loss(model(**batch).logits, labels, n_labelled, info)
            loss.backward()
        total += loss.detach() * (n_labelled / info.world_size)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def timed_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: list[list[dict]],
                autocast: bool, info: DistInfo) -> tuple[list[float], list[float]]:
    """Run steps (each a list of micro-batches), synchronising around each: ``(seconds, loss per token)``."""
    times, losses = [], []
    for micro in steps:
        n = int(all_reduce_sum(sum(int((b["labels"] != -100).sum()) for b in micro), info))
        _sync(info.device)
        start = time.perf_counter()
        loss_sum = train_step(model, optimizer, micro, n, autocast, info)
        _sync(info.device)
        times.append(time.perf_counter() - start)
        losses.append(float(all_reduce_sum(loss_sum, info)) / n)
    return times, losses


# ------------------------------------------------------------------------------------------------ cases
def _memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"peak_mem_gib": None, "peak_reserved_gib": None}
    return {"peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2)}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _chains_for(case: Case, smoke: bool, seed: int) -> list[dict]:
    """Enough random chains for the case's batches."""
    median, cap = (40, 200) if smoke else (300, 1022)
    n = 2 * (case.steps + case.warmup) if case.path == "naive" else (case.steps + case.warmup + 4) * case.tokens // median
    return random_chains(protein_lengths(max(n, 16), seed, median=median, cap=cap), seed)


def run_case(case: Case, device: torch.device, smoke: bool = False, seed: int = 0) -> dict:
    """Measure one case (see the module docstring); returns its record (without the environment fields)."""
    recipe = PATHS[case.path]
    if smoke:  # CPU: fp32 (bf16 kernels are slow on most CPUs), no compile; this checks the code, not speed
        recipe = replace(recipe, frozen_bf16=False, autocast=False, compile=False)
    size = "tiny" if smoke else case.model
    chains = _chains_for(case, smoke, seed)
    batches = make_batches(chains, recipe.batching, case.tokens, case.warmup + case.steps, seed)
    start = time.perf_counter()
    model = build_model(size, case.method, recipe, device)
    _sync(device)
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
        "tokens_per_step": round(real / len(timed), 1), "pad_fraction": round(1 - real / sum(s["total"] for s in stats), 4),
        **_memory(device), "mfu": round(flops / seconds / (peak * 1e12), 4) if peak else None,
        "model_tflops_per_s": round(flops / seconds / 1e12, 2), "peak_tflops": peak,
        "compile_s": round(times[0] - steady, 1) if recipe.compile else None, "first_step_s": round(times[0], 2),
        "build_s": round(build_s, 1), "attention_backend": backend, "rows_per_step": len(batches[0]["input_ids"]),
        "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
        "trainable_params": sum(p.numel() for p in trainable), "total_params": sum(p.numel() for p in model.parameters()),
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
        return (f"[train] {r['case']:<22} rel. diff vs fp32 padded: loss packed-bf16 {r['loss_rel_diff_packed_bf16']:.2e}, "
                f"grads packed-bf16 {r['grad_rel_diff_packed_bf16']:.2e} (padded-bf16 {r['grad_rel_diff_padded_bf16']:.2e}), "
                f"packed-fp32 {r['grad_rel_diff_packed_fp32']:.1e}")
    mem = f"{r['peak_mem_gib']:.1f} GiB" if r.get("peak_mem_gib") is not None else "-"
    extra = f", compile {r['compile_s']:.0f} s" if r.get("compile_s") is not None else ""
    return (f"[train] {r['case']:<22} {r['tokens_per_s']:>10,.0f} tokens/s  step {r['step_s']:.3f} s  "
            f"pad {r['pad_fraction']:.0%}  peak {mem}  MFU {r['mfu'] if r['mfu'] is not None else '-'}{extra}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bioft_tutorial.bench train", description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="headline",
                    help="comma-separated globs over case names, or groups: headline (default), family, all (see --list)")
    ap.add_argument("--model", default="all", help="only cases of this ESM-2 size, e.g. 650M")
    ap.add_argument("--method", default="all", choices=["all", "lora", "full"])
    ap.add_argument("--budget-s", type=float, default=330.0, help="skip cases that would end past this, seconds")
    ap.add_argument("--steps", type=int, help="timed steps per case (default: the case's)")
    ap.add_argument("--warmup", type=int, help="warm-up steps per case, compile included (default: the case's)")
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
                       warmup=args.warmup if args.warmup is not None else case.warmup)
        recipe = PATHS.get(case.path)
        record = {"case": case.name, "model": "tiny" if args.smoke else case.model, "method": case.method,
                  "path": case.path, "token_budget": None if case.path in ("naive", "numerics") else case.tokens,
                  "checkpointing": case.checkpointing, "steps": case.steps, "warmup": case.warmup,
                  "recipe": asdict(recipe) if recipe else None, "lora_r": 8 if case.method == "lora" else None,
                  "smoke": args.smoke}
        elapsed = time.perf_counter() - start
        if not args.smoke and elapsed + case.est_s > args.budget_s:
            record["skipped"] = f"time budget: {elapsed:.0f} s spent, case needs ~{case.est_s:.0f} s of {args.budget_s:.0f} s"
        else:
            _free(device)
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
            _free(device)
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
