"""Evaluation during training, and the best trainable weights so far.

:class:`Best` evaluates the model (:func:`bioft_tutorial.predict.evaluate`), keeps a host-memory copy of the
trainable weights whenever the metric improves, and writes them to ``best/`` (with a PEFT adapter folder for a
PEFT model) only when :meth:`Best.write` is called: with each checkpoint and at the end of the run. A long run
thus writes its best weights a few times, not at every evaluation (for full fine-tuning of 650M, 2.6 GB each).
An evaluation that is NaN (e.g. Spearman of constant targets) is never the best.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from bioft_tutorial import checkpoint as ckpt
from bioft_tutorial.data import Examples
from bioft_tutorial.predict import evaluate
from bioft_tutorial.train_setup import LoopState, Run, TrainConfig

log = logging.getLogger("bioft_tutorial.train")


class Best:
    """Evaluation, and the best trainable weights so far: kept in host memory, written to ``folder`` by
    :meth:`write` (with each checkpoint and at the end), so that a long run writes them a few times only."""

    def __init__(self, folder: Path, metric: str, write: bool = True):
        self.folder, self.metric, self.writes = folder, metric, write
        self.tensors: dict[str, torch.Tensor] | None = None
        self.record: dict = {}
        self.pending = False

    def evaluate(self, run: Run, eval_set: Examples, state: LoopState, config: TrainConfig) -> dict:
        """Evaluate; keep a copy of the weights on a new best. Returns the ``eval_*`` columns of the step."""
        scores = evaluate(run.model, eval_set, token_budget=config.token_budget, device=run.device, bf16=run.bf16,
                          collate=run.collate, padded=run.padded, max_examples=run.max_examples)
        value = scores[self.metric] if self.metric == "loss" else -scores[self.metric]  # lower is better
        tensors = ckpt.trainable_tensors(run.model)  # a collective under FSDP2: every process takes part
        if not math.isfinite(value):
            log.warning("evaluation at step %d gave %s=%s: not kept as the best (is the validation set constant "
                        "or too small?)", state.step, self.metric, scores[self.metric])
            state.bad_evals += 1
        elif state.best is None or value < state.best:
            state.best, state.best_step, state.bad_evals = value, state.step, 0
            self.tensors = {name: t.to("cpu", copy=True) for name, t in tensors.items()}
            self.record, self.pending = {"step": state.step, "scores": scores}, True
        else:
            state.bad_evals += 1
        if config.early_stopping_patience and state.bad_evals >= config.early_stopping_patience:
            state.stopped = "early_stopping"
        return {f"eval_{k}": v for k, v in scores.items()}

    def write(self, run: Run) -> None:
        """Write the best weights (and a PEFT adapter folder) to ``folder`` if they changed since the last write."""
        if not (self.pending and self.writes):
            return
        model = run.model

        def adapter(tmp: Path) -> None:  # a plain folder for PeftModel.from_pretrained
            weights = {name[len("model/"):]: t for name, t in self.tensors.items()}
            model.save_pretrained(str(tmp / "adapter"), state_dict=weights, save_embedding_layers=False)

        ckpt.save_checkpoint(self.folder, self.tensors, self.record,
                             write_extra=adapter if hasattr(model, "peft_config") else None)
        self.pending = False

    def load_into(self, model: torch.nn.Module) -> None:
        """Copy the best weights into ``model`` (from memory, or from ``folder`` after a resume)."""
        if self.tensors is None and not (self.folder / "tensors.safetensors").exists():
            log.warning("the best weights were not kept (a resumed run with save_best=False): the model keeps its "
                        "last weights")
            return
        tensors = self.tensors if self.tensors is not None else ckpt.load_checkpoint(self.folder)[0]
        ckpt.load_trainable(model, tensors)
