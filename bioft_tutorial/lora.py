"""LoRA for ESM-2 with PEFT: the config, the three training methods, parameter counts, memory and FLOP estimates.

LoRA (Hu et al. 2022) freezes a pretrained weight ``W`` (``d_out x d_in``) and learns a low-rank update

    W' = W + (alpha / r) * B @ A,      A: r x d_in,  B: d_out x r,  B = 0 at the start,

so a layer trains ``r * (d_in + d_out)`` numbers instead of ``d_in * d_out``. In ESM-2 the update goes
into the linear layers of every encoder layer: ``query``, ``key``, ``value`` (attention) and ``dense``
(attention output, feed-forward in and out). The small task head is new, so it is trained in full
(PEFT's ``modules_to_save``).

The three methods compared in the book (:func:`prepare_model`):

* ``"head"``: freeze ESM-2, train the head only (a probe on frozen embeddings);
* ``"lora"``: LoRA adapters plus the head;
* ``"full"``: every weight.

Needs torch, transformers and peft (and :mod:`bioft_tutorial.models` for the family configs).
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pandas as pd
import torch
from peft import LoraConfig, PeftConfig, PeftModel, TaskType, get_peft_model
from transformers import EsmConfig, PreTrainedModel

from bioft_tutorial.fused_lora import FusedLoraLinear
from bioft_tutorial.models import ESM2_FAMILY, TASKS, esm2_config

log = logging.getLogger(__name__)

#: Names of the linear layers inside each ESM-2 encoder layer that LoRA can adapt.
ESM2_LORA_TARGETS: tuple[str, ...] = ("query", "key", "value", "dense")
#: The task heads of ``EsmForTokenClassification`` / ``EsmForSequenceClassification``.
HEAD_MODULES: tuple[str, ...] = ("classifier",)
METHODS = ("head", "lora", "full")
_TASK_TYPES = {"token": TaskType.TOKEN_CLS, "sequence": TaskType.SEQ_CLS}
#: Activation bytes stored per token per layer for the backward pass, in 16-bit precision with a fused
#: (flash / memory-efficient) attention kernel: 34 * hidden (Korthikanti et al. 2023, Eq. 2 without the
#: attention-score term that a fused kernel never stores).
ACTIVATION_BYTES_PER_TOKEN_LAYER_PER_HIDDEN = 34


def esm2_lora_config(r: int = 8, alpha: float = 16, dropout: float = 0.0,
                     target_modules: tuple[str, ...] | list[str] = ESM2_LORA_TARGETS,
                     task: str = "token", fused: bool = True) -> LoraConfig:
    """A PEFT ``LoraConfig`` for ESM-2: adapters in the encoder, the task head trained in full.

    Args:
        r: rank of each update (number of columns of ``B``); 4-16 is typical.
        alpha: scale; the update is multiplied by ``alpha / r`` (so changing ``r`` keeps its size).
        dropout: dropout on the adapter's input during training. 0 (PEFT's default) unless you need the
            regularisation: ESM-2 itself trains without dropout, and each adapter's dropout copies its whole
            input, so on a GPU it costs time.
        target_modules: any of ``"query"``, ``"key"``, ``"value"``, ``"dense"`` (``"dense"`` = the
            attention output and both feed-forward layers).
        task: ``"token"`` (per-residue labels) or ``"sequence"`` (one label or value per chain).
        fused: adapt each layer with :class:`bioft_tutorial.fused_lora.FusedLoraLinear`, PEFT's layer with the
            update folded into the frozen product (the same values, saved files and names, less time); ``False``
            keeps PEFT's own layer.

    Raises:
        ValueError: a bad rank, alpha, dropout or task, or a module name ESM-2 does not have.
    """
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r={r!r} must be a positive integer (e.g. 8)")
    if alpha <= 0 or not 0 <= dropout < 1:
        raise ValueError(f"need alpha > 0 and 0 <= dropout < 1 (got alpha={alpha}, dropout={dropout})")
    if task not in _TASK_TYPES:
        raise ValueError(f"task={task!r}: use 'token' (per-residue labels) or 'sequence' (one value per chain)")
    targets = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    unknown = [t for t in targets if t not in ESM2_LORA_TARGETS]
    if unknown or not targets:
        raise ValueError(
            f"unknown LoRA target module(s) {unknown or targets}; ESM-2's encoder layers have "
            f"{', '.join(ESM2_LORA_TARGETS)} (names like 'q_proj'/'v_proj' belong to other models)"
        )
    # A regex limited to the encoder: a bare "dense" would also match the sequence head's classifier.dense.
    pattern = rf".*encoder\.layer\.\d+\..*\.({'|'.join(targets)})"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern,
                        modules_to_save=list(HEAD_MODULES), task_type=_TASK_TYPES[task], bias="none")
    if fused:
        config._register_custom_module({torch.nn.Linear: FusedLoraLinear})  # PEFT's hook for custom LoRA layers
    return config


def prepare_model(model: PreTrainedModel, method: str, lora_config: LoraConfig | None = None) -> torch.nn.Module:
    """Make ``model`` ready to train with ``method`` (``"head"``, ``"lora"`` or ``"full"``).

    The contact-prediction head ESM-2 carries is never used by these tasks, so it is frozen in every
    method (an unused trainable weight would also break DDP).

    Returns:
        The model to train: ``model`` itself (``"head"``, ``"full"``) or a ``PeftModel`` wrapping it.

    Raises:
        ValueError: unknown method, or ``"lora"`` without ``lora_config``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    if method == "lora":
        if lora_config is None:
            raise ValueError("method='lora' needs lora_config=esm2_lora_config(...)")
        model = get_peft_model(model, lora_config)
    else:
        for name, p in model.named_parameters():
            p.requires_grad = method == "full" or name.split(".")[0] in HEAD_MODULES
    for name, p in model.named_parameters():
        if "contact_head" in name:
            p.requires_grad = False
    return model


