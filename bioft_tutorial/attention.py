"""Attention for packed rows: each chain attends only to itself, and ESM-2's token dropout is per chain.

A packed row (:mod:`bioft_tutorial.packing`) holds many chains one after another, with ``cu_seq_lens`` (the
cumulative chain lengths) saying where each starts. :func:`enable_packed_attention` switches a Hugging Face
ESM-2 (plain or wrapped by PEFT) to :func:`packed_attention`, registered with
``transformers.AttentionInterface``. It runs one of three kernels, which compute the same attention:

* ``"varlen"`` (the default on a CUDA GPU): PyTorch's variable-length FlashAttention
  (``torch.nn.attention.varlen.varlen_attn``, FlashAttention-2's kernels), which never forms the ``T x T``
  score matrix;
* ``"fa4"``: the variable-length kernels of FlashAttention-4 (``pip install flash-attn-4``), written for
  Hopper and Blackwell GPUs (compute capability 9.x and 10.x), wrapped here as a ``torch.library`` custom
  operator so that ``torch.compile`` treats it as one opaque call with a known output shape;
* ``"sdpa"`` (the CPU, and fp32): one SDPA call per chain.

Padded batches (with ``attention_mask``) still work on the switched model. Weights are untouched: a
``facebook/esm2_*`` checkpoint and a PEFT adapter load as they are.
"""
from __future__ import annotations

import importlib
import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: Name under which :func:`packed_attention` is registered in ``transformers.AttentionInterface``.
PACKED_ATTENTION = "bioft_packed"
#: What ``enable_packed_attention(backend=...)`` (and ``TrainConfig.attention``) accepts.
BACKENDS = ("auto", "varlen", "fa4", "sdpa")

try:  # torch >= 2.10 (prototype API; `scale` arrived later than the function itself)
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
    _VARLEN_HAS_SCALE = "scale" in inspect.signature(_varlen_attn).parameters
except ImportError:  # older torch: the per-chain SDPA backend is used
    _varlen_attn, _VARLEN_HAS_SCALE = None, False


def _chain_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float) -> torch.Tensor:
    """One SDPA call per chain. ``q, k, v``: ``(T, H, D)``; returns ``(T, H, D)``."""
    bounds = cu.tolist()
    if bounds[-1] != q.shape[0]:
        raise ValueError(f"cu_seq_lens covers {bounds[-1]} tokens but the row has {q.shape[0]}; build the batch "
                         "with packing.collate_packed")
    parts = [F.scaled_dot_product_attention(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1),
                                            v[s:e].transpose(0, 1), scale=scale).transpose(0, 1)
             for s, e in zip(bounds[:-1], bounds[1:]) if e > s]
    return torch.cat(parts)


def _varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
            scale: float) -> torch.Tensor:
    """PyTorch's variable-length FlashAttention. ``q, k, v``: ``(T, H, D)`` in bf16/fp16 on CUDA."""
    if _VARLEN_HAS_SCALE:
        return _varlen_attn(q, k, v, cu, cu, max_len, max_len, scale=scale)
    return _varlen_attn(q * (scale * q.shape[-1] ** 0.5), k, v, cu, cu, max_len, max_len)  # default 1/sqrt(D)


#: Python module of FlashAttention-4's kernels (the ``flash-attn-4`` package).
FA4_MODULE = "flash_attn.cute.interface"
FA4_INSTALL_HINT = "pip install 'bioft-tutorial[fa4]' (or pip install flash-attn-4; Hopper or Blackwell GPUs)"


