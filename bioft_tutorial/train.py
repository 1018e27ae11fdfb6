"""The book's training loop: one optimizer step you can read, and the loop around it, top to bottom.

:func:`train_step` is the whole mechanism: batches to the device, the forward pass under autocast, the
loss, the backward pass, gradient clipping, the optimizer and the schedule. Chapter 3 shows its source.

:func:`train` runs it ``max_steps`` times. Each step takes the next ``grad_accum_steps x world_size``
batches of the epoch's plan (:func:`bioft_tutorial.data.token_budget_batches`: length-bucketed and padded,
or packed with no padding), collates them, and calls :func:`train_step`. Around the step: a CUDA
out-of-memory error redoes it with half the token budget (:func:`bioft_tutorial.oom.retry_halving`); every
``eval_every`` steps it evaluates and keeps the best weights; every ``save_every`` steps it writes a
checkpoint (:mod:`bioft_tutorial.checkpoint`) that ``resume=True`` continues exactly. The host never waits
for the GPU inside a step: it reads a step's loss and gradient norm once the next step is queued
(:func:`to_host_later`), so ``history.jsonl`` gets each step's row one step late, except at evaluation,
checkpoint and final steps, which wait for their own numbers.

On a GPU the step runs under bf16 autocast with the frozen weights stored in bf16 and the trainable ones in
fp32; on a CPU, in fp32. Under ``torchrun`` the same call trains on every process
(:mod:`bioft_tutorial.distributed`: DDP, or FSDP2); only rank 0 writes files.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from bioft_tutorial import checkpoint as ckpt
from bioft_tutorial import distributed
from bioft_tutorial.data import Examples
from bioft_tutorial.history import History
from bioft_tutorial.loss import loss_sum
from bioft_tutorial.oom import retry_halving
from bioft_tutorial.best_weights import Best
from bioft_tutorial.train_setup import (LoopState, TrainConfig, check_data, lr_factor, next_batches, setup,
                                       split_batch)

log = logging.getLogger(__name__)
__all__ = ["TrainConfig", "TrainResult", "lr_factor", "to_host_later", "train", "train_step"]


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


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, batches: list[dict],
               n_targets: int, *, bf16: bool, max_grad_norm: float | None = 1.0, world_size: int = 1
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over ``batches`` (gradient accumulation): forward, loss, backward, clip, update.

    Nothing here waits for the GPU: the host queues the step's work and returns, so it can prepare the next
    step while the GPU computes this one. A NaN or infinite loss or gradient norm must still never reach the
    weights: fused AdamW (what :func:`train` uses) skips the update on the GPU itself, through
    ``optimizer.found_inf`` (the mechanism ``torch.amp.GradScaler`` uses), and the flag stays set, so that
    every later step is skipped too until the host has read the numbers (:func:`train` reads them one step
    later and stops). Elsewhere the host checks them before the update.

    Args:
        model: the model to train (under ``torchrun``, its DDP or FSDP2 wrapper).
        batches: this process's collated batches of the step, on the CPU, each with ``labels``.
        n_targets: labelled targets of the whole step on all processes; the loss is their mean.
        bf16: run the forward pass under bf16 autocast.

    Returns:
        ``(loss, grad_norm)``: 0-dim tensors on the device, the mean loss per labelled target of the step
        (nats for classes) and the gradient norm before clipping. ``float(loss)`` waits for the GPU.

    Raises:
        FloatingPointError: (without fused AdamW) the loss or the gradient norm is NaN or inf; the weights are
            not updated.
    """
    device = next(model.parameters()).device
    model.train()  # every submodule: a wrapped model (e.g. Evo 2 in a classifier) may hold some in eval mode
    total = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        labels = batch.pop("labels")
        with distributed.gradient_sync(model, enabled=i == len(batches) - 1):  # all-reduce on the last backward
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_sum(model(**batch).logits, labels)  # summed over labelled targets, in fp32
            (loss * world_size / n_targets).backward()  # DDP averages over processes: * world_size gives the mean
        total += loss.detach()
    if world_size > 1:
        dist.all_reduce(total)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm or math.inf)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP2: a DTensor
    loss = total / n_targets
    bad = (~(torch.isfinite(loss) & torch.isfinite(grad_norm))).float()
    if getattr(optimizer, "_step_supports_amp_scaling", False):  # fused AdamW: it skips the update on the device
        earlier = getattr(optimizer, "found_inf", None)
        optimizer.found_inf = bad if earlier is None else torch.maximum(earlier, bad)
    elif bad.item():
        raise FloatingPointError(f"loss {loss.item()}, gradient norm {grad_norm.item()}")
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm.detach()