def parameter_counts(model: torch.nn.Module) -> dict[str, float]:
    """``{"total": ..., "trainable": ..., "trainable_percent": ...}`` (parameters, not bytes)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_percent": 100 * trainable / max(total, 1)}


def folder_bytes(folder: str | Path) -> int:
    """Bytes of all files under ``folder`` (e.g. a saved adapter or model)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _meta_model(config: EsmConfig, task: str, num_labels: int, method: str, lora_config: LoraConfig | None):
    config = EsmConfig.from_dict(config.to_dict())
    config.num_labels = num_labels
    with torch.device("meta"):
        model = TASKS[task](config)
    return prepare_model(model, method, lora_config)


def estimate_training_memory(size_or_config: str | EsmConfig, method: str = "lora", *, r: int = 8,
                             target_modules: tuple[str, ...] = ESM2_LORA_TARGETS, task: str = "token",
                             num_labels: int = 3, token_budget: int = 16384) -> dict[str, float]:
    """Estimate GPU memory for one training step, from the config alone (a meta-device model, no weights).

    Assumptions (bf16 autocast, AdamW):

    * weights: ``"full"`` keeps fp32 weights (4 bytes/param); ``"lora"``/``"head"`` keep the frozen base
      in bf16 (2 bytes) and the trainable parameters in fp32 (4 bytes);
    * gradients: 4 bytes per trainable parameter; optimizer: 8 (AdamW's two fp32 moments);
    * activations: ``34 * hidden`` bytes per token per layer (Korthikanti et al. 2023, fused attention);
      the same for LoRA and full fine-tuning (both back-propagate through every layer), and only the
      final hidden state for ``"head"`` (nothing behind a frozen encoder needs a gradient).

    Not counted: the CUDA context (~0.5 GiB), allocator fragmentation, temporary buffers and the extra
    copies that a non-fused attention or LoRA dropout makes. Treat the result as a lower bound.

    Returns:
        Parameters (``total_params``, ``trainable_params``) and GiB: ``weights_gib``, ``gradients_gib``,
        ``optimizer_gib``, ``activations_per_1k_tokens_gib``, ``activations_gib`` (at ``token_budget``) and
        ``total_gib``.
    """
    config = esm2_config(size_or_config) if isinstance(size_or_config, str) else size_or_config
    lcfg = esm2_lora_config(r=r, target_modules=target_modules, task=task) if method == "lora" else None
    counts = parameter_counts(_meta_model(config, task, num_labels, method, lcfg))
    total, trainable = counts["total"], counts["trainable"]
    frozen_bytes = 4 if method == "full" else 2
    weights = (total - trainable) * frozen_bytes + trainable * 4
    per_token = 2 * config.hidden_size if method == "head" else (
        ACTIVATION_BYTES_PER_TOKEN_LAYER_PER_HIDDEN * config.hidden_size * config.num_hidden_layers)
    gib = 2**30
    out = {"total_params": total, "trainable_params": trainable, "weights_gib": weights / gib,
           "gradients_gib": 4 * trainable / gib, "optimizer_gib": 8 * trainable / gib,
           "activations_per_1k_tokens_gib": 1000 * per_token / gib, "activations_gib": token_budget * per_token / gib}
    out["total_gib"] = sum(out[k] for k in ("weights_gib", "gradients_gib", "optimizer_gib", "activations_gib"))
    return out


