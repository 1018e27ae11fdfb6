"""Packed batches: many chains in one row, no padding, attention kept inside each chain.

A padded batch of proteins wastes compute on padding: chains are 50 to 1,022 residues long, so a batch
padded to its longest chain is often half padding. *Packing* concatenates chains into one row of a fixed
token budget and tells attention where each chain starts (``cu_seq_lens``, cumulative chain lengths),
so that a chain never attends to its neighbours; the rotary position of every token restarts at 0 at
each chain (``position_ids``). Nothing else in a transformer mixes tokens, so each chain gets exactly
the result it gets alone.

The batch is a dict for ``model(**batch)`` with Hugging Face's own names (those of
``DataCollatorWithFlattening``)::

    input_ids      (1, T)  int64   chains one after another, each with its <cls> ... <eos>
    position_ids   (1, T)  int64   0, 1, ... restarting at each chain
    labels         (1, T)  int64   -100 where nothing is learned (special tokens, unresolved residues)
    cu_seq_lens_q  (N+1,)  int32   chain boundaries: chain i is tokens cu[i]:cu[i+1]
    cu_seq_lens_k  (N+1,)  int32   the same (self-attention)
    max_length_q   int             longest chain (an upper bound is fine), tokens
    max_length_k   int             the same

:func:`enable_packed_attention` switches a Hugging Face ESM-2 (plain or wrapped by PEFT) to the attention
function :func:`packed_attention`, registered with ``transformers.AttentionInterface``. On a CUDA GPU it
runs PyTorch's variable-length FlashAttention kernel (``torch.nn.attention.varlen.varlen_attn``); elsewhere
one SDPA call per chain (same math). Padded batches (with ``attention_mask``) still work on the switched
model. Weights are untouched: a ``facebook/esm2_*`` checkpoint and a PEFT adapter load as they are.
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

#: Name under which :func:`packed_attention` is registered in ``transformers.AttentionInterface``.
PACKED_ATTENTION = "bioft_packed"
#: Tokens of the longest ESM-2 chain: 1,022 residues plus <cls> and <eos>.
ESM2_MAX_TOKENS = 1024
PACKED_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")

try:  # torch >= 2.10 (prototype API; `scale` arrived later than the function itself)
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
    _VARLEN_HAS_SCALE = "scale" in inspect.signature(_varlen_attn).parameters
except ImportError:  # older torch: the per-chain SDPA backend is used
    _varlen_attn, _VARLEN_HAS_SCALE = None, False


# --------------------------------------------------------------------------------------------- batches
def pack_rows(lengths: Sequence[int], token_budget: int, *, max_chains: int | None = None,
              sort: bool = False, window: int = 256) -> list[list[int]]:
    """Assign chains to rows of at most ``token_budget`` tokens (first fit).

    Each chain goes into the first row with room for it among the ``window`` most recently opened rows
    (older rows count as full, which keeps the cost linear in the number of chains). With ``sort=True``
    chains are taken longest first ("first-fit decreasing", the tightest packing); with ``sort=False`` they
    keep the given order (shuffle first), so that every row holds a representative mix of lengths.

    Args:
        lengths: tokens per chain (special tokens included).
        token_budget: tokens per row.
        max_chains: at most this many chains per row (keeps ``cu_seq_lens`` a fixed size).
        sort: longest first.
        window: rows still open for new chains.

    Returns:
        Rows as lists of indices into ``lengths``, in the order rows were opened.

    Raises:
        ValueError: a chain longer than the budget.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort else range(len(lengths))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        if lengths[i] > token_budget:
            raise ValueError(f"chain {i} has {lengths[i]} tokens, more than token_budget={token_budget}; "
                             "crop chains to the model limit or raise the budget")
        for r in range(max(0, len(rows) - window), len(rows)):
            if room[r] >= lengths[i] and (max_chains is None or len(rows[r]) < max_chains):
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(token_budget - lengths[i])
    return rows