def to_host_later(*values: torch.Tensor) -> Callable[[], list[float]]:
    """Queue a copy of 0-dim ``values`` to the host right behind the work that computes them.

    Returns a function that waits for that copy only, not for work queued after it, and gives the numbers.
    (``.item()`` would wait for everything queued so far: read after the next step is queued, it would wait
    for that step too, and the GPU would then sit idle while the host prepares the one after.)
    """
    host = torch.stack([v.detach().float() for v in values]).to("cpu", non_blocking=True)  # into pinned memory
    done = None
    if values[0].is_cuda:
        done = torch.cuda.Event()
        done.record()

    def numbers() -> list[float]:
        if done is not None:
            done.synchronize()
        return host.tolist()
    return numbers


def train(model: torch.nn.Module, train_data, eval_data, config: TrainConfig,
          before_forward: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train the parameters of ``model`` that require a gradient (set them with ``lora.prepare_model``).

    Args:
        model: a model whose forward takes a collated batch and returns ``.logits``
            (``EsmForTokenClassification``, ``EsmForSequenceClassification``, a ``PeftModel`` of one, ...).
            It is moved to the device and, in bf16, its frozen weights are stored in bf16 (in place).
        train_data, eval_data: ``datasets.Dataset`` or lists of dicts with ``input_ids`` and ``labels`` (ints
            per token with ``-100`` = ignore, or one class id or float per sequence); ``eval_data`` may be None.
        config: the run's settings; ``config.output_dir`` receives ``history.jsonl``, ``checkpoints/`` and
            ``best/`` (with ``best/adapter/``, a PEFT folder, for a PEFT model).
        before_forward: called as ``before_forward(step, inputs)`` before each forward pass (1-based step);
            a hook to inject faults in tests.

    Returns:
        A :class:`TrainResult`; the model holds the best weights if ``config.load_best_at_end``.

    Raises:
        FloatingPointError: the loss or gradient norm became NaN or inf (the last checkpoint is kept).
        ValueError: data that does not fit the model or the settings (the message says which and how to fix it).
        bioft_tutorial.checkpoint.DiskFullError: too little disk for a checkpoint (the previous one is kept).
    """
    train_set = Examples(train_data, "train_data")
    eval_set = Examples(eval_data, "eval_data") if eval_data is not None else None
    check_data(model, train_set, eval_set, config)
    run = setup(model, config, train_set, eval_set)
    out, state = Path(config.output_dir), LoopState(token_budget=config.token_budget)
    if config.resume:
        saved = ckpt.load_training_state(out / "checkpoints", run.model, run.optimizer, run.scheduler)
        state = LoopState(**saved) if saved else state
        log.info("starting at step %d (resume=True)", state.step)
    history = History(out / "history.jsonl", keep_until=state.step, write=run.rank == 0)
    metric = config.best_metric or ("spearman" if train_set.regression else "accuracy")
    best = Best(out / "best", metric, write=run.rank == 0 and config.save_best)
    bar = tqdm(total=config.max_steps, initial=state.step, disable=not config.progress or run.rank != 0,
               desc="train", mininterval=1.0)
    hook = run.model.register_forward_pre_hook(  # training forwards only, not evaluation
        lambda module, args, kwargs: before_forward(state.step + 1, kwargs) if module.training else None,
        with_kwargs=True) if before_forward else None
    pending: dict | None = None  # the last step's row, its loss and gradient norm still on the GPU

    def read(row: dict, ended: float | None = None) -> dict:
        """Read a step's numbers (waits for its GPU work, not later work): refuse NaN or inf, else fill the row."""
        loss, grad_norm = row.pop("numbers")()
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise _stopped(row["step"], f"loss {loss}, gradient norm {grad_norm}", out, config)
        seconds = (ended or time.perf_counter()) - row["step_s"]  # step_s held the step's start until now
        return row | dict(loss=loss, grad_norm=grad_norm, step_s=seconds, tokens_per_s=row["tokens"] / seconds)

    def log_row(row: dict) -> None:
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.1e}", refresh=False)

    try:
        while state.step < config.max_steps and state.stopped == "max_steps":
            started, lr = time.perf_counter(), run.scheduler.get_last_lr()[0]
            planned = next_batches(run, train_set, state, config)  # this step's batches, every process's
            n_targets = int(sum(train_set.n_targets[b].sum() for b in planned)) or 1
            rng, computed = ckpt.rng_state(), []

            def step(budget: int) -> tuple[torch.Tensor, torch.Tensor]:
                pieces = [p for b in planned[run.rank::run.world] for p in split_batch(b, train_set, budget, run)]
                batches = [run.collate(train_set.get(p)) for p in pieces]
                computed[:] = [sum(b["input_ids"].numel() for b in batches) * run.world]
                return train_step(run.net, run.optimizer, run.scheduler, batches, n_targets, bf16=run.bf16,
                                  max_grad_norm=config.max_grad_norm, world_size=run.world)

            try:
                (loss, grad_norm), state.token_budget = retry_halving(
                    step, state.token_budget, run.oom_floor(planned, train_set), "token_budget",
                    on_failure=lambda: (run.optimizer.zero_grad(set_to_none=True), ckpt.set_rng_state(*rng)),
                    advice=run.oom_advice, where=f" at step {state.step + 1}")
            except FloatingPointError as err:
                if pending is not None:  # the step before was good: log it
                    log_row(read(pending))
                raise _stopped(state.step + 1, str(err), out, config) from None
            if pending is not None:  # the step before: the GPU is past it, so reading its numbers costs no wait
                log_row(read(pending, ended=started))
            state.step += 1
            pending = dict(step=state.step, epoch=state.epoch, numbers=to_host_later(loss, grad_norm), lr=lr,
                           tokens=int(sum(train_set.lengths[b].sum() for b in planned)),
                           computed_tokens=computed[0], step_s=started, token_budget=state.token_budget)
            evaluate = eval_set is not None and config.eval_every and (
                state.step % config.eval_every == 0 or state.step == config.max_steps)
            save = config.save_every and (state.step % config.save_every == 0 or state.step == config.max_steps)
            if evaluate or save or state.step == config.max_steps:  # wait for the step, then evaluate or save
                row, pending = read(pending), None
                if evaluate:
                    row.update(best.evaluate(run, eval_set, state, config))
                log_row(row)
            if save or (config.save_every and state.stopped != "max_steps"):
                best.write(run)  # first, so that the checkpoint's best step is on disk
                ckpt.save_training_state(out / "checkpoints", run.model, run.optimizer, run.scheduler,
                                         asdict(state), asdict(config), keep=config.keep_checkpoints,
                                         write=run.rank == 0)
    finally:
        bar.close()
        if hook is not None:
            hook.remove()
    if pending is not None:  # a resumed run that was already at max_steps has none
        log_row(read(pending))
    if run.world > 1:
        dist.barrier()
    best.write(run)
    if config.load_best_at_end and state.best_step is not None:
        best.load_into(run.model)
    value = None if state.best is None else (state.best if metric == "loss" else -state.best)
    return TrainResult(pd.DataFrame(history.rows), metric, value, state.best_step, state.stopped, out,
                       state.token_budget)


def _stopped(step: int, what: str, out: Path, config: TrainConfig) -> FloatingPointError:
    return FloatingPointError(
        f"training stopped at step {step}: {what}; the weights were not updated. The last good checkpoint is "
        f"{ckpt.latest_checkpoint(out / 'checkpoints') or 'none yet'}. Lower learning_rate (now "
        f"{config.learning_rate}) or look for bad values in the data, then rerun with resume=True")

