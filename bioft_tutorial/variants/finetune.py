"""Fine-tune a DNA language model on variants: a classification head on a block's output, LoRA in the blocks.

:class:`DNAForSequenceClassification` wraps a block-stacked DNA model (Evo 2's StripedHyena, or the tiny
transformer of the smoke profile) the way Hugging Face wraps an encoder: ``model(input_ids=...,
attention_mask=...)`` returns an output with ``.logits`` of shape ``(B, num_labels)``, and ``.config`` holds
``pad_token_id`` and ``num_labels``. So the book's own :func:`bioft_tutorial.train.train` trains it, with its
checkpoints, resume and adapter saving, and :func:`bioft_tutorial.lora.prepare_model` puts PEFT LoRA adapters
into it.

The forward pass runs the backbone up to block ``config.layer`` only (forward hooks, :mod:`.embeddings`),
pools that block's output as the layer sweep does (the state at the variant, or the window mean), and, for a
``contrast`` other than ``"alt"``, reads each example as the reference window followed by the alternate one
(:func:`variant_examples`) and combines the two: ``ref - alt`` or both side by side. A small head
(layer norm, linear) turns that into logits.

Which modules LoRA can adapt: every ``torch.nn.Linear`` in the blocks up to ``config.layer``
(:func:`linear_modules` lists them). In Evo 2 these are the attention projections (``Wqkv``, ``out_proj``),
each Hyena block's output projection (``out_filter_dense``) and the gated MLPs (``mlp.l1``, ``l2``, ``l3``).
The Hyena blocks' input projection (``projections``) is a Transformer Engine style layer, not an
``nn.Linear``, so PEFT cannot adapt it; it stays frozen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .embeddings import POOLINGS, block_outputs, blocks_of, check_layers, pool

CONTRASTS = ("alt", "ref-minus-alt", "concat")


@dataclass
class ClassifierConfig:
    """What :class:`DNAForSequenceClassification` needs to know; ``pad_token_id`` is read by ``train.train``.

    Attributes:
        layer: block whose output feeds the head (0-based; the blocks after it are never run).
        hidden_size: width of the backbone's block outputs.
        num_labels: classes (2: LOF or not).
        pooling: ``"variant"`` (state at ``variant_index``) or ``"mean"`` (over the window).
        contrast: ``"alt"`` (one window per example), ``"ref-minus-alt"`` or ``"concat"`` (reference then
            alternate window per example, see :func:`variant_examples`).
        variant_index: 0-based index of the variant in every window.
        pad_token_id: the backbone's padding token.
    """

    layer: int
    hidden_size: int
    num_labels: int = 2
    pooling: str = "variant"
    contrast: str = "ref-minus-alt"
    variant_index: int = 0
    pad_token_id: int = 1
    use_cache: bool = False  # read and set by activation checkpointing, as for a Hugging Face model

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS or self.contrast not in CONTRASTS:
            raise ValueError(f"pooling={self.pooling!r}, contrast={self.contrast!r}: use pooling in {POOLINGS} and "
                             f"contrast in {CONTRASTS}")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ClassifierOutput:
    """The forward pass's output: ``logits`` ``(B, num_labels)``."""

    logits: torch.Tensor


class DNAForSequenceClassification(nn.Module):
    """A DNA language model's block ``config.layer``, pooled, then a linear head: one label per example.

    Args:
        backbone: the DNA model (``lm.model`` of an :class:`~.evo2_backend.Evo2LM` or :class:`~.neural.TinyDNALM`),
            used in place (LoRA adapters are added to it, not to a copy).
        config: a :class:`ClassifierConfig`.
    """

    def __init__(self, backbone: nn.Module, config: ClassifierConfig):
        super().__init__()
        blocks = blocks_of(backbone)
        config.layer = check_layers([config.layer], len(blocks))[0]
        self.backbone, self.config = backbone, config
        width = config.hidden_size * (2 if config.contrast == "concat" else 1)
        device = next(blocks[config.layer].parameters()).device  # where that block's output will be
        self.classifier = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.num_labels)).to(device)
        _keep_float32(backbone)
        for p in backbone.parameters():
            p.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_ignored) -> ClassifierOutput:
        """Logits ``(B, num_labels)`` for token ids ``(B, L)`` (``(B, 2 W)`` for a ref + alt pair)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pair = self.config.contrast != "alt"
        if pair:  # rows [ref; alt] -> 2B windows of W tokens
            input_ids = input_ids.reshape(input_ids.shape[0] * 2, -1)
            attention_mask = attention_mask.reshape(input_ids.shape)
        hidden = block_outputs(self.backbone, input_ids, [self.config.layer])[self.config.layer]
        lengths = attention_mask.sum(1)
        index = torch.full_like(lengths, self.config.variant_index)
        at_variant, mean = pool(hidden, lengths, index)
        pooled = at_variant if self.config.pooling == "variant" else mean
        if pair:
            ref, alt = pooled[0::2], pooled[1::2]
            pooled = ref - alt if self.config.contrast == "ref-minus-alt" else torch.cat([ref, alt], -1)
        return ClassifierOutput(logits=self.classifier(pooled))

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute each block up to ``config.layer`` in the backward pass instead of storing its activations
        (called by ``train.train`` with ``TrainConfig(checkpointing=True)``)."""
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        for block in list(blocks_of(self.backbone))[:self.config.layer + 1]:
            if not getattr(block, "_bioft_checkpointed", False):
                block.forward, block._bioft_checkpointed = _recomputed(block.forward, kwargs), True


    def gradient_checkpointing_disable(self) -> None:
        """Store the blocks' activations again (undo :meth:`gradient_checkpointing_enable`)."""
        for block in blocks_of(self.backbone):
            if getattr(block, "_bioft_checkpointed", False):
                del block.forward, block._bioft_checkpointed  # the class's own forward again


