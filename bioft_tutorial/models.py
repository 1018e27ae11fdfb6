"""Load ESM-2: a hub id, a local checkpoint folder, or the offline ``"tiny"`` model.

The ``"tiny"`` model has the real ESM-2 architecture (rotary attention, pre-LayerNorm, token dropout)
and the real 33-token vocabulary, shrunk to 2 layers of width 64, with **random weights**. It runs the
whole book offline on a CPU; nothing it outputs is a result.

Model sizes of the family are built from the shipped ESM-2 8M config with the published shapes
(:data:`ESM2_FAMILY`), so tables and benchmarks need no download: ``esm2_config("650M")``.
"""
from __future__ import annotations

import logging
import pickle
from importlib import resources
from pathlib import Path

import torch
from transformers import (
    EsmConfig,
    EsmForMaskedLM,
    EsmForSequenceClassification,
    EsmForTokenClassification,
    EsmModel,
    EsmTokenizer,
    PreTrainedModel,
)

log = logging.getLogger(__name__)

#: Published ESM-2 shapes (Lin et al. 2023): hub id, layers, hidden size, attention heads.
ESM2_FAMILY: dict[str, dict] = {
    "8M": dict(hub_id="facebook/esm2_t6_8M_UR50D", num_hidden_layers=6, hidden_size=320, num_attention_heads=20),
    "35M": dict(hub_id="facebook/esm2_t12_35M_UR50D", num_hidden_layers=12, hidden_size=480, num_attention_heads=20),
    "150M": dict(hub_id="facebook/esm2_t30_150M_UR50D", num_hidden_layers=30, hidden_size=640, num_attention_heads=20),
    "650M": dict(hub_id="facebook/esm2_t33_650M_UR50D", num_hidden_layers=33, hidden_size=1280, num_attention_heads=20),
    "3B": dict(hub_id="facebook/esm2_t36_3B_UR50D", num_hidden_layers=36, hidden_size=2560, num_attention_heads=40),
    "15B": dict(hub_id="facebook/esm2_t48_15B_UR50D", num_hidden_layers=48, hidden_size=5120, num_attention_heads=40),
}
TASKS = {
    None: EsmModel,
    "token": EsmForTokenClassification,
    "sequence": EsmForSequenceClassification,
    "mlm": EsmForMaskedLM,
}


def _asset_dir() -> Path:
    return Path(str(resources.files("bioft_tutorial") / "assets" / "esm2_tiny"))


def load_tokenizer(name_or_path: str | None = None) -> EsmTokenizer:
    """The ESM-2 tokenizer. All ESM-2 sizes share one vocabulary, shipped with the package.

    Args:
        name_or_path: a local folder or hub id with tokenizer files; ``None`` or ``"tiny"`` uses the shipped copy.
    """
    if name_or_path in (None, "tiny") or name_or_path in ESM2_FAMILY:
        return EsmTokenizer.from_pretrained(str(_asset_dir()))
    try:
        return EsmTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError) as err:  # ValueError: not a valid hub id; TypeError: no vocab file
        raise OSError(f"could not load an ESM-2 tokenizer from {name_or_path!r}: not a local folder with vocab.txt, "
                      "and the Hugging Face Hub is unreachable or does not have it. Pass a local folder, or None for "
                      "the shipped copy (all ESM-2 sizes share one vocabulary)") from err


def esm2_config(size: str, **overrides) -> EsmConfig:
    """The config of an ESM-2 family member (``"8M"`` … ``"15B"``), built offline.

    Raises:
        ValueError: for an unknown size.
    """
    if size not in ESM2_FAMILY:
        raise ValueError(f"unknown ESM-2 size {size!r}; use one of {list(ESM2_FAMILY)}")
    shape = {k: v for k, v in ESM2_FAMILY[size].items() if k != "hub_id"}
    config = EsmConfig.from_pretrained(str(_asset_dir()))
    config.update({**shape, "intermediate_size": 4 * shape["hidden_size"], **overrides})
    config.name_or_path = ESM2_FAMILY[size]["hub_id"]
    return config


def tiny_esm2_config(num_hidden_layers: int = 2, hidden_size: int = 64, num_attention_heads: int = 4) -> EsmConfig:
    """The real ESM-2 config (rotary, token dropout, 33-token vocab), shrunk for CPU smoke runs."""
    config = EsmConfig.from_pretrained(str(_asset_dir()))
    config.update(
        dict(
            num_hidden_layers=num_hidden_layers,
            hidden_size=hidden_size,
            num_attention_heads=num_attention_heads,
            intermediate_size=4 * hidden_size,
        )
    )
    config.name_or_path = "tiny"
    return config


def _model_class(task: str | None) -> type[PreTrainedModel]:
    if task not in TASKS:
        raise ValueError(
            f"unknown task {task!r}; use None (embeddings), 'token' (per-residue labels), "
            "'sequence' (one label or value per chain) or 'mlm' (masked-LM head)"
        )
    return TASKS[task]


