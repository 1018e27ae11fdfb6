"""A LoRA linear layer that costs little more than its frozen layer: the update is folded into the weight.

PEFT's LoRA layer computes ``y = x W^T + s (x A^T) B^T`` (``s = alpha / r``) as written: the frozen product,
then two thin products (``x A^T`` has only ``r`` columns) and an addition, each a pass over a ``tokens x
width`` tensor. Its backward pass has six thin products and more additions. Thin products do almost no
arithmetic, so each costs what reading and writing its operands costs: on an H200 training ESM-2 650M, the
adapters of the six linear layers per encoder layer took about a quarter of the step.

Since ``A`` and ``B`` are tiny (``r x d_in``, ``d_out x r``), this layer instead merges them into the
weight at every call, ``W' = W + s B A`` (one small product of the weight's size), and runs one product
``y = x W'^T``. The backward pass needs

* ``dx = dy W'`` (one product, as for a frozen layer alone),
* ``dB = s dy^T (x A^T)`` and ``dA = s (dy B)^T x``: four thin products in all.

The values are those of PEFT's layer up to rounding (``W'`` is rounded to the compute precision, as the
product ``x W^T`` is); the adapter's parameters, their names and what ``save_pretrained`` writes are PEFT's,
since :class:`FusedLoraLinear` is PEFT's ``Linear`` with only ``forward`` replaced. Where the trick does not
apply (dropout on the adapter's input, several adapters at once, a merged or disabled adapter, a bias on ``B``,
a frozen layer that is not a plain ``nn.Linear``, such as an FP8 one, a weight that trains, or a layer both
compiled and checkpointed on PyTorch before 2.13, see :data:`CHECKPOINT_MARKS_LOST`) it calls PEFT's own forward.

:func:`bioft_tutorial.lora.esm2_lora_config` registers this layer (``fused=True``, the default) with PEFT's
custom-module hook (``LoraConfig._register_custom_module``).
"""
from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn

#: PyTorch before 2.13 drops activation checkpointing's recompute marks from the operations inside a custom
#: ``autograd.Function`` when it compiles a checkpointed layer (pytorch/pytorch#177396): the compiled layer then
#: keeps ``W'`` and the layer's activations for the backward pass (ESM-2 3B LoRA at 8,192 tokens: 23.8 GiB
#: instead of 8.4, torch 2.11 on an H200). There a layer compiled *and* checkpointed takes PEFT's forward.
CHECKPOINT_MARKS_LOST = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 13)


class _LoraLinearFunction(torch.autograd.Function):
    """``y = x (W + s B A)^T + bias`` with a backward pass of one full and four thin products."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dtype: torch.dtype):
        acc = torch.promote_types(weight.dtype, torch.float32)  # the merge in fp32 (fp64 stays), the product in `dtype`
        with torch.autocast(x.device.type, enabled=False):
            merged = torch.addmm(weight.to(acc), lora_b.to(acc), lora_a.to(acc), alpha=scaling).to(dtype)
            y = nn.functional.linear(x, merged, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(x, merged, lora_a, lora_b)
        ctx.scaling = scaling
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, merged, lora_a, lora_b = ctx.saved_tensors
        grad_y = grad_y.to(merged.dtype)
        x2, g2 = x.reshape(-1, x.shape[-1]), grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (g2 @ merged).view(x.shape)
        if ctx.needs_input_grad[2]:
            grad_bias = g2.sum(0)
        grad_a = grad_b = None
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            xa = x2 @ lora_a.to(x2.dtype).t()  # x A^T: recomputed here rather than stored (tokens x r)
            gb = g2 @ lora_b.to(g2.dtype)  # dy B
            grad_b = (g2.t() @ xa).to(lora_b.dtype).mul_(ctx.scaling)
            grad_a = (gb.t() @ x2).to(lora_a.dtype).mul_(ctx.scaling)
        return grad_x, None, grad_bias, grad_a, grad_b, None, None


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """``x W^T + bias + scaling * (x A^T) B^T`` through the merged weight (see the module docstring).

    ``weight`` (``d_out x d_in``) and ``bias`` are frozen; ``lora_a`` is ``r x d_in``, ``lora_b`` ``d_out x r``.
    The product runs in the autocast dtype where autocast is on, else in ``weight``'s dtype.
    """
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    return _LoraLinearFunction.apply(x.to(dtype), weight, bias, lora_a, lora_b, float(scaling), dtype)


class FusedLoraLinear(PeftLinear):
    """PEFT's LoRA ``Linear`` whose forward pass runs :func:`lora_linear` where it can (module docstring)."""

    def _fused_adapter(self, args: tuple, kwargs: dict) -> str | None:
        """The one active adapter if the fused product applies to this call, else ``None``."""
        if args or kwargs or self.disable_adapters or self.merged or self.fan_in_fan_out:
            return None
        active = [a for a in self.active_adapters if a in self.lora_A]
        base = self.get_base_layer()
        if len(active) != 1 or active[0] in self.lora_variant or type(base) is not nn.Linear:
            return None
        dropout = self.lora_dropout[active[0]]
        if base.weight.requires_grad or not (isinstance(dropout, nn.Identity) or not self.training or dropout.p == 0):
            return None
        if self.lora_B[active[0]].bias is not None:  # LoraConfig(lora_bias=True): B has a bias of its own
            return None
        if CHECKPOINT_MARKS_LOST and getattr(self, "_bioft_compiled_checkpoint", False):  # see the constant
            return None
        return active[0]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._fused_adapter(args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        return lora_linear(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                           self.scaling[name])