@torch.library.custom_op("bioft::fa4_varlen_fwd", mutates_args=())
def _fa4_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashAttention-4 forward on packed ``(T, H, D)`` inputs: ``(out (T, H, D), lse (H, T) fp32)``."""
    from flash_attn.cute.interface import _flash_attn_fwd
    out, lse, *_ = _flash_attn_fwd(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_len,
                                   max_seqlen_k=max_len, softmax_scale=scale, causal=False, return_lse=True)
    return out, lse


@_fa4_fwd.register_fake
def _(q, k, v, cu, max_len, scale):
    return torch.empty_like(q), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


@torch.library.custom_op("bioft::fa4_varlen_bwd", mutates_args=())
def _fa4_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
             lse: torch.Tensor, cu: torch.Tensor, max_len: int,
             scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FlashAttention-4 backward: ``(dq, dk, dv)``, each shaped like its input."""
    from flash_attn.cute.interface import _flash_attn_bwd
    dq, dk, dv = _flash_attn_bwd(q, k, v, out, grad_out, lse, scale, False, 0.0, cu_seqlens_q=cu,
                                 cu_seqlens_k=cu, max_seqlen_q=max_len, max_seqlen_k=max_len)[:3]
    return dq, dk, dv


@_fa4_bwd.register_fake
def _(grad_out, q, k, v, out, lse, cu, max_len, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fa4_setup_context(ctx, inputs: tuple, output: tuple) -> None:
    q, k, v, cu, max_len, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu)
    ctx.max_len, ctx.scale = max_len, scale


def _fa4_backward(ctx, grad_out: torch.Tensor, grad_lse: torch.Tensor | None) -> tuple:
    q, k, v, out, lse, cu = ctx.saved_tensors
    dq, dk, dv = _fa4_bwd(grad_out.contiguous(), q, k, v, out, lse, cu, ctx.max_len, ctx.scale)
    return dq, dk, dv, None, None, None


_fa4_fwd.register_autograd(_fa4_backward, setup_context=_fa4_setup_context)


def _fa4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
         scale: float) -> torch.Tensor:
    """FlashAttention-4's variable-length attention. ``q, k, v``: ``(T, H, D)`` in bf16/fp16 on CUDA."""
    return _fa4_fwd(q.contiguous(), k.contiguous(), v.contiguous(), cu, max_len, scale)[0]


def _use_kernel(module: nn.Module, q: torch.Tensor) -> str:
    """The layer's GPU kernel (``"varlen"`` or ``"fa4"``) if the inputs are bf16/fp16 on a CUDA GPU, else ``"sdpa"``."""
    backend = getattr(module, "_bioft_backend", "sdpa")
    return backend if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) else "sdpa"