def _recomputed(forward, kwargs: dict):
    def run(*args, **inputs):
        if not torch.is_grad_enabled():
            return forward(*args, **inputs)
        return checkpoint(forward, *args, **kwargs, **inputs)
    return run


def _keep_float32(backbone: nn.Module) -> None:
    """Keep the float32 parameters of a bf16 backbone in float32 (Evo 2's long-filter poles and residues).

    ``train.train`` stores every frozen parameter in bf16 on a GPU; these are frozen, so they become buffers,
    which it leaves as they are. A backbone all in one dtype is not touched.
    """
    dtypes = {p.dtype for p in backbone.parameters()}
    if not ({torch.float32, torch.bfloat16} <= dtypes):
        return
    for module in backbone.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.dtype == torch.float32:
                delattr(module, name)
                module.register_buffer(name, param.detach())


def classifier_for(lm, layer: int, *, num_labels: int = 2, pooling: str = "variant",
                   contrast: str = "ref-minus-alt", variant_index: int = 0, seed: int = 0
                   ) -> DNAForSequenceClassification:
    """A :class:`DNAForSequenceClassification` on ``lm.model`` (an Evo2LM or TinyDNALM), head seeded by ``seed``."""
    config = ClassifierConfig(layer=layer, hidden_size=lm.hidden_size, num_labels=num_labels, pooling=pooling,
                              contrast=contrast, variant_index=variant_index, pad_token_id=lm.pad_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DNAForSequenceClassification(lm.model, config)


def linear_modules(model: nn.Module, layer: int | None = None) -> pd.DataFrame:
    """Every module with a weight matrix in the blocks (up to ``layer``): where LoRA could go.

    Returns:
        One row per module: ``name`` (e.g. ``blocks.3.mlp.l1``), ``kind`` (class name), ``in``, ``out``,
        ``params``, and ``lora`` (whether PEFT can adapt it: ``torch.nn.Linear``).
    """
    blocks = blocks_of(model)
    last = len(blocks) - 1 if layer is None else check_layers([layer], len(blocks))[0]
    rows = []
    for i in range(last + 1):
        for name, module in blocks[i].named_modules():
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.ndim == 2 and not isinstance(module, nn.Embedding):
                rows.append({"name": f"blocks.{i}.{name}", "kind": type(module).__name__, "in": weight.shape[1],
                             "out": weight.shape[0], "params": weight.numel(), "lora": isinstance(module, nn.Linear)})
    return pd.DataFrame(rows)


def dna_lora_config(classifier: DNAForSequenceClassification, *, r: int = 8, alpha: float = 16,
                    dropout: float = 0.05, target_modules: Sequence[str] | None = None):
    """A PEFT ``LoraConfig`` for a :class:`DNAForSequenceClassification`: adapters in the ``nn.Linear`` layers of
    blocks ``0 .. config.layer`` (all of them, or those whose name ends with one of ``target_modules``, e.g.
    ``["Wqkv", "out_filter_dense"]``), and the head trained in full.

    Raises:
        ValueError: ``target_modules`` that match no adaptable layer.
    """
    from peft import LoraConfig

    table = linear_modules(classifier.backbone, classifier.config.layer)
    names = [n for n, ok in zip(table["name"], table["lora"]) if ok and (
        target_modules is None or any(n == t or n.endswith("." + t) for t in target_modules))]
    if not names:
        raise ValueError(f"target_modules={target_modules!r} match no nn.Linear in blocks 0..{classifier.config.layer}"
                         f"; choose from {sorted({n.split('.', 2)[2] for n in table['name'][table['lora']]})}")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", modules_to_save=["classifier"],
                      target_modules=[f"backbone.{n}" for n in names])


def variant_examples(lm, windows: pd.DataFrame, labels: Sequence[int] | None = None,
                     contrast: str = "ref-minus-alt") -> list[dict]:
    """Training examples for :func:`bioft_tutorial.train.train`: token ids (and a class id) per variant.

    Args:
        lm: the DNA LM whose ``encode`` gives token ids.
        windows: :func:`~.embeddings.variant_windows` output (``ref_seq``, ``alt_seq``, ``variant_index``).
        labels: one class id per row (``None``: examples without labels, for prediction).
        contrast: ``"alt"`` (the alternate window only) or a paired contrast (reference then alternate window).

    Raises:
        ValueError: windows of different lengths or variant indices (clipped at a contig end): a classifier
            reads every window at one index; drop those variants or use a shorter window.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast={contrast!r}; use one of {CONTRASTS}")
    shapes = windows.assign(length=windows["ref_seq"].str.len())[["length", "variant_index"]].drop_duplicates()
    if len(shapes) > 1:
        raise ValueError(f"windows have {len(shapes)} different (length, variant index) pairs, e.g. "
                         f"{shapes.iloc[:2].to_dict('records')} (clipped near a contig end); drop those variants "
                         "or use a shorter window so that every window is whole")
    alt = lm.encode(list(windows["alt_seq"]))[0].cpu().numpy().astype(np.int64)
    ids = alt if contrast == "alt" else np.concatenate(
        [lm.encode(list(windows["ref_seq"]))[0].cpu().numpy().astype(np.int64), alt], axis=1)
    if labels is None:
        return [{"input_ids": row} for row in ids]
    return [{"input_ids": row, "labels": int(y)} for row, y in zip(ids, labels)]