def family_memory_table(sizes: tuple[str, ...] = tuple(ESM2_FAMILY), methods: tuple[str, ...] = ("lora", "full"),
                        **kwargs) -> pd.DataFrame:
    """:func:`estimate_training_memory` for each size and method, one row each (``size``, ``method``, ...)."""
    rows = [{"size": s, "method": m, **estimate_training_memory(s, m, **kwargs)} for s in sizes for m in methods]
    return pd.DataFrame(rows)


def matmul_params(config: EsmConfig) -> int:
    """Weights that multiply every token: the encoder's linear layers (query, key, value, attention output,
    feed-forward in and out), ``4 d**2 + 2 d f`` per layer (``12 d**2`` for ESM-2, whose ``f = 4 d``)."""
    d, f = config.hidden_size, config.intermediate_size
    return config.num_hidden_layers * (4 * d * d + 2 * d * f)


def flops_per_token(config: EsmConfig, method: str, chain_length: float) -> float:
    """Useful FLOPs of one training step per real token, for model FLOPs utilisation (MFU).

    A product with ``N`` weights (:func:`matmul_params`) costs ``2N`` per token forward, ``2N`` more for the
    gradient of its input and ``2N`` for the gradient of its weights: ``2N`` for ``"head"`` (the encoder
    needs no backward pass), ``4N`` for ``"lora"`` (frozen weights need no weight gradient), ``6N`` for
    ``"full"``. Attention adds ``4 L d`` per token and layer forward and twice that backward, for chains of
    ``L`` tokens. Recomputation (activation checkpointing), padding and LoRA's own small products do not count.

    Args:
        config: the model's shape (e.g. ``models.esm2_config("650M")``).
        method: ``"head"``, ``"lora"`` or ``"full"``.
        chain_length: ``L``, tokens per chain; for chains of mixed lengths the token-weighted mean
            ``sum(L**2) / sum(L)``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    passes = {"head": 1, "lora": 2, "full": 3}[method]
    attention = 4 * chain_length * config.hidden_size * config.num_hidden_layers * (1 if method == "head" else 3)
    return 2 * passes * matmul_params(config) + attention


def load_adapter(base_model: PreTrainedModel, folder: str, is_trainable: bool = False,
                 fused: bool = True) -> PeftModel:
    """Attach a saved adapter (``save_pretrained`` folder) to a fresh base model of the same shape.

    With ``fused=True`` the adapted layers are :class:`~bioft_tutorial.fused_lora.FusedLoraLinear`, as in
    training, so the outputs are those of the model that was saved, bit for bit. A plain
    ``PeftModel.from_pretrained`` (``fused=False``) loads the same adapter into PEFT's own layer, whose outputs
    agree to rounding (the same sum, computed in another order).

    Raises:
        FileNotFoundError: no adapter config in ``folder``.
        pickle.UnpicklingError: an ``adapter_model.bin`` that holds more than tensors (refused, never run).
    """
    if not (Path(folder) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: no adapter_config.json; pass the folder that save_pretrained wrote "
                                "(e.g. runs/ss-lora/best/adapter)")
    config = PeftConfig.from_pretrained(folder)
    if fused and isinstance(config, LoraConfig):
        config._register_custom_module({torch.nn.Linear: FusedLoraLinear})
    try:
        return PeftModel.from_pretrained(base_model, folder, is_trainable=is_trainable, config=config)
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) met more than tensors
        raise pickle.UnpicklingError(
            f"refused to load the adapter in {folder}: its pickled weights (adapter_model.bin) hold Python objects "
            "other than tensors, which could run code, so they were not unpickled. Save adapters with "
            "save_pretrained (adapter_model.safetensors); do not set weights_only=False for a file you did not "
            "make yourself") from err