def packed_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """Attention function for ``transformers.AttentionInterface``: variable-length if the batch is packed.

    Args:
        module: the calling attention layer; its ``_bioft_backend`` (set by :func:`enable_packed_attention`)
            is ``"varlen"``, ``"fa4"`` or ``"sdpa"``.
        query, key, value: ``(B, H, T, D)``; ESM-2 has already scaled ``query`` and passes ``scaling=1.0``.
        attention_mask: ``None`` for packed batches; a padded batch's 4-D mask otherwise.
        scaling: factor on ``q @ k.T`` (``None``: ``D ** -0.5``).
        dropout: attention dropout probability (0 for ESM-2; packed batches need 0).
        **kwargs: ``cu_seq_lens_q`` ``(N+1,)`` int32 and ``max_length_q`` (int) mark a packed batch.

    Returns:
        ``(output (B, T, H, D), None)``: no attention weights are materialised.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # a padded batch: plain SDPA with the padding mask
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if attention_mask is not None or dropout > 0:
        raise ValueError("a packed batch (cu_seq_lens_q given) takes no attention_mask and no attention dropout; "
                         "drop 'attention_mask' from the batch and set attention_probs_dropout_prob=0")
    batch, heads, tokens, dim = query.shape
    scale = dim ** -0.5 if scaling is None else scaling
    q, k, v = (t.transpose(1, 2).reshape(batch * tokens, heads, dim) for t in (query, key, value))
    cu = cu.to(device=q.device, dtype=torch.int32)
    kernel, max_len = _use_kernel(module, q), int(kwargs.get("max_length_q") or tokens)
    if kernel == "varlen":
        out = _varlen(q, k, v, cu, max_len, scale)
    elif kernel == "fa4":
        out = _fa4(q, k, v, cu, max_len, scale)
    else:
        out = _chain_sdpa(q, k, v, cu, scale)
    return out.view(batch, tokens, heads, dim), None


def _packed_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor | None:
    """Mask factory for :data:`PACKED_ATTENTION`: nothing for packed rows, SDPA's 4-D mask for padded ones."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import sdpa_mask
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register_packed_attention() -> str:
    """Register :func:`packed_attention` (and its mask factory) with transformers; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, _packed_mask)
    return PACKED_ATTENTION


def _per_chain_token_dropout(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
    """Forward hook on ``EsmEmbeddings``: make ESM-2's token-dropout scale per chain, not per row.

    ESM-2 zeroes ``<mask>`` embeddings and scales the rest by ``(1 - 0.12) / (1 - f)``, with ``f`` the
    fraction of ``<mask>`` tokens in the row. In a packed row ``f`` must be each chain's own fraction; this
    multiplies each token by ``(1 - f_row) / (1 - f_chain)``, exactly 1 when the row has no ``<mask>``.
    """
    input_ids, position_ids = kwargs.get("input_ids"), kwargs.get("position_ids")
    if input_ids is None or position_ids is None or kwargs.get("attention_mask") is not None:
        return output  # not a packed batch
    rows, tokens = input_ids.shape
    offsets = tokens * torch.arange(rows, device=input_ids.device)[:, None]  # chain ids unique across rows
    chain = (position_ids.expand(rows, tokens) == 0).cumsum(-1) + offsets
    is_mask = (input_ids == module.mask_token_id).flatten().to(torch.float32)
    n_mask = torch.zeros(rows * tokens + tokens + 1, device=input_ids.device).index_add_(0, chain.flatten(), is_mask)
    n_tok = torch.zeros_like(n_mask).index_add_(0, chain.flatten(), torch.ones_like(is_mask))
    f_chain = (n_mask / n_tok.clamp(min=1))[chain]                       # (rows, tokens)
    f_row = is_mask.view(rows, tokens).mean(-1, keepdim=True)             # HF's per-row fraction
    return (output * ((1 - f_row) / (1 - f_chain))[..., None]).to(output.dtype)


def _fa4_missing(device: torch.device) -> str | None:
    """Why FlashAttention-4 cannot run on ``device``, or ``None``."""
    if device.type != "cuda":
        return "FlashAttention-4 runs on NVIDIA GPUs only"
    major = torch.cuda.get_device_capability(device)[0]
    if major not in (9, 10):
        return (f"FlashAttention-4 needs a Hopper or Blackwell GPU (compute capability 9.x or 10.x); "
                f"{torch.cuda.get_device_name(device)} has {major}.x")
    try:
        importlib.import_module(FA4_MODULE)
    except Exception as exc:  # noqa: BLE001 - not installed, or its CUDA libraries do not load
        return f"{FA4_MODULE} does not import ({type(exc).__name__}: {exc}); {FA4_INSTALL_HINT}"
    return None


def _probe(kernel: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Run a GPU kernel once (forward and backward, with empty chains) against per-chain SDPA in fp32.

    Returns:
        ``None`` if it works and agrees (output and input gradients), else the reason it cannot be used.
    """
    missing = (_fa4_missing(device) if kernel == "fa4" else "not on a CUDA GPU" if device.type != "cuda" else
               None if _varlen_attn is not None else f"torch {torch.__version__} has no torch.nn.attention.varlen")
    if missing:
        return missing
    run = _fa4 if kernel == "fa4" else _varlen
    try:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(12, 2, 64, device=device, dtype=dtype, generator=g).requires_grad_() for _ in range(3))
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
        cu = torch.tensor([0, 5, 5, 12, 12], device=device, dtype=torch.int32)
        grad = torch.randn(12, 2, 64, device=device, generator=g)
        run(q, k, v, cu, 16, 0.125).float().backward(grad)
        _chain_sdpa(q32, k32, v32, cu, 0.125).backward(grad)
        errors = [(a.grad.float() - b.grad).abs().max().item() for a, b in ((q, q32), (k, k32), (v, v32))]
        out_err = (run(q, k, v, cu, 16, 0.125).float() - _chain_sdpa(q32, k32, v32, cu, 0.125)).abs().max().item()
        if not max(out_err, *errors) <= 5e-2:  # bf16 rounding is ~1e-2 here; NaN fails too
            return f"{kernel} disagrees with SDPA (max abs diff: output {out_err:.3g}, gradients {max(errors):.3g})"
    except Exception as exc:  # noqa: BLE001 - any failure means: use the fallback
        return f"{kernel} failed: {type(exc).__name__}: {exc}"
    return None