def collate_packed(examples: Sequence[dict], *, pad_to: int | None = None, max_chains: int | None = None,
                   max_length: int = ESM2_MAX_TOKENS, pad_token_id: int = 1) -> dict:
    """Concatenate tokenized chains into one packed row (see the module docstring for the keys).

    Args:
        examples: dicts with ``input_ids`` (a list or 1-D tensor with the special tokens) and optionally
            ``labels`` (same length, ``-100`` where nothing is learned).
        pad_to: make the row exactly this many tokens (static shapes for ``torch.compile``). The tail is
            filled with padding "chains" of at most ``max_length`` tokens, labelled -100, attending only
            among themselves; ``max_length_*`` is then ``max_length`` for every batch.
        max_chains: pad ``cu_seq_lens`` to ``max_chains + 1`` entries by repeating the last one (empty
            chains), so its shape never changes either. Counts the padding chains.
        max_length: the longest chain allowed, tokens.
        pad_token_id: token id of the padding (ESM-2: 1).

    Returns:
        The packed batch, on the CPU.

    Raises:
        ValueError: a chain longer than ``max_length``, a row longer than ``pad_to``, more chains than
            ``max_chains``, or labels of the wrong length.
    """
    ids, labels, lengths = [], [], []
    for n, ex in enumerate(examples):
        chain = torch.as_tensor(ex["input_ids"], dtype=torch.long).flatten()
        lab = torch.as_tensor(ex["labels"], dtype=torch.long).flatten() if ex.get("labels") is not None \
            else torch.full_like(chain, -100)
        if lab.numel() != chain.numel():
            raise ValueError(f"example {n}: {lab.numel()} labels for {chain.numel()} tokens; give one label per "
                             "token, -100 on <cls>, <eos> and unresolved residues")
        if chain.numel() > max_length:
            raise ValueError(f"example {n} has {chain.numel()} tokens, more than max_length={max_length}; crop it "
                             f"(ESM-2 takes {ESM2_MAX_TOKENS - 2} residues plus <cls> and <eos>)")
        ids.append(chain), labels.append(lab), lengths.append(chain.numel())
    used = sum(lengths)
    if pad_to is not None:
        if used > pad_to:
            raise ValueError(f"{used} tokens do not fit in pad_to={pad_to}; pack with pack_rows(..., token_budget)")
        tail = pad_to - used
        pads = [max_length] * (tail // max_length) + ([tail % max_length] if tail % max_length else [])
        for p in pads:
            ids.append(torch.full((p,), pad_token_id)), labels.append(torch.full((p,), -100)), lengths.append(p)
    n_chains = len(lengths)
    if max_chains is not None and n_chains > max_chains:
        raise ValueError(f"{n_chains} chains (padding chains included) exceed max_chains={max_chains}; pass "
                         "max_chains to pack_rows too, or raise it")
    cu = torch.zeros(max(n_chains, max_chains or 0) + 1, dtype=torch.int32)
    cu[1:n_chains + 1] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    cu[n_chains + 1:] = cu[n_chains]
    if not ids:
        raise ValueError("no examples to pack; give at least one chain")
    longest = max_length if pad_to is not None else max(lengths)
    return {"input_ids": torch.cat(ids)[None], "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
            "labels": torch.cat(labels)[None], "cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(),
            "max_length_q": longest, "max_length_k": longest}


def make_collate(*, pad_to: int | None = None, max_chains: int | None = None, max_length: int = ESM2_MAX_TOKENS,
                 pad_token_id: int = 1) -> Callable[[Sequence[dict]], dict]:
    """A ``collate_fn`` for a ``DataLoader`` whose batches are the rows of :func:`pack_rows`."""
    def collate(examples: Sequence[dict]) -> dict:
        return collate_packed(examples, pad_to=pad_to, max_chains=max_chains, max_length=max_length,
                              pad_token_id=pad_token_id)
    return collate


def static_collate(token_budget: int, shortest_chain: int, pad_token_id: int = 1) -> Callable[..., dict]:
    """A packed collate with few distinct shapes, for ``torch.compile(dynamic=False)``.

    Each row is padded to ``token_budget / 2**k`` tokens, the smallest such size (>= 1,024) that holds it, and
    ``cu_seq_lens`` to a fixed size that fits rows of chains of at least ``shortest_chain`` tokens. A run then
    compiles at most a handful of graphs, also after an out-of-memory back-off halves the token budget.

    Args:
        token_budget: tokens of the fullest row.
        shortest_chain: tokens (specials included) of the shortest chain that will be packed.
        pad_token_id: token id of the padding.

    Returns:
        ``collate(examples, pad_token_id=pad_token_id) -> dict``, like :func:`collate_packed`.
    """
    if shortest_chain < 1:
        raise ValueError(f"shortest_chain={shortest_chain} must be >= 1 (tokens of the shortest chain)")
    max_chains = 8 * -(-(token_budget // shortest_chain + -(-token_budget // ESM2_MAX_TOKENS)) // 8)

    def collate(examples: Sequence[dict], pad_token_id: int = pad_token_id) -> dict:
        tokens = sum(len(ex["input_ids"]) for ex in examples)
        pad_to = token_budget
        while pad_to // 2 >= max(tokens, ESM2_MAX_TOKENS):
            pad_to //= 2
        return collate_packed(examples, pad_to=pad_to, max_chains=max_chains, pad_token_id=pad_token_id)
    return collate


def collate_padded(examples: Sequence[dict], *, pad_to: int | None = None, pad_token_id: int = 1) -> dict:
    """The usual padded batch ``(B, L)`` with ``attention_mask`` (the reference the packed batch must match).

    Args:
        examples: as for :func:`collate_packed`.
        pad_to: pad every row to this many tokens (default: the longest chain).

    Returns:
        ``input_ids``, ``attention_mask`` (1 = token, 0 = padding) and ``labels`` (-100 on padding), ``(B, L)``.
    """
    chains = [torch.as_tensor(ex["input_ids"], dtype=torch.long).flatten() for ex in examples]
    length = max([c.numel() for c in chains] + [pad_to or 0])
    batch = {"input_ids": torch.full((len(chains), length), pad_token_id, dtype=torch.long),
             "attention_mask": torch.zeros(len(chains), length, dtype=torch.long),
             "labels": torch.full((len(chains), length), -100, dtype=torch.long)}
    for b, (ex, c) in enumerate(zip(examples, chains)):
        batch["input_ids"][b, :c.numel()] = c
        batch["attention_mask"][b, :c.numel()] = 1
        if ex.get("labels") is not None:
            batch["labels"][b, :c.numel()] = torch.as_tensor(ex["labels"], dtype=torch.long).flatten()
    return batch


def move_batch(batch: dict, device: str | torch.device, non_blocking: bool = True) -> dict:
    """Tensors to ``device``; plain values (``max_length_*``) pass through unchanged."""
    return {k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v for k, v in batch.items()}


def unpack(values: torch.Tensor, cu_seq_lens: torch.Tensor) -> list[torch.Tensor]:
    """Split per-token outputs of a packed row back into chains.

    Args:
        values: ``(1, T, ...)`` or ``(T, ...)``, e.g. logits ``(1, T, num_labels)``.
        cu_seq_lens: ``(N+1,)`` chain boundaries of the batch.

    Returns:
        One tensor ``(L_i, ...)`` per non-empty chain (padding chains included, last).
    """
    flat = values.reshape(-1, *values.shape[2:]) if values.dim() >= 2 and values.shape[0] == 1 else values
    bounds = cu_seq_lens.tolist()
    return [flat[s:e] for s, e in zip(bounds[:-1], bounds[1:]) if e > s]


# ------------------------------------------------------------------------------------------- attention
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


def _use_varlen(module: nn.Module, q: torch.Tensor) -> bool:
    """Varlen FlashAttention if enabled on this layer and the inputs are bf16/fp16 on a CUDA GPU."""
    return (getattr(module, "_bioft_backend", "sdpa") == "varlen" and q.is_cuda
            and q.dtype in (torch.bfloat16, torch.float16))


def packed_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """Attention function for ``transformers.AttentionInterface``: variable-length if the batch is packed.

    Args:
        module: the calling attention layer; its ``_bioft_backend`` (set by :func:`enable_packed_attention`)
            is ``"varlen"`` or ``"sdpa"``.
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
    if _use_varlen(module, q):
        out = _varlen(q, k, v, cu, int(kwargs.get("max_length_q") or tokens), scale)
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


def _probe_varlen(device: torch.device, dtype: torch.dtype) -> str | None:
    """Run varlen attention once (forward and backward, with an empty chain) against per-chain SDPA.

    Returns:
        ``None`` if it works and agrees, else the reason it cannot be used.
    """
    if _varlen_attn is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    try:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(12, 2, 64, device=device, dtype=dtype, generator=g).requires_grad_() for _ in range(3))
        cu = torch.tensor([0, 5, 5, 12, 12], device=device, dtype=torch.int32)
        out = _varlen(q, k, v, cu, 16, 0.125)
        ref = _chain_sdpa(q.float(), k.float(), v.float(), cu, 0.125)
        out.float().sum().backward()
        err = (out.float() - ref).abs().max().item()
        if err > 2e-2 or not torch.isfinite(q.grad).all():
            return f"varlen_attn disagrees with SDPA (max abs diff {err:.3g})"
    except Exception as exc:  # noqa: BLE001 - any failure means: use the fallback
        return f"varlen_attn failed: {type(exc).__name__}: {exc}"
    return None


def enable_packed_attention(model: nn.Module, backend: str = "auto") -> str:
    """Switch an ESM-2 (plain or PEFT-wrapped) to :func:`packed_attention`, in place.

    Also registers the per-chain token-dropout hook (see :func:`_per_chain_token_dropout`). Padded
    batches keep working; weights, ``state_dict`` keys and ``save_pretrained`` output do not change.

    Args:
        model: an ESM-2 model from transformers (``EsmModel``, ``EsmForTokenClassification``, ``EsmForMaskedLM``).
        backend: ``"auto"`` (varlen FlashAttention on a CUDA GPU if it runs, else per-chain SDPA),
            ``"varlen"`` or ``"sdpa"``.

    Returns:
        The backend in use: ``"varlen"`` or ``"sdpa"``. (``"varlen"`` runs on bf16/fp16 inputs, i.e. under
        autocast or with bf16 weights; fp32 inputs take the per-chain SDPA path.)

    Raises:
        ValueError: an unknown backend, a sequence-classification model (its head reads the first token of
            each row, which a packed row shares between chains), or an ESM variant whose token dropout
            cannot be corrected per chain.
    """
    if backend not in ("auto", "varlen", "sdpa"):
        raise ValueError(f"unknown backend {backend!r}; use 'auto', 'varlen' or 'sdpa'")
    classes = {type(m).__name__ for m in model.modules()}
    if "EsmForSequenceClassification" in classes:
        raise ValueError("packed batches need a per-token head (token classification, masked LM, embeddings); "
                         "EsmForSequenceClassification pools the first token of each row; use padded batches")
    attention = [m for m in model.modules() if type(m).__name__ == "EsmSelfAttention"]
    if not attention:
        raise ValueError(f"{type(model).__name__} has no EsmSelfAttention layers; is it an ESM-2 model?")
    register_packed_attention()
    param = next(model.parameters())
    reason = _probe_varlen(param.device, torch.bfloat16) if param.is_cuda and backend != "sdpa" else "not on a CUDA GPU"
    if backend == "varlen" and reason:
        raise RuntimeError(f"backend='varlen' is unavailable: {reason}")
    chosen = "sdpa" if reason else "varlen"
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
