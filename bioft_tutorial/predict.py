"""Batched inference in the input's order: logits per example, evaluation metrics, values and H/E/C strings.

Batches are length-bucketed under a token budget (padded, or packed for a model switched to packed
attention), but every function here returns its results **in the order of the input**, one entry per
example. Used by :mod:`bioft_tutorial.train` for evaluation, by the notebooks and by the command line.
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from bioft_tutorial import metrics
from bioft_tutorial.data import (IGNORE_INDEX, MAX_RESIDUES, SS_LABELS, Examples, collate_padded, crop_windows,
                                 encode_protein, token_budget_batches)
from bioft_tutorial.loss import loss_sum
from bioft_tutorial.oom import halving_batches

_ADVICE = "lower token_budget, crop long chains, or use a GPU with more memory"


def _per_example(logits: torch.Tensor, batch: dict, n: int) -> list[torch.Tensor]:
    """Split a batch's logits into one tensor per example: ``(L_i, C)`` per token or ``(C,)`` per sequence."""
    if "cu_seq_lens_q" in batch:  # packed: one row, chains one after another
        bounds = batch["cu_seq_lens_q"].tolist()
        return [logits[0, bounds[i]:bounds[i + 1]] for i in range(n)]
    if logits.dim() == 3:
        lengths = batch["attention_mask"].sum(-1).tolist()
        return [logits[i, :lengths[i]] for i in range(n)]
    return list(logits)


@torch.no_grad()
def predict_batches(model: torch.nn.Module, data, *, token_budget: int = 16384, device=None, bf16: bool | None = None,
                    collate: Callable | None = None, padded: bool = True, shard: bool = True,
                    max_examples: int | None = None) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """Run ``model`` in eval mode over ``data`` in length-sorted batches of at most ``token_budget`` tokens.

    ``bf16=None`` runs under bf16 autocast exactly when the model holds bf16 weights (e.g. after
    :func:`bioft_tutorial.train.train` on a GPU stored its frozen weights in bf16). Under ``torchrun`` with
    ``shard=True`` each rank takes every ``world_size``-th batch. A batch that runs out of GPU memory is
    split in halves (logged). ``max_examples`` caps the examples per batch (packed rows: see
    :func:`bioft_tutorial.packing.chains_per_row`).

    Yields:
        ``(indices, logits)``: indices into ``data`` and one float32 CPU tensor per example, ``(L_i, C)``
        for per-token models or ``(C,)`` for per-sequence ones. Batches come in length order; use the indices
        (or :func:`predict_logits`) to put them back in the input's order.
    """
    examples = Examples(data)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters()) if bf16 is None else bf16
    pad_id = getattr(model.config, "pad_token_id", None)
    collate = collate or (lambda ex: collate_padded(ex, 1 if pad_id is None else pad_id))
    rank, world = (dist.get_rank(), dist.get_world_size()) if shard and dist.is_initialized() else (0, 1)

    def run(indices: list[int]) -> list[torch.Tensor]:
        batch = collate(examples.get(indices))
        batch.pop("labels", None)
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}  # packed: ints too
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**inputs).logits.float().cpu()
        return _per_example(logits, batch, len(indices))

    was_training = model.training
    model.eval()
    try:
        plan = token_budget_batches(examples.lengths, token_budget, padded=padded, shuffle=False,
                                    max_examples=max_examples)
        for planned in plan[rank::world]:
            for indices, logits in halving_batches(run, planned, len(planned), "sequence", _ADVICE):
                yield indices, logits
    finally:
        model.train(was_training)


def predict_logits(model: torch.nn.Module, data, **kwargs) -> list[torch.Tensor]:
    """One logits tensor per example of ``data``, in the input's order (see :func:`predict_batches`)."""
    out: list[torch.Tensor | None] = [None] * len(Examples(data))
    for indices, logits in predict_batches(model, data, shard=False, **kwargs):
        for i, value in zip(indices, logits):
            out[i] = value
    return out


