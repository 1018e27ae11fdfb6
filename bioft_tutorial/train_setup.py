"""What a training run needs around its step: settings, loop state, data checks, setup, batches, best weights.

:mod:`bioft_tutorial.train` holds the step and the loop; this module holds the rest, so that the loop reads
top to bottom: :class:`TrainConfig` (validated settings), :class:`LoopState` (what a checkpoint stores
about the loop), :func:`check_data` (the data against the model, before any work), :func:`setup` (device,
precision, batching, compilation, optimizer, schedule, DDP), :func:`next_batches` (the step's batches of
the epoch's plan). :mod:`bioft_tutorial.best_weights` evaluates and keeps the best weights.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from bioft_tutorial import distributed, fp8, models, packing
from bioft_tutorial.attention import BACKENDS, enable_packed_attention
from bioft_tutorial.data import IGNORE_INDEX, Examples, collate_padded, token_budget_batches

log = logging.getLogger("bioft_tutorial.train")
_CHOICES = {"schedule": ("cosine", "linear", "constant"), "precision": ("auto", "bf16", "fp32", "fp8"),
            "batching": ("padded", "packed"), "attention": BACKENDS, "parallel": ("ddp", "fsdp2"),
            "device": ("auto", "cpu", "cuda"),
            "best_metric": (None, "loss", "accuracy", "spearman"),
            "compile_mode": (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")}


@dataclass
class TrainConfig:
    """Every knob of a run; a bad value raises ``ValueError`` naming the field and the fix.

    Steps are optimizer steps. ``token_budget`` caps the tokens of one forward pass (padding included);
    an optimizer step sees ``grad_accum_steps x world_size`` such batches. ``batching="padded"`` pads each
    batch to its longest chain; ``"packed"`` concatenates chains with no padding (:mod:`bioft_tutorial.packing`,
    per-token tasks only). ``eval_every`` / ``save_every`` of ``None`` never evaluate / never write a
    training-state checkpoint. The best weights are kept in host memory and written to ``best/`` with each
    checkpoint and at the end; ``keep_checkpoints`` training states are kept besides them.
    """

    output_dir: str = "runs/train"
    max_steps: int = 1000
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    schedule: str = "cosine"  # decay after warm-up: "cosine", "linear" or "constant"
    token_budget: int = 16384
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    eval_every: int | None = 250
    save_every: int | None = 250
    keep_checkpoints: int = 1  # training states kept besides best/ (full fine-tuning of 650M: 7.8 GB each)
    save_best: bool = True  # write the best weights to best/; False keeps them in host memory only
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    best_metric: str | None = None  # None: "accuracy" (classification) or "spearman" (regression)
    load_best_at_end: bool = True
    precision: str = "auto"  # "auto": bf16 autocast on a GPU, fp32 on a CPU; "fp8": bf16 + FP8 frozen linears (fp8.py)
    device: str = "auto"  # "auto" (the GPU of this rank if there is one), "cpu" or "cuda"
    batching: str = "padded"  # "padded" or "packed" (no padding, variable-length attention)
    attention: str = "auto"  # packed rows' kernel: "auto" (PyTorch's varlen), "varlen", "fa4" (flash-attn-4), "sdpa"
    parallel: str = "ddp"  # under torchrun: "ddp" or "fsdp2" (bioft_tutorial.distributed)
    min_token_budget: int = 1024  # floor of the out-of-memory back-off
    seed: int = 0
    resume: bool = False
    progress: bool = True
    compile: str | Callable | None = None  # None, or a torch.compile backend ("inductor"): each layer, static shapes
    compile_mode: str | None = None  # torch.compile's mode; "reduce-overhead" replays each layer as a CUDA graph
    checkpointing: bool = False  # activation checkpointing: recompute layers in the backward pass

    def __post_init__(self) -> None:
        for name in ("max_steps", "token_budget", "grad_accum_steps", "min_token_budget", "keep_checkpoints",
                     "eval_every", "save_every", "early_stopping_patience"):
            value = getattr(self, name)
            optional = name in ("eval_every", "save_every", "early_stopping_patience")
            if not (value is None and optional) and (isinstance(value, bool) or not isinstance(value, int)
                                                     or value < 1):
                raise ValueError(f"TrainConfig.{name}={value!r} must be an integer >= 1"
                                 + (" or None (never)" if optional else ""))
        for name in ("learning_rate", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"TrainConfig.{name}={value!r} must be a number, not {type(value).__name__} "
                                 f"(a YAML '1e-3' is read as text: write 1.0e-3 or convert with float())")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"TrainConfig.learning_rate={self.learning_rate!r} must be > 0 (e.g. 5e-4 for LoRA)")
        if not 0 <= self.warmup_steps < self.max_steps:
            raise ValueError(f"TrainConfig.warmup_steps={self.warmup_steps} must be >= 0 and < max_steps={self.max_steps}")
        if self.min_token_budget > self.token_budget:
            raise ValueError(f"TrainConfig.min_token_budget={self.min_token_budget} exceeds token_budget="
                             f"{self.token_budget}; lower it (it is the floor of the out-of-memory back-off)")
        if self.weight_decay < 0 or (self.max_grad_norm is not None and self.max_grad_norm <= 0):
            raise ValueError(f"need weight_decay >= 0 and max_grad_norm > 0 or None (got {self.weight_decay}, "
                             f"{self.max_grad_norm})")
        if self.compile is not None and self.batching != "packed":
            raise ValueError(f"TrainConfig.compile={self.compile!r} needs batching='packed' (rows of a few fixed "
                             f"sizes, so the compiled graph is reused); got batching={self.batching!r}")
        if self.compile_mode is not None and self.compile is None:
            raise ValueError(f"TrainConfig.compile_mode={self.compile_mode!r} needs compile='inductor'")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}; use one of {allowed}")
        if self.attention != "auto" and self.batching != "packed":
            raise ValueError(f"TrainConfig.attention={self.attention!r} chooses the kernel of packed rows; set "
                             f"batching='packed' (padded batches use the model's own attention)")


@dataclass
class LoopState:
    """Where the loop is: stored in every checkpoint, so that ``resume=True`` continues exactly."""

    token_budget: int
    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of this epoch's plan already taken
    best: float | None = None  # best evaluation so far, stored so that lower is better
    best_step: int | None = None
    bad_evals: int = 0
    stopped: str = "max_steps"  # or "early_stopping"


def lr_factor(step: int, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warm-up to 1, then decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}[schedule]


# ------------------------------------------------------------------------------------------------ checks
def check_data(model: torch.nn.Module, train_set: Examples, eval_set: Examples | None, config: TrainConfig) -> None:
    """Fail early, with the fix, when the data cannot train this model; warn when evaluation cannot rank runs."""
    if len(train_set) == 0:
        raise ValueError("train_data is empty: there is nothing to train on; check the filter or split that made it")
    for examples in (train_set, eval_set):
        if examples is not None:
            _check_labels(model, examples)
    token_budget_batches(train_set.lengths, config.token_budget)  # an example longer than the budget fails here
    if config.best_metric == "spearman" and not train_set.regression:
        raise ValueError("best_metric='spearman' needs float targets (regression); use 'accuracy' or 'loss'")
    if eval_set is not None and eval_set.regression and (len(eval_set) < 3 or np.ptp(eval_set.labels_array()) == 0):
        log.warning("eval_data has %d examples with %s targets: its Spearman correlation is undefined (NaN), so no "
                    "evaluation can become the best; use a larger validation set", len(eval_set),
                    "constant" if len(eval_set) >= 3 else "too few")


def _check_labels(model: torch.nn.Module, examples: Examples) -> None:
    if not examples.has_labels:
        raise ValueError(f"{examples.name} has no 'labels'; give a label per token or a value per sequence")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kind, num_labels = type(base).__name__, getattr(getattr(base, "config", None), "num_labels", None)
    if "TokenClassification" in kind and not examples.per_token:
        raise ValueError(f"{examples.name} has one label per sequence but {kind} predicts one per token: load the "
                         "model with task='sequence', or give per-token labels (data.secondary_structure_examples)")
    if "SequenceClassification" in kind and examples.per_token:
        raise ValueError(f"{examples.name} has one label per token but {kind} predicts one per sequence: load the "
                         "model with task='token', or give one value per sequence")
    if num_labels is None:
        return
    values = examples.labels_array()
    if examples.regression and num_labels != 1:
        raise ValueError(f"{examples.name} has float targets (regression) but the model has num_labels={num_labels}; "
                         "load it with num_labels=1, or give integer class ids")
    if not examples.regression:
        wrong = values[(values != IGNORE_INDEX) & ((values < 0) | (values >= max(num_labels, 2)))]
        if num_labels == 1 or wrong.size:
            raise ValueError(f"{examples.name} has integer labels (e.g. {int(wrong[0] if wrong.size else values[0])}) "
                             f"that a model with num_labels={num_labels} cannot predict: for regression give float "
                             "targets and num_labels=1; for classes give ids 0..num_labels-1 and set num_labels")


# ------------------------------------------------------------------------------------------------- setup
@dataclass
class Run:
    """What one run holds besides its config: the model (and its DDP wrapper), the optimizer, where it runs."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    bf16: bool
    rank: int
    world: int
    collate: Callable[[list[dict]], dict]
    padded: bool
    config: TrainConfig
    max_examples: int | None = None  # per batch (packed rows: see packing.chains_per_row)
    plans: dict = field(default_factory=dict)

    def oom_floor(self, planned: list[list[int]], examples: Examples) -> int:
        """The smallest token budget worth trying: one example must fit. Under torchrun, no back-off at all."""
        if self.world > 1:
            return self.config.token_budget + 1
        return max(self.config.min_token_budget, int(max(examples.lengths[b].max() for b in planned)))

    @property
    def oom_advice(self) -> str:
        if self.world > 1:
            return "under torchrun one process cannot retry alone: lower token_budget on every process"
        return "use LoRA instead of full fine-tuning, a smaller model, shorter crops or a GPU with more memory"