def enable_packed_attention(model: nn.Module, backend: str = "auto") -> str:
    """Switch an ESM-2 (plain or PEFT-wrapped) to :func:`packed_attention`, in place.

    Also registers the per-chain token-dropout hook (see :func:`_per_chain_token_dropout`). Padded
    batches keep working; weights, ``state_dict`` keys and ``save_pretrained`` output do not change.

    Args:
        model: an ESM-2 model from transformers (``EsmModel``, ``EsmForTokenClassification``, ``EsmForMaskedLM``).
        backend: ``"auto"`` (varlen FlashAttention on a CUDA GPU if it runs, else per-chain SDPA),
            ``"varlen"``, ``"fa4"`` (FlashAttention-4; an error where it is missing) or ``"sdpa"``.

    Returns:
        The backend in use: ``"varlen"``, ``"fa4"`` or ``"sdpa"``. (The GPU kernels run on bf16/fp16 inputs,
        i.e. under autocast or with bf16 weights; fp32 inputs take the per-chain SDPA path.)

    Raises:
        ValueError: an unknown backend, a sequence-classification model (its head reads the first token of
            each row, which a packed row shares between chains), or an ESM variant whose token dropout
            cannot be corrected per chain.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(map(repr, BACKENDS))}")
    classes = {type(m).__name__ for m in model.modules()}
    if "EsmForSequenceClassification" in classes:
        raise ValueError("packed batches need a per-token head (token classification, masked LM, embeddings); "
                         "EsmForSequenceClassification pools the first token of each row; use padded batches")
    attention = [m for m in model.modules() if type(m).__name__ == "EsmSelfAttention"]
    if not attention:
        raise ValueError(f"{type(model).__name__} has no EsmSelfAttention layers; is it an ESM-2 model?")
    register_packed_attention()
    param = next(model.parameters())
    kernel = "fa4" if backend == "fa4" else "varlen"
    reason = None if backend == "sdpa" else _probe(kernel, param.device, torch.bfloat16)
    if backend in ("varlen", "fa4") and reason:
        raise RuntimeError(f"backend={backend!r} is unavailable: {reason}")
    chosen = "sdpa" if reason or backend == "sdpa" else kernel
    if reason and backend == "auto" and param.is_cuda:
        log.warning("packed attention falls back to per-chain SDPA (slow): %s", reason)
    for module in attention:
        module._bioft_backend = chosen
        module.config._attn_implementation = PACKED_ATTENTION
    for module in model.modules():
        if type(module).__name__ == "EsmEmbeddings" and module.token_dropout \
                and not hasattr(module, "_bioft_token_dropout_hook"):
            if module.layer_norm is not None or module.position_embedding_type != "rotary":
                raise ValueError("per-chain token dropout needs ESM-2 embeddings (rotary, no embedding LayerNorm)")
            module._bioft_token_dropout_hook = module.register_forward_hook(_per_chain_token_dropout, with_kwargs=True)
    return chosen