def collect_predictions(model: torch.nn.Module, data, **kwargs) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels and predictions of every labelled target, in the input's order, gathered from all ranks.

    Returns:
        ``(labels, predictions, mean_loss)``: for per-token classes, the class ids and argmax classes at
        labelled positions, example after example (flat); for regression, one target and one predicted value
        per example. ``mean_loss`` is per target (nats, or squared units).
    """
    examples = Examples(data)
    parts = {}
    for indices, logits in predict_batches(model, examples, **kwargs):
        for i, value in zip(indices, logits):
            y = torch.as_tensor(examples.labels_of(i))
            keep = y != IGNORE_INDEX if examples.per_token else torch.ones((), dtype=torch.bool)
            pred = value.squeeze(-1) if examples.regression else value.argmax(-1)
            parts[i] = (float(loss_sum(value[None], y[None])), y[keep].numpy().ravel(), pred[keep].numpy().ravel())
    if kwargs.get("shard", True) and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, parts)
        parts = {i: p for rank_parts in gathered for i, p in rank_parts.items()}
    ordered = [parts[i] for i in sorted(parts)]
    y, pred = np.concatenate([p[1] for p in ordered]), np.concatenate([p[2] for p in ordered])
    return y, pred, sum(p[0] for p in ordered) / max(len(y), 1)


def evaluate(model: torch.nn.Module, data, **kwargs) -> dict[str, float]:
    """``{"loss", "accuracy"}`` (classification: Q3 for H/E/C) or ``{"loss", "spearman"}`` (regression).

    A Spearman correlation that is undefined (constant targets or predictions) is NaN, not an error.
    """
    y, pred, loss = collect_predictions(model, data, **kwargs)
    if y.dtype.kind == "f":
        defined = len(y) > 1 and np.ptp(y) > 0 and np.ptp(pred) > 0
        return {"loss": loss, "spearman": metrics.spearman(pred, y) if defined else float("nan")}
    return {"loss": loss, "accuracy": metrics.q3_accuracy(y, pred)}


def predict_values(model: torch.nn.Module, data, *, center: float = 0.0, scale: float = 1.0, **kwargs) -> np.ndarray:
    """One predicted value per example of a regression model, in the input's order, with the scaling undone.

    Args:
        data: examples with ``input_ids`` (labels, if present, are ignored).
        center, scale: the standardisation the targets were trained with
            (:func:`bioft_tutorial.data.sequence_regression_examples`): values are ``center + scale * output``.

    Returns:
        ``(N,)`` float64, in the units of the original targets.
    """
    logits = predict_logits(model, data, **kwargs)
    if logits and logits[0].numel() != 1:
        raise ValueError(f"predict_values needs a regression model with one output per sequence; this one gives "
                         f"{tuple(logits[0].shape)} per example (use predict_logits or predict_residue_classes)")
    return center + scale * np.array([float(x.reshape(())) for x in logits], dtype=np.float64)


def predict_residue_classes(model: torch.nn.Module, tokenizer, sequences: dict[str, str], classes: str = SS_LABELS,
                            max_residues: int = MAX_RESIDUES, overlap: int = 256, **kwargs) -> dict[str, str]:
    """Per-residue class letters for each sequence, in the input's order, e.g. ``{"seq1": "CCHHHHEEC..."}``.

    Chains longer than ``max_residues`` are cut into overlapping crops and stitched back: each residue
    takes the prediction of the crop that owns it (:func:`bioft_tutorial.data.crop_windows`).

    Args:
        sequences: ``{id: amino acids}``, e.g. from :func:`bioft_tutorial.data.read_fasta`.
        classes: the letter of each class id (``"HEC"``).
        **kwargs: passed to :func:`predict_batches` (``token_budget``, ``device``, ``bf16``).
    """
    vocab, crops, examples = tokenizer.get_vocab(), [], []
    for sid, seq in sequences.items():
        ids = encode_protein(seq, vocab, source=f"sequence {sid!r}")
        for start, end, own_start, own_end in crop_windows(len(ids), max_residues, overlap):
            crops.append((sid, start, own_start, own_end))
            examples.append({"input_ids": [tokenizer.cls_token_id, *ids[start:end], tokenizer.eos_token_id]})
    letters = {sid: [""] * len(seq) for sid, seq in sequences.items()}
    for (sid, start, own_start, own_end), logits in zip(crops, predict_logits(model, examples, **kwargs)):
        predicted = logits[1:-1].argmax(-1).tolist()  # drop <cls> and <eos>
        for pos in range(own_start, own_end):
            letters[sid][pos] = classes[predicted[pos - start]]
    return {sid: "".join(chars) for sid, chars in letters.items()}
