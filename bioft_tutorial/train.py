"""The book's training loop: explicit, readable, resumable, and the same on one CPU or under ``torchrun``.

One optimizer step, in order (:func:`train`):

1. take the next ``grad_accum_steps x world_size`` length-bucketed batches of the epoch's plan (each
   costs at most ``token_budget`` tokens, padding included); rank ``r`` takes every ``world_size``-th;
2. for each batch, ``logits = model(**batch)``: the collated dict goes to the model as it is, so a packed
   batch's extra keys (``position_ids``, ``cu_seq_lens_q``...) reach the attention. The loss is the
   *summed* loss divided by the labelled targets of the whole step on all ranks, so the gradient is the
   same whatever the batch split, accumulation or number of GPUs;
3. clip the gradient norm, AdamW step, warm-up + decay schedule;
4. every ``eval_every`` steps evaluate, keep the best weights and maybe stop early; every ``save_every``
   steps write a checkpoint (:mod:`bioft_tutorial.checkpoint`) that ``resume=True`` continues exactly.

Under ``torchrun`` the same call trains on every process: :mod:`bioft_tutorial.distributed` joins the
process group and wraps the model (DDP, or FSDP2 with ``parallel="fsdp2"``); only rank 0 writes files.
On a GPU the step runs under bf16 autocast with the frozen weights stored in bf16 and the trainable ones in
fp32; on a CPU it runs in fp32. A CUDA out-of-memory error redoes the step with half the token budget
(down to ``min_token_budget``); a NaN or inf loss stops the run and names the step.
"""
from __future__ import annotations

import importlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm.std import tqdm

from bioft_tutorial import checkpoint as ckpt
from bioft_tutorial import distributed, models
from bioft_tutorial.data import collate_padded, token_budget_batches
from bioft_tutorial.predict import Examples, evaluate, loss_sum

log = logging.getLogger(__name__)
_CHOICES = {"schedule": ("cosine", "linear", "constant"), "precision": ("auto", "bf16", "fp32"),
            "batching": ("padded", "packed"), "parallel": ("ddp", "fsdp2"), "device": ("auto", "cpu", "cuda"),
            "best_metric": (None, "loss", "accuracy", "spearman")}


@dataclass
class TrainConfig:
    """Every knob of a run; a bad value raises ``ValueError`` naming the field and the fix.

    Steps are optimizer steps. ``token_budget`` caps the tokens of one forward pass (padding included);
    an optimizer step sees ``grad_accum_steps x world_size`` such batches. ``batching="padded"`` pads each
    batch to its longest chain (:func:`bioft_tutorial.data.collate_padded`); ``"packed"`` concatenates
    chains with no padding (:mod:`bioft_tutorial.packing`, token classification only) and costs batches
    by their real tokens.
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
    eval_every: int = 250
    save_every: int = 250
    keep_checkpoints: int = 2
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    best_metric: str | None = None  # None: "accuracy" (classification) or "spearman" (regression)
    load_best_at_end: bool = True
    precision: str = "auto"  # "auto": bf16 autocast on a GPU, fp32 on a CPU
    device: str = "auto"  # "auto" (the GPU of this rank if there is one), "cpu" or "cuda"
    batching: str = "padded"  # "padded" or "packed" (bioft_tutorial.packing: no padding, variable-length attention)
    parallel: str = "ddp"  # under torchrun: "ddp" or "fsdp2" (bioft_tutorial.distributed)
    min_token_budget: int = 1024  # floor of the out-of-memory back-off
    seed: int = 0
    resume: bool = False
    progress: bool = True
    compile: str | None = None  # None, or a torch.compile backend ("inductor"): each EsmLayer, static shapes
    checkpointing: bool = False  # activation checkpointing: recompute layers in the backward pass

    def __post_init__(self) -> None:
        for name in ("max_steps", "token_budget", "grad_accum_steps", "eval_every", "save_every", "min_token_budget"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} must be an integer >= 1")
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
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ValueError(f"TrainConfig.early_stopping_patience={self.early_stopping_patience} must be >= 1 or None")
        if self.compile is not None and self.batching != "packed":
            raise ValueError(f"TrainConfig.compile={self.compile!r} needs batching='packed' (rows of a few fixed "
                             f"sizes, so the compiled graph is reused); got batching={self.batching!r}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}; use one of {allowed}")


@dataclass
class TrainResult:
    """What :func:`train` returns. ``history``: one row per optimizer step, ``eval_*`` columns at eval steps."""

    history: pd.DataFrame
    metric: str
    best_metric: float | None
    best_step: int | None
    stopped: str  # "max_steps" or "early_stopping"
    output_dir: Path
    token_budget: int  # at the end: lower than configured after an out-of-memory back-off

    @property
    def tokens_per_s(self) -> float:
        """Median real (non-padding) training tokens per second over the run's steps."""
        return float(self.history["tokens_per_s"].median())


