"""The training workload the ``train`` and ``train-dist`` benches measure: data, model, recipe, steps.

Random proteins with real length statistics, ESM-2 of a real shape with random weights (speed and memory
depend only on shapes), LoRA r=8 on query/key/value/dense for 3-class token classification, and one
optimizer step timed with the GPU synchronised around it. A :class:`Recipe` says which techniques a
path uses; :data:`PATHS` lists the paths in the order each adds one.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from bioft_tutorial import models, packing
from bioft_tutorial.distributed import DistInfo, all_reduce_sum, gradient_sync, token_loss
from bioft_tutorial.models import esm2_config, random_esm2, tiny_esm2_config

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


def make_batches(chains: list[dict], batching: str, tokens: int, n: int, seed: int = 0,
                 max_chains: int | None = None) -> list[dict]:
    """``n`` batches of one kind from ``chains`` (padded: ``collate_padded``; packed: one static row each).

    Packed rows all have ``tokens`` tokens and a ``cu_seq_lens`` of one size: ``max_chains + 1`` if given
    (padding chains included), else the smallest multiple of 8 that fits every row.
    """
    rng = np.random.default_rng(seed)
    lengths = [len(c["input_ids"]) for c in chains]
    if batching == "naive":
        return [packing.collate_padded(chains[2 * i:2 * i + 2], pad_to=packing.ESM2_MAX_TOKENS) for i in range(n)]
    if batching == "bucketed":
        groups = bucket_groups(lengths, tokens)
        rng.shuffle(groups)
        return [packing.collate_padded([chains[i] for i in g]) for g in groups[:n]]
    pad_chains = math.ceil(tokens / packing.ESM2_MAX_TOKENS)  # at most this many padding chains per row
    rows = packing.pack_rows(lengths, tokens, max_chains=(max_chains or tokens // 32) - pad_chains)
    used = lambda r: sum(lengths[i] for i in r)  # noqa: E731
    rows = sorted(rows[:-3] or rows, key=used, reverse=True)[:n]  # the fullest rows (the last ones are sparse)
    if max_chains is None:  # one cu_seq_lens size for all rows (static shapes), as small as they allow
        most = max(len(r) + math.ceil((tokens - used(r)) / packing.ESM2_MAX_TOKENS) for r in rows)
        max_chains = 8 * math.ceil(most / 8)
    return [packing.collate_packed([chains[i] for i in r], pad_to=tokens, max_chains=max_chains) for r in rows]


def static_max_chains(tokens: int) -> int:
    """A ``cu_seq_lens`` size that fits rows of ``tokens`` tokens of chains averaging >= 128 tokens, padding
    chains included (a multiple of 8), for batch sets built separately that must share one compiled graph."""
    return 8 * math.ceil((tokens // 128 + math.ceil(tokens / packing.ESM2_MAX_TOKENS)) / 8)


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
    """ESM-2 for token classification (3 classes), random weights: LoRA, all weights, or the head trainable.

    ``method="head"`` (only the classifier trains, gradients still flow through every layer once
    :func:`prepare_model` compiles it) is the floor a LoRA step cannot beat: the frozen model's forward
    and input-gradient passes, without any adapter.

    Frozen weights are built directly in bf16 on ``device`` when the recipe stores them in bf16 (a 15B
    model never exists in fp32); trainable weights (LoRA, the head) are fp32.
    """
    config = tiny_esm2_config() if size == "tiny" else esm2_config(size)
    dtype = torch.bfloat16 if recipe.frozen_bf16 and method in ("lora", "head") else torch.float32
    model = random_esm2(config, task="token", num_labels=3, dtype=dtype, device=device)
    if method == "head":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("classifier")
        model.enable_input_require_grads()  # the backward pass runs through every layer, as LoRA's does
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
        models.enable_activation_checkpointing(model)
    if recipe.compile:
        torch._dynamo.reset()  # a fresh cache per case, so each case's compile time is its own
        models.compile_layers(model)
    return backend


def matmul_params(size: str) -> int:
    """Weights that multiply every token (the encoder's linear layers): ``12 * hidden**2`` per layer."""
    config = tiny_esm2_config() if size == "tiny" else esm2_config(size)
    return 12 * config.hidden_size ** 2 * config.num_hidden_layers


def step_flops(size: str, method: str, stats: dict) -> float:
    """Useful FLOPs of one step: ``c * N`` per real token (c = 4 for LoRA: forward and input gradients; 6
    for full fine-tuning: plus weight gradients) plus attention, ``12 * L**2 * hidden`` per chain and layer."""
    config = tiny_esm2_config() if size == "tiny" else esm2_config(size)
    coef = 6 if method == "full" else 4
    return coef * matmul_params(size) * stats["real"] + 12 * stats["sq"] * config.hidden_size * config.num_hidden_layers


def peak_tflops(gpu: str) -> float | None:
    """Dense bf16 peak of the named GPU from :data:`PEAK_BF16_TFLOPS` (``None`` if unknown)."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in gpu:
            return PEAK_BF16_TFLOPS[key]
    return None


# ------------------------------------------------------------------------------------------------ steps
def sync(device: torch.device) -> None:
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
        sync(info.device)
        start = time.perf_counter()
        loss_sum = train_step(model, optimizer, micro, n, autocast, info)
        sync(info.device)
        times.append(time.perf_counter() - start)
        losses.append(float(all_reduce_sum(loss_sum, info)) / n)
    return times, losses


# ------------------------------------------------------------------------------------------------ cases
def memory_stats(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"peak_mem_gib": None, "peak_reserved_gib": None}
    return {"peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2)}


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
