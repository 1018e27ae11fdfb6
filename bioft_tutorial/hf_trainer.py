"""Training with Hugging Face ``Trainer`` the way most tutorials do it: the baseline the book's loop is timed against.

Most fine-tuning tutorials hand a PEFT model to ``transformers.Trainer`` with ``bf16=True`` (fp32 weights,
bf16 autocast), ``train_sampling_strategy="group_by_length"`` and a fixed number of chains per batch.
:func:`train_with_trainer` does exactly that, with the largest fixed batch that still fits a batch of
1,024-token chains in the same token budget (``token_budget // 1024`` chains), and clocks every step, so
that :func:`bioft_tutorial.train.train` can be compared with it on the same chains, model and GPU.

Needs torch, transformers and pandas (plus peft for a LoRA model).
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from bioft_tutorial.data import collate_padded


class _StepClock(TrainerCallback):
    """Wall-clock time at the start of training and at the end of every optimizer step (GPU synchronised)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def _now(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def on_train_begin(self, args, state, control, **kwargs):
        self._now()

    def on_step_end(self, args, state, control, **kwargs):
        self._now()


def train_with_trainer(model: torch.nn.Module, train_data, output_dir: str | Path, *, max_steps: int,
                       token_budget: int = 16384, learning_rate: float = 5e-4, warmup_steps: int | None = None,
                       device: str = "auto", seed: int = 0, pad_token_id: int = 1,
                       progress: bool = False) -> pd.DataFrame:
    """Train ``model`` with ``transformers.Trainer``; return what each optimizer step did and took.

    Args:
        model: e.g. ``lora.prepare_model(model, "lora", lora.esm2_lora_config())``; trained in place.
        train_data: a ``datasets.Dataset`` or a list of dicts with ``input_ids`` and per-token ``labels``.
        output_dir: Trainer's output folder (nothing is saved there: no checkpoints, no logs).
        max_steps: optimizer steps.
        token_budget: sets the fixed batch: ``max(1, token_budget // 1024)`` chains, padded to the longest.
        learning_rate: peak learning rate (cosine decay after ``warmup_steps``, default ``max_steps // 10``).
        device: ``"auto"`` (the GPU if there is one), ``"cpu"`` or ``"cuda"``; bf16 autocast on a GPU.
        seed: seed of Trainer's sampler and of dropout.
        pad_token_id: the tokenizer's ``<pad>`` id (1 for ESM-2).
        progress: show Trainer's progress bar.

    Returns:
        One row per optimizer step: ``step`` (1-based), ``tokens`` (real tokens of the batch),
        ``computed_tokens`` (padding included), ``step_s`` (seconds, GPU synchronised, data loading
        included) and ``tokens_per_s`` (real tokens per second). ``attrs`` holds ``batch_size`` and
        ``train_loss`` (mean loss over the run, nats per labelled token).
    """
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    batch_size = max(1, token_budget // 1024)
    counts: list[tuple[int, int]] = []  # (real, computed) tokens of each batch, in the order they are made

    def collate(examples: list[dict]) -> dict:
        batch = collate_padded(examples, pad_token_id)
        counts.append((int(batch["attention_mask"].sum()), batch["input_ids"].numel()))
        return batch

    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, warmup_steps=max_steps // 10 if warmup_steps is None else warmup_steps,
        lr_scheduler_type="cosine", weight_decay=0.01, bf16=cuda, use_cpu=not cuda,
        train_sampling_strategy="group_by_length", eval_strategy="no", save_strategy="no", logging_strategy="no",
        report_to="none", remove_unused_columns=False, label_names=["labels"], dataloader_num_workers=0,
        disable_tqdm=not progress, seed=seed)
    clock = _StepClock()
    trainer = Trainer(model=model, args=args, train_dataset=train_data, data_collator=collate, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # it prints the run's summary to stdout
    result = trainer.train()
    steps = len(clock.times) - 1
    history = pd.DataFrame({"step": range(1, steps + 1), "tokens": [r for r, _ in counts[:steps]],
                            "computed_tokens": [c for _, c in counts[:steps]],
                            "step_s": pd.Series(clock.times).diff().iloc[1:].to_numpy()})
    history["tokens_per_s"] = history["tokens"] / history["step_s"]
    history.attrs.update(batch_size=batch_size, train_loss=float(result.training_loss))
    return history