def lr_factor(step: int, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warm-up to 1, then decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}[schedule]


@dataclass
class _Run:
    """What one run holds besides the config: the model (and its DDP wrapper), the optimizer and where it runs."""

    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    bf16: bool
    rank: int
    world: int
    collate: Callable
    padded: bool
    plans: dict = field(default_factory=dict)


def train(model: torch.nn.Module, train_data, eval_data, config: TrainConfig,
          before_forward: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train the parameters of ``model`` that require a gradient (set them with ``lora.prepare_model``).

    Args:
        model: a Hugging Face model whose forward returns ``.logits`` (``EsmForTokenClassification``,
            ``EsmForSequenceClassification`` or a ``PeftModel`` of one). It is moved to the device and, in
            bf16, its frozen weights are stored in bf16 (in place).
        train_data, eval_data: ``datasets.Dataset`` or lists of dicts with ``input_ids`` (list of int) and
            ``labels`` (a list of int per token, ``-100`` = ignore, or one float per sequence); ``eval_data``
            may be ``None``.
        config: the run's settings; ``config.output_dir`` receives ``history.jsonl``, ``checkpoints/`` and
            ``best/`` (with ``best/adapter/`` for a PEFT model).
        before_forward: called as ``before_forward(step, batch)`` before each forward pass (1-based step); a
            hook to inject faults in tests, e.g. raise ``torch.cuda.OutOfMemoryError``.

    Returns:
        A :class:`TrainResult`; the model holds the best weights if ``config.load_best_at_end``.

    Raises:
        FloatingPointError: the loss or gradient norm became NaN or inf (the last checkpoint is kept).
        ValueError: bad data or settings (an example longer than the token budget, nothing to train).
    """
    run = _setup(model, config)
    train_set = Examples(train_data)
    eval_set = Examples(eval_data) if eval_data is not None else None
    token_budget_batches(train_set.lengths, config.token_budget, padded=run.padded)  # fails early on a long example
    if config.compile is not None:  # few row sizes, so the compiled layers are reused
        shortest = min(int(x.lengths.min()) for x in (train_set, eval_set) if x is not None)
        run.collate = importlib.import_module("bioft_tutorial.packing").static_collate(config.token_budget, shortest)
    out = Path(config.output_dir)
    state = dict(step=0, epoch=0, position=0, token_budget=config.token_budget, best=None, best_step=None, bad_evals=0)
    if config.resume:
        state = ckpt.load_training_state(out / "checkpoints", run.model, run.optimizer, run.scheduler) or state
        log.info("starting at step %d (resume=True)", state["step"])
    history = ckpt.History(out / "history.jsonl", keep_until=state["step"], write=run.rank == 0)
    metric = config.best_metric or ("spearman" if train_set.regression else "accuracy")
    bar = tqdm(total=config.max_steps, initial=state["step"], disable=not config.progress or run.rank != 0,
               desc="train", mininterval=1.0)
    stopped = "max_steps"
    while state["step"] < config.max_steps and stopped == "max_steps":
        started, step = time.perf_counter(), state["step"] + 1
        chunk = _next_chunk(run, train_set, state, config)
        loss, grad_norm = _step(run, train_set, chunk, state, config, step, before_forward)
        lr = run.scheduler.get_last_lr()[0]
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise FloatingPointError(
                f"training stopped at step {step}: loss {loss}, gradient norm {grad_norm}; the weights were not "
                f"updated. The last good checkpoint is {ckpt.latest_checkpoint(out / 'checkpoints') or 'none yet'}. "
                f"Lower learning_rate (now {config.learning_rate}) or look for bad values in the data, then rerun "
                "with resume=True")
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        state["step"] = step
        tokens = int(sum(train_set.lengths[b].sum() for b in chunk))  # real tokens, all ranks
        row = dict(step=step, epoch=state["epoch"], loss=loss, lr=lr, grad_norm=grad_norm, tokens=tokens,
                   tokens_per_s=tokens / (time.perf_counter() - started), token_budget=state["token_budget"])
        if eval_set is not None and (step % config.eval_every == 0 or step == config.max_steps):
            row.update(_evaluate_and_keep_best(run, eval_set, state, config, metric, out / "best"))
            if config.early_stopping_patience and state["bad_evals"] >= config.early_stopping_patience:
                stopped = "early_stopping"
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.1e}", refresh=False)
        if step % config.save_every == 0 or step == config.max_steps or stopped != "max_steps":
            ckpt.save_training_state(out / "checkpoints", run.model, run.optimizer, run.scheduler, state,
                                     asdict(config), keep=config.keep_checkpoints, write=run.rank == 0)
    bar.close()
    if run.world > 1:
        dist.barrier()
    if config.load_best_at_end and state["best_step"] is not None:
        ckpt.load_trainable(run.model, ckpt.load_checkpoint(out / "best")[0])
    best = None if state["best"] is None else (state["best"] if metric == "loss" else -state["best"])
    return TrainResult(pd.DataFrame(history.rows), metric, best, state["best_step"], stopped, out,
                       state["token_budget"])


def _setup(model: torch.nn.Module, config: TrainConfig) -> _Run:
    """Device, precision, batching plug-in, optimizer, schedule and (under ``torchrun``) DDP."""
    info = distributed.init_distributed(None if config.device == "auto" else config.device)  # torchrun-aware
    rank, world, device = info.rank, info.world_size, info.device
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    collate, prepare, padded = _batching(config.batching)
    if config.checkpointing:
        models.enable_activation_checkpointing(model)
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; prepare it with lora.prepare_model(model, method)")
    if bf16:  # frozen weights stored in bf16, trainable ones in fp32 (what lora.cast_frozen does)
        for p in model.parameters():
            if p.is_floating_point():
                p.data = p.data.to(torch.float32 if p.requires_grad else torch.bfloat16)
    model = prepare(model)
    if config.compile is not None:
        models.compile_layers(model, backend=config.compile)
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # no decay on biases, norms
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, fused=True if device.type == "cuda" else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, config.warmup_steps, config.max_steps, config.schedule))
    torch.manual_seed(config.seed)  # dropout (e.g. LoRA's) draws from here
    net = distributed.wrap_model(model, info, config.parallel,  # DDP or FSDP2 under torchrun, else the model
                                 param_dtype=torch.bfloat16 if bf16 and config.parallel == "fsdp2" else None)
    return _Run(model, net, optimizer, scheduler, device, bf16, rank, world, collate, padded)


def _batching(name: str) -> tuple[Callable, Callable, bool]:
    """``(collate, prepare_model, padded)`` for ``config.batching``.

    ``"packed"`` imports :mod:`bioft_tutorial.packing` only when asked: its collate concatenates chains into
    one row with ``position_ids`` and ``cu_seq_lens_*`` (no padding), and ``enable_packed_attention`` makes
    the attention respect the chain boundaries.
    """
    if name == "padded":
        return collate_padded, lambda model: model, True
    try:
        packing = importlib.import_module("bioft_tutorial.packing")
    except ModuleNotFoundError as err:
        raise ValueError("batching='packed' needs bioft_tutorial.packing, which is not there; use "
                         "batching='padded'") from err

    def prepare(model: torch.nn.Module) -> torch.nn.Module:
        packing.enable_packed_attention(model)
        return model

    return lambda examples, pad_id: packing.collate_packed(examples, pad_token_id=pad_id), prepare, False


def _next_chunk(run: _Run, examples: Examples, state: dict, config: TrainConfig) -> list[list[int]]:
    """The next ``grad_accum_steps x world`` batches of this epoch's plan (a new epoch when too few are left).
    An epoch's plan depends only on the seed and the epoch, so a resumed run sees the same batches."""
    need = config.grad_accum_steps * run.world

    def plan(epoch: int) -> list[list[int]]:
        if epoch not in run.plans:
            run.plans = {epoch: token_budget_batches(examples.lengths, config.token_budget, padded=run.padded,
                                                     seed=config.seed * 100_003 + epoch)}
        return run.plans[epoch]

    if state["position"] + need > len(plan(state["epoch"])):
        state.update(epoch=state["epoch"] + 1, position=0)
        if need > len(plan(state["epoch"])):
            raise ValueError(f"one optimizer step needs {need} batches (grad_accum_steps x processes) but an epoch "
                             f"has only {len(plan(state['epoch']))}; lower grad_accum_steps or token_budget")
    state["position"] += need
    return plan(state["epoch"])[state["position"] - need: state["position"]]


def _step(run: _Run, examples: Examples, chunk: list[list[int]], state: dict, config: TrainConfig, step: int,
          before_forward: Callable | None) -> tuple[float, float]:
    """Forward and backward over this rank's batches of ``chunk``, then clip. Returns ``(loss, grad_norm)``:
    loss per labelled target over the whole step (all ranks). After a CUDA out-of-memory error the step is
    redone from a clean slate (gradients zeroed, RNG restored) with half the token budget."""
    count = int(sum(examples.n_targets[b].sum() for b in chunk)) or 1
    rng = ckpt.rng_state()
    while True:
        try:
            total = _forward_backward(run, examples, chunk[run.rank::run.world], state["token_budget"], count, step,
                                      before_forward)
            break
        except torch.cuda.OutOfMemoryError as err:
            run.optimizer.zero_grad(set_to_none=True)
            ckpt.set_rng_state(*rng)
            state["token_budget"] = _back_off(state["token_budget"], config, examples, chunk, step, run.world, err)
    if run.world > 1:
        dist.all_reduce(total)
    params = [p for p in run.model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf"))
    return total.item() / count, float(grad_norm)


def _forward_backward(run: _Run, examples: Examples, batches: list[list[int]], budget: int, count: int, step: int,
                      before_forward: Callable | None) -> torch.Tensor:
    """Accumulate gradients over ``batches`` (each cut to ``budget`` tokens); returns the summed loss."""
    run.net.train()
    pieces = [piece for b in batches for piece in _split(b, examples.lengths, budget, run.padded)]
    total = torch.zeros((), device=run.device)
    for k, piece in enumerate(pieces):
        batch = run.collate(examples.get(piece), run.model.config.pad_token_id)
        batch = {key: value.to(run.device, non_blocking=True) if torch.is_tensor(value) else value  # packed: ints too
                 for key, value in batch.items()}
        if before_forward is not None:
            before_forward(step, batch)
        labels = batch.pop("labels")
        # DDP all-reduces gradients on the last backward of the step only
        with distributed.gradient_sync(run.net, enabled=k == len(pieces) - 1):  # all-reduce once per step
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.bf16):
                loss = loss_sum(run.net(**batch).logits, labels)
            (loss * run.world / count).backward()  # DDP averages over ranks; * world makes it a sum
        total += loss.detach()
    return total


def _split(batch: list[int], lengths: np.ndarray, budget: int, padded: bool) -> list[list[int]]:
    """Cut one planned batch into pieces that cost at most ``budget`` tokens (only after an OOM back-off)."""
    pieces, current = [], []
    for i in batch:
        trial = current + [i]
        cost = len(trial) * lengths[trial].max() if padded else lengths[trial].sum()
        if current and cost > budget:
            pieces.append(current)
            trial = [i]
        current = trial
    return pieces + [current]


def _back_off(budget: int, config: TrainConfig, examples: Examples, chunk, step: int, world: int, err) -> int:
    """Half the token budget, or re-raise when that would go under the floor (or under DDP)."""
    floor = max(config.min_token_budget, int(max(examples.lengths[b].max() for b in chunk)))
    if world > 1 or budget // 2 < floor:
        why = "ranks under DDP cannot retry alone" if world > 1 else f"half of it is under the floor of {floor} tokens"
        raise torch.cuda.OutOfMemoryError(
            f"CUDA out of memory at step {step} with token_budget={budget}, and {why}. Use LoRA instead of full "
            "fine-tuning, a smaller model, shorter crops or a GPU with more memory") from err
    log.warning("CUDA out of memory at step %d with token_budget=%d: retrying the step with %d", step, budget,
                budget // 2)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return budget // 2


def _evaluate_and_keep_best(run: _Run, eval_set: Examples, state: dict, config: TrainConfig, metric: str,
                            best_dir: Path) -> dict:
    """Evaluate; on a new best, save the trainable weights (and a PEFT adapter) to ``best_dir``."""
    scores = evaluate(run.model, eval_set, token_budget=config.token_budget, device=run.device, bf16=run.bf16,
                      collate=run.collate, padded=run.padded)
    value = scores[metric] if metric == "loss" else -scores[metric]  # stored so that lower is better
    if state["best"] is None or value < state["best"]:
        state.update(best=value, best_step=state["step"], bad_evals=0)
        if run.rank == 0:
            ckpt.save_checkpoint(best_dir, ckpt.trainable_tensors(run.model), {"step": state["step"], "scores": scores})
            if hasattr(run.model, "peft_config"):  # a plain adapter folder for PeftModel.from_pretrained
                run.model.save_pretrained(str(best_dir / "adapter"), save_embedding_layers=False)
    else:
        state["bad_evals"] += 1
    return {f"eval_{k}": v for k, v in scores.items()}