def setup(model: torch.nn.Module, config: TrainConfig, train_set: Examples, eval_set: Examples | None) -> Run:
    """Device, precision, batching, compilation, optimizer, schedule and (under ``torchrun``) DDP or FSDP2."""
    info = distributed.init_distributed(None if config.device == "auto" else config.device)
    bf16 = config.precision == "bf16" or (config.precision in ("auto", "fp8") and info.device.type == "cuda")
    if config.compile is not None and info.device.type == "cuda" and not bf16:
        raise ValueError("compile with packed rows runs on a GPU in bf16 only: fp32 attention goes chain by chain, "
                         "and the compiled layer would recompile for every chain length. Use precision='bf16' "
                         "(or 'auto'), or compile=None for an fp32 reference run")
    if config.checkpointing:
        models.enable_activation_checkpointing(model)
    model = model.to(info.device)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters; prepare it with lora.prepare_model(model, method)")
    if bf16:
        models.cast_frozen(model, torch.bfloat16)
    if config.precision == "fp8":  # FP8 products for the frozen encoder linears; a warning where FP8 is missing
        fp8.enable_fp8(model, info.device)
    pad_id = getattr(getattr(model, "config", None), "pad_token_id", None)
    pad_id = 1 if pad_id is None else pad_id
    collate, max_examples = (lambda examples: collate_padded(examples, pad_id)), None  # noqa: E731
    if config.batching == "packed":
        enable_packed_attention(model, backend=config.attention)
        max_examples = packing.chains_per_row(config.token_budget)
        collate = (packing.static_collate(config.token_budget, max_examples, pad_id) if config.compile is not None
                   else lambda examples: packing.collate_packed(examples, pad_token_id=pad_id))
    if config.compile is not None:
        models.compile_layers(model, backend=config.compile, mode=config.compile_mode)
    torch.manual_seed(config.seed)  # dropout (e.g. LoRA's) draws from here
    net = distributed.wrap_model(model, info, config.parallel,  # FSDP2 replaces the parameters: wrap first
                                 param_dtype=torch.bfloat16 if bf16 and config.parallel == "fsdp2" else None)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # no decay on biases, norms
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)  # one kernel; skips on found_inf
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, config.max_steps, config.schedule))
    return Run(model, net, optimizer, scheduler, info.device, bf16, info.rank, info.world_size, collate,
               config.batching == "padded", config, max_examples)


