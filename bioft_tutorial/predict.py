"""Batched inference: run a model over examples, score it, and turn FASTA into per-residue H/E/C strings.

Used by :mod:`bioft_tutorial.train` for evaluation and by the notebooks for confusion matrices and for
predicting new sequences. Needs torch, numpy and the package's leaves (``data``, ``metrics``).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from bioft_tutorial import metrics
from bioft_tutorial.data import (IGNORE_INDEX, MAX_RESIDUES, SS_LABELS, collate_padded, crop_windows, encode_protein,
                                 token_budget_batches)

log = logging.getLogger(__name__)


class Examples:
    """A ``datasets.Dataset`` or a list of dicts with ``input_ids`` (and ``labels``), with cached sizes.

    Attributes:
        lengths: (N,) tokens per example, special tokens included.
        n_targets: (N,) labelled targets per example (tokens whose label is not -100, or 1 per sequence).
        regression: whether the labels are floats (one value per sequence).
    """

    def __init__(self, data):
        self.data = data
        self.is_dataset = hasattr(data, "column_names")
        ids = data["input_ids"] if self.is_dataset else [e["input_ids"] for e in data]
        self.lengths = np.array([len(x) for x in ids], dtype=np.int64)
        has_labels = ("labels" in data.column_names) if self.is_dataset else bool(data) and "labels" in data[0]
        labels = (data["labels"] if self.is_dataset else [e["labels"] for e in data]) if has_labels else []
        self.n_targets = np.array([int(np.sum(np.asarray(y) != IGNORE_INDEX)) if isinstance(y, (list, np.ndarray))
                                   else 1 for y in labels], dtype=np.int64)
        self.regression = len(labels) > 0 and isinstance(labels[0], (float, np.floating))
        self.columns = ("input_ids", "labels") if has_labels else ("input_ids",)

    def __len__(self) -> int:
        return len(self.lengths)

    def get(self, indices: list[int]) -> list[dict]:
        """The examples at ``indices`` as dicts of ``input_ids`` (and ``labels``)."""
        if self.is_dataset:
            cols = self.data[list(indices)]
            return [{k: cols[k][i] for k in self.columns} for i in range(len(indices))]
        return [{k: self.data[i][k] for k in self.columns} for i in indices]


def loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed loss over labelled targets (fp32): cross-entropy for class ids (``-100`` ignored), squared
    error for float targets.

    Args:
        logits: (B, L, C) per token or (B, C) per sequence (C = 1 for regression).
        labels: (B, L) or (B,) int64 class ids, or (B,) float targets.
    """
    if labels.is_floating_point():
        return F.mse_loss(logits.float().squeeze(-1), labels.float(), reduction="sum")
    return F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


@torch.no_grad()
def predict_batches(model: torch.nn.Module, data, *, token_budget: int = 16384, device=None, bf16: bool | None = None,
                    collate: Callable = collate_padded, padded: bool = True, shard: bool = True
                    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor | None]]:
    """Run ``model`` in eval mode over ``data`` in length-sorted batches of at most ``token_budget`` tokens.

    ``bf16=None`` runs under bf16 autocast exactly when the model holds bf16 weights (e.g. after
    :func:`bioft_tutorial.train.train` on a GPU stored its frozen weights in bf16). Under ``torchrun`` with
    ``shard=True`` each rank takes every ``world_size``-th batch.

    Yields:
        ``(indices, logits, labels)``: example indices, float32 CPU logits ((B, L, C) or (B, C)) and the
        collated labels (or ``None``).
    """
    examples = data if isinstance(data, Examples) else Examples(data)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if bf16 is None:
        bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
    rank, world = (dist.get_rank(), dist.get_world_size()) if shard and dist.is_initialized() else (0, 1)
    was_training = model.training
    model.eval()
    try:
        for indices in token_budget_batches(examples.lengths, token_budget, padded=padded, shuffle=False)[rank::world]:
            yield from _predict_or_split(model, examples, list(indices), device, bf16, collate)
    finally:
        model.train(was_training)


def _predict_or_split(model, examples: "Examples", indices: list[int], device: torch.device, bf16: bool,
                      collate: Callable) -> list[tuple[list[int], torch.Tensor, torch.Tensor | None]]:
    """One batch's logits; on CUDA out of memory, the two halves of the batch (down to one sequence), logged."""
    try:
        batch = {k: v.to(device) if torch.is_tensor(v) else v  # a packed batch also holds ints (max_length_*)
                 for k, v in collate(examples.get(indices), model.config.pad_token_id).items()}
        labels = batch.pop("labels", None)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(**batch).logits.float().cpu()
        return [(indices, logits, None if labels is None else labels.cpu())]
    except torch.cuda.OutOfMemoryError:
        if len(indices) == 1:
            raise
    batch = labels = None  # free the failed batch before retrying (outside the except block)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    half = len(indices) // 2
    log.warning("CUDA out of memory predicting %d sequences: retrying as %d + %d", len(indices), half,
                len(indices) - half)
    return (_predict_or_split(model, examples, indices[:half], device, bf16, collate)
            + _predict_or_split(model, examples, indices[half:], device, bf16, collate))


def collect_predictions(model: torch.nn.Module, data, **kwargs) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels and predictions over every labelled target, gathered from all ranks.

    Returns:
        ``(labels, predictions, mean_loss)``: class ids and argmax classes at labelled positions (flat), or
        targets and predicted values per sequence; ``mean_loss`` is per target (nats, or squared units).
    """
    examples = data if isinstance(data, Examples) else Examples(data)
    parts = []
    for _, logits, labels in predict_batches(model, examples, **kwargs):
        if examples.regression:
            parts.append((float(loss_sum(logits, labels)), labels.numpy(), logits.squeeze(-1).numpy()))
        else:
            keep = labels != IGNORE_INDEX
            parts.append((float(loss_sum(logits, labels)), labels[keep].numpy(), logits.argmax(-1)[keep].numpy()))
    if kwargs.get("shard", True) and dist.is_initialized():
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, parts)
        parts = [p for rank_parts in gathered for p in rank_parts]
    y, pred = np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])
    return y, pred, sum(p[0] for p in parts) / max(len(y), 1)


def evaluate(model: torch.nn.Module, data, **kwargs) -> dict[str, float]:
    """``{"loss", "accuracy"}`` (classification: Q3 for H/E/C) or ``{"loss", "spearman"}`` (regression)."""
    y, pred, loss = collect_predictions(model, data, **kwargs)
    if y.dtype.kind == "f":
        return {"loss": loss, "spearman": metrics.spearman(pred, y)}
    return {"loss": loss, "accuracy": metrics.q3_accuracy(y, pred)}


def predict_residue_classes(model: torch.nn.Module, tokenizer, sequences: dict[str, str], classes: str = SS_LABELS,
                            max_residues: int = MAX_RESIDUES, overlap: int = 256, **kwargs) -> dict[str, str]:
    """Per-residue class letters for each sequence, e.g. ``{"seq1": "CCHHHHEEC..."}``.

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
    for indices, logits, _ in predict_batches(model, examples, shard=False, **kwargs):
        for row, i in enumerate(indices):
            sid, start, own_start, own_end = crops[i]
            classes_of_crop = logits[row, 1: 1 + len(examples[i]["input_ids"]) - 2].argmax(-1).tolist()
            for pos in range(own_start, own_end):
                letters[sid][pos] = classes[classes_of_crop[pos - start]]
    return {sid: "".join(chars) for sid, chars in letters.items()}
