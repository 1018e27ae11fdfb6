"""FP8 matrix products for the frozen linear layers of ESM-2's encoder, with torchao's float8 training.

LoRA and head-only training leave most of a step's arithmetic in the frozen base: each frozen ``nn.Linear``
computes ``y = x W^T`` in the forward pass and the input gradient ``dx = dy W`` in the backward pass (its
weight gradient is never needed). On a GPU with FP8 tensor cores (NVIDIA compute capability 8.9 or newer:
Ada, Hopper, Blackwell) these products can run in 8-bit floating point at up to twice the bf16 rate.

:func:`convert_frozen_linears` swaps every frozen ``nn.Linear`` inside an ``EsmLayer`` for torchao's
``Float8Linear`` with tensorwise dynamic scaling: before each product, each operand is divided by a scale
taken from its absolute maximum and cast to FP8 (e4m3: 3 mantissa bits, for activations and weights; e5m2:
2 mantissa bits, wider range, for gradients), and the product is accumulated in higher precision. Everything
else stays as it was: LoRA adapters and the task head (trainable, fp32 weights under bf16 autocast),
embeddings, layer norms, attention scores and the loss.

Three things to know:

* The weight stays a bf16 ``Parameter``: ``state_dict``, PEFT's adapter saving and merging work as before.
  torchao casts it to FP8 at every product (its training path has no store of pre-cast weights outside
  FSDP2's FP8 all-gather); ``torch.compile`` fuses that cast into a few memory-bound kernels.
* torchao's backward also computes a weight gradient, which a frozen weight discards. Under ``torch.compile``
  (``TrainConfig(compile="inductor")``) that product is removed from the graph; in eager mode it runs and
  costs time: use FP8 together with compile.
* :func:`enable_fp8` (what ``train.train`` calls for ``TrainConfig(precision="fp8")``) converts nothing where
  FP8 is missing (the CPU, GPUs older than compute capability 8.9): it logs a warning and the run continues
  in bf16 (GPU) or fp32 (CPU).

Needs torch and, for the conversion only, torchao (``pip install 'bioft-tutorial[fp8]'``); nothing of the
package imports torchao unless FP8 is asked for.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

log = logging.getLogger(__name__)

#: Lowest CUDA compute capability with FP8 tensor cores (Ada Lovelace; Hopper is 9.0).
MIN_CAPABILITY = (8, 9)
#: torchao's float8 recipe: one scale per tensor, recomputed at every product (its fastest recipe on Hopper).
RECIPE = "tensorwise"
#: The block of the encoder whose linear layers are converted (the class ``models.compile_layers`` compiles).
LAYER_CLASS = "EsmLayer"
INSTALL_HINT = "pip install 'bioft-tutorial[fp8]' (or pip install torchao; 0.17.0 matches torch 2.11)"


def fp8_unavailable(device: str | torch.device) -> str | None:
    """Why ``device`` cannot run FP8 products, or ``None`` if it can (a CUDA GPU of capability >= 8.9)."""
    device = torch.device(device)
    if device.type != "cuda":
        return (f"the {device.type.upper()} has no FP8 matrix units (FP8 needs an NVIDIA GPU of compute capability "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer)")
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name(device)} has compute capability {capability[0]}.{capability[1]}; FP8 "
                f"needs {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ada, Hopper, Blackwell)")
    return None


def frozen_encoder_linears(model: torch.nn.Module) -> list[str]:
    """Names (as in ``model.named_modules()``) of the layers :func:`convert_frozen_linears` converts.

    A layer qualifies when it is a plain ``torch.nn.Linear`` inside an ``EsmLayer``, its weight is frozen
    (``requires_grad=False``) and both its dimensions are multiples of 16 (what FP8 tensor cores take).
    LoRA's ``lora_A``/``lora_B`` (trainable), the task head and the contact head (outside the encoder layers)
    never qualify.
    """
    names = []
    for layer_name, layer in model.named_modules():
        if type(layer).__name__ != LAYER_CLASS:
            continue
        for name, module in layer.named_modules():
            if (type(module) is torch.nn.Linear and not module.weight.requires_grad
                    and module.in_features % 16 == 0 and module.out_features % 16 == 0):
                names.append(f"{layer_name}.{name}" if layer_name else name)
    return names


def fp8_linears(model: torch.nn.Module) -> list[str]:
    """Names of the layers of ``model`` that already compute in FP8 (torchao ``Float8Linear``)."""
    return [name for name, module in model.named_modules() if type(module).__name__ == "Float8Linear"]


def convert_frozen_linears(model: torch.nn.Module, *, emulate: bool = False) -> list[str]:
    """Swap the frozen encoder linears of ``model`` (:func:`frozen_encoder_linears`) for FP8 ones, in place.

    Args:
        model: an ESM-2 model, plain or PEFT-wrapped, with its trainable parameters already chosen
            (``lora.prepare_model``); weights on the device they will train on.
        emulate: compute the FP8 products as higher-precision products of FP8-rounded operands (torchao's
            emulation: runs on the CPU, for tests; no speed-up).

    Returns:
        The names of the converted layers (empty if none qualified).

    Raises:
        ImportError: torchao is not installed; the message says how to install it.
    """
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as err:
        raise ImportError(f"precision='fp8' needs torchao, which is not installed: {INSTALL_HINT}; or train with "
                          f"precision='bf16'") from err
    names = frozen_encoder_linears(model)
    if names:
        config = dataclasses.replace(Float8LinearConfig.from_recipe_name(RECIPE), emulate=emulate)
        chosen = set(names)
        convert_to_float8_training(model, config=config, module_filter_fn=lambda module, fqn: fqn in chosen)
    return names


def enable_fp8(model: torch.nn.Module, device: str | torch.device) -> bool:
    """FP8 products for the frozen encoder linears of ``model`` where ``device`` has FP8; else a warning.

    ``train.train`` calls this for ``TrainConfig(precision="fp8")`` after storing the frozen weights in bf16.
    Calling it again on a converted model converts nothing new.

    Returns:
        Whether the model now computes its frozen encoder linears in FP8.

    Raises:
        ImportError: the device has FP8 but torchao is not installed (the message says how to install it).
    """
    device = torch.device(device)
    reason = fp8_unavailable(device)
    fallback = "bf16" if device.type == "cuda" else "fp32"
    if reason is not None:
        log.warning("precision='fp8' is off: %s. Training in %s instead", reason, fallback)
        return False
    converted = convert_frozen_linears(model, emulate=device.type != "cuda")  # emulation: tests only
    total = len(fp8_linears(model))
    if total == 0:
        log.warning("precision='fp8' is off: the model has no frozen linear layer inside an %s (full fine-tuning "
                    "trains every weight). Training in %s instead", LAYER_CLASS, fallback)
        return False
    log.info("FP8 products (torchao, %s scaling) for %d frozen linear layers (%d converted now)", RECIPE, total,
             len(converted))
    return True