# ----------------------------------------------------------------------------------------------- batches
def next_batches(run: Run, examples: Examples, state: LoopState, config: TrainConfig) -> list[list[int]]:
    """The next ``grad_accum_steps x world`` batches of this epoch's plan (a new epoch when too few are left).
    An epoch's plan depends only on the seed and the epoch, so a resumed run sees the same batches."""
    need = config.grad_accum_steps * run.world

    def plan(epoch: int) -> list[list[int]]:
        if epoch not in run.plans:
            run.plans = {epoch: token_budget_batches(examples.lengths, config.token_budget, padded=run.padded,
                                                     seed=config.seed * 100_003 + epoch,
                                                     max_examples=run.max_examples)}
        return run.plans[epoch]

    if state.position + need > len(plan(state.epoch)):
        state.epoch, state.position = state.epoch + 1, 0
        if need > len(plan(state.epoch)):
            raise ValueError(
                f"one optimizer step needs {need} batches (grad_accum_steps={config.grad_accum_steps} x {run.world} "
                f"processes) but train_data ({len(examples)} examples, {int(examples.lengths.sum()):,} tokens) "
                f"makes only {len(plan(state.epoch))} at token_budget={config.token_budget}: lower "
                "grad_accum_steps or token_budget, or train on more examples")
    state.position += need
    return plan(state.epoch)[state.position - need: state.position]


def split_batch(batch: list[int], examples: Examples, budget: int, run: Run) -> list[list[int]]:
    """Cut one planned batch into pieces that cost at most ``budget`` tokens (only after an OOM back-off)."""
    lengths = examples.lengths[batch]
    if (len(batch) * lengths.max() if run.padded else lengths.sum()) <= budget:
        return [batch]  # every step without a back-off: no per-chain loop on the way to the GPU
    pieces, current = [], []
    for i in batch:
        trial = current + [i]
        lengths = examples.lengths[trial]
        if current and (len(trial) * lengths.max() if run.padded else lengths.sum()) > budget:
            pieces.append(current)
            trial = [i]
        current = trial
    return pieces + [current]