def _head_kwargs(task: str | None, num_labels: int | None) -> dict:
    if task in ("token", "sequence"):
        if num_labels is None or num_labels < 1:
            raise ValueError(
                f"task={task!r} needs num_labels >= 1 (got {num_labels!r}); e.g. num_labels=3 for H/E/C, "
                "num_labels=1 for regression"
            )
        return {"num_labels": num_labels}
    return {}


def random_esm2(
    config: EsmConfig, task: str | None = None, num_labels: int | None = None, seed: int = 0,
    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """An ESM-2 of the given shape with random weights (for smoke runs, tests and GPU benchmarks).

    Weights are initialised directly on ``device`` in ``dtype``, so a 15B model never passes through
    host memory in fp32.
    """
    config = EsmConfig.from_dict(config.to_dict())
    for key, value in _head_kwargs(task, num_labels).items():
        setattr(config, key, value)
    if task == "sequence" and num_labels == 1:
        config.problem_type = "regression"
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    cls = _model_class(task)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def _from_pretrained(cls, source: str, **kwargs):
    """``cls.from_pretrained`` with transformers' load-report table replaced by one line: the new task head is
    expected (info), other freshly initialised weights are not (a warning: wrong checkpoint or class?)."""
    quiet, no_report = logging.getLogger("transformers.modeling_utils"), lambda r: "LOAD REPORT" not in str(r.msg)
    quiet.addFilter(no_report)  # a filter, not a level: transformers changes what it checks with the level
    try:
        model, info = cls.from_pretrained(source, output_loading_info=True, **kwargs)
    finally:
        quiet.removeFilter(no_report)
    new, unused = (sorted({".".join(k.split(".")[:2]) for k in info.get(key) or ()})
                   for key in ("missing_keys", "unexpected_keys"))
    if new or unused:
        odd = [k for k in new if not k.startswith("classifier")]
        (log.warning if odd else log.info)("%s from %s: newly initialised %s; unused from the checkpoint %s",
                                           cls.__name__, source, new or "none", unused or "none")
    return model


def load_esm2(
    name_or_path: str,
    task: str | None = None,
    num_labels: int | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, EsmTokenizer]:
    """Load ESM-2 and its tokenizer.

    Args:
        name_or_path: a hub id (``"facebook/esm2_t33_650M_UR50D"``), a local checkpoint folder, or
            ``"tiny"`` for the offline random-weight smoke model.
        task: ``None`` (bare encoder, embeddings), ``"token"``, ``"sequence"`` or ``"mlm"``.
        num_labels: classes (or 1 for regression) of a ``"token"``/``"sequence"`` head.
        dtype: weight dtype (default fp32).
        device: where to put the model (default CPU).
        attn_implementation: ``"sdpa"`` (default), ``"eager"`` (needed for attention maps and contacts),
            ``"flex_attention"`` or ``"flash_attention_2"``.
        seed: seed of the random weights of ``"tiny"`` and of new task heads.
        trust_remote_code: passed to ``from_pretrained``; off unless you ask (ESM-2 needs none).

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ValueError: unknown task or missing ``num_labels``.
        OSError: the name is neither a local folder nor reachable on the hub; the message says what to do.
        pickle.UnpicklingError: a ``pytorch_model.bin`` that holds more than tensors (refused, never run).
    """
    cls = _model_class(task)
    head = _head_kwargs(task, num_labels)
    dtype = dtype or torch.float32
    if name_or_path == "tiny":
        model = random_esm2(tiny_esm2_config(), task, num_labels, seed, dtype, device or "cpu", attn_implementation)
        return model.eval(), load_tokenizer()
    torch.manual_seed(seed)
    local = Path(name_or_path).expanduser()
    if str(name_or_path).startswith((".", "/", "~")) and not local.is_dir():  # a path, never a hub id
        raise OSError(f"could not load ESM-2 {name_or_path!r}: no such folder ({local.resolve()}); check the path "
                      "(a folder with config.json and model.safetensors), or pass a hub id such as "
                      f"{ESM2_FAMILY['8M']['hub_id']!r}, or 'tiny' for the offline smoke model")
    kwargs = dict(dtype=dtype, attn_implementation=attn_implementation, use_safetensors=None,
                  trust_remote_code=trust_remote_code, **head)
    if task == "sequence" and num_labels == 1:
        kwargs["problem_type"] = "regression"
    try:
        if local.is_dir():
            model = _from_pretrained(cls, str(local), local_files_only=True, **kwargs)
            tokenizer = EsmTokenizer.from_pretrained(str(local)) if (local / "vocab.txt").exists() else load_tokenizer()
        else:
            model = _from_pretrained(cls, name_or_path, **kwargs)
            tokenizer = EsmTokenizer.from_pretrained(name_or_path)
    except OSError as err:
        raise OSError(
            f"could not load ESM-2 {name_or_path!r}: it is not a local folder with config.json and weights, and the "
            "Hugging Face Hub is unreachable or does not have it (offline, HF_HUB_OFFLINE=1, or a typo). "
            f"Fix: download it once with internet (`hf download {name_or_path} --local-dir ./esm2`) and pass "
            "the folder, or use 'tiny' for the offline smoke model. Original error: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) met a pickle that is more than tensors
        raise pickle.UnpicklingError(
            f"refused to load {name_or_path!r}: its pickled weights (pytorch_model.bin) hold Python objects other "
            "than tensors, which could run code, so they were not unpickled. Use a checkpoint with "
            "model.safetensors; do not set weights_only=False for a file you did not make yourself") from err
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


def count_parameters(config: EsmConfig, task: str | None = "token", num_labels: int = 3) -> dict[str, int]:
    """Parameters of a model built on the meta device (no memory, no download).

    Returns:
        ``{"total": ..., "embeddings": ..., "encoder": ..., "head": ...}`` in parameters.
    """
    config = EsmConfig.from_dict(config.to_dict())
    for key, value in (_head_kwargs(task, num_labels) if task in ("token", "sequence") else {}).items():
        setattr(config, key, value)
    with torch.device("meta"):
        model = _model_class(task)(config)
    counts = {"total": 0, "embeddings": 0, "encoder": 0, "head": 0}
    for name, p in model.named_parameters():
        counts["total"] += p.numel()
        part = "embeddings" if ".embeddings." in f".{name}" else "encoder" if ".encoder." in f".{name}" else "head"
        counts[part] += p.numel()
    return counts


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each encoder layer in the backward pass instead of storing its activations.

    Costs about one more forward pass per step; cuts activation memory to one layer's worth plus each
    layer's input (what lets ESM-2 3B and 15B train with LoRA on one GPU).
    """
    model.config.use_cache = False  # an encoder has no cache; avoids a warning (and a graph break) per layer
    enable = getattr(model, "activation_checkpointing_enable", None)  # newer transformers name
    if enable is not None:
        enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """Store frozen floating-point weights in ``dtype`` and keep trainable ones in fp32 (in place).

    Under bf16 autocast, fp32 frozen weights are cast to bf16 again at every step; storing them in bf16
    halves their memory and removes those casts, while the optimizer still updates fp32 weights. Use it
    only together with autocast: without it, bf16 weights meet fp32 activations and matmuls fail.
    ``train.train`` does this itself on the GPU.
    """
    for p in model.parameters():
        if p.is_floating_point():
            p.data = p.data.to(torch.float32 if p.requires_grad else dtype)
    return model


#: Graphs of one layer class a process may compile (see :func:`compile_layers`).
RECOMPILE_LIMIT = 64


def compile_layers(model: torch.nn.Module, backend="inductor", mode: str | None = None) -> int:
    """``torch.compile`` every ``EsmLayer`` with static shapes; identical layers reuse one compiled graph.

    Compiling the repeated layer rather than the whole model keeps the compile time to that of one layer
    (seconds, not minutes). Feed it few distinct shapes (:func:`bioft_tutorial.packing.static_collate`),
    or each new shape compiles again.

    Every model of a process compiles the same code (``EsmLayer.forward``), and each row size, each of
    training and evaluation, and each model (head only, LoRA, full) is one more graph of it. torch._dynamo
    stops compiling a function after 8 graphs and silently runs it eagerly from then on, so a page that
    trains three models would run the third at eager speed. This raises that limit to
    :data:`RECOMPILE_LIMIT` for the process (it never lowers a higher setting).

    Args:
        model: an ESM-2 model from transformers, plain or PEFT-wrapped.
        backend: a ``torch.compile`` backend name (``"inductor"``) or callable.
        mode: ``torch.compile``'s mode for the inductor backend; ``"reduce-overhead"`` records each layer's
            kernels once as a CUDA graph and replays them, instead of launching them one by one from Python.

    Returns:
        The number of layers compiled (0 means the model has no ``EsmLayer``).
    """
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 8 * RECOMPILE_LIMIT)
    layers = [m for m in model.modules() if type(m).__name__ == "EsmLayer"]
    if hasattr(model, "enable_input_require_grads") and any(p.requires_grad for m in layers for p in m.parameters()):
        model.enable_input_require_grads()  # layer 0's input then needs grad like the others': one graph
    for layer in layers:
        for module in layer.modules():  # a fused LoRA layer needs to know (fused_lora.CHECKPOINT_MARKS_LOST)
            module._bioft_compiled_checkpoint = bool(getattr(layer, "gradient_checkpointing", False))
        layer.compile(dynamic=False, backend=backend, **({"mode": mode} if mode else {}))
    return len(layers)
