"""Causal neural DNA language models scored with torch: a shared base, a tiny random transformer for tests,
and any Hugging Face causal LM.

Log-likelihood of a sequence ``x_0 .. x_{L-1}`` (no BOS token, as in Evo 2's ``score_sequences``)::

    sum_{t=1}^{L-1} log softmax(logits[t-1])[x_t]        # nats, L-1 predicted positions

computed in float32 from the model's logits, whatever their dtype. Batches are right-padded; a causal model's
outputs at real positions do not see the padding, and padded positions are left out of the sums.

Shared prefixes
---------------
A variant's alternate window equals its reference window before the variant (``[:split]``), so for a causal
model the log-probabilities of positions ``1 .. split`` are the reference's, and only positions after the
variant need the alternate sequence. :meth:`TorchCausalLM.log_likelihoods_shared_prefix` runs each reference
once while keeping the state of its prefix (a key/value cache), then runs only the alternate *suffixes*
``[split:]`` from that state: about half the work of a second full pass. Subclasses opt in by implementing
``_forward_with_cache`` and ``_forward_suffix``; the result equals full passes up to float rounding
(tested against them).
"""
from __future__ import annotations

import logging
import math
import pickle
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .interface import check_reduce

log = logging.getLogger(__name__)


def token_log_probs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log p(ids[:, t] | ids[:, :t])`` for ``t = 1 .. L-1``, float32, shape ``(B, L-1)``.

    Args:
        logits: ``(B, L, V)``; ``logits[:, t]`` predicts token ``t + 1``.
        ids: ``(B, L)`` token ids.
    """
    logits = logits[:, :-1].float()
    picked = logits.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


class TorchCausalLM:
    """Base class: batching, float32 log-likelihoods, ``torch.inference_mode``, shared-prefix scoring.

    Subclasses set ``name``, ``max_length``, ``device`` and implement :meth:`encode` (strings -> right-padded
    ids and lengths) and :meth:`logits` (ids -> ``(B, L, V)``).
    """

    name: str = "causal-lm"
    max_length: int = 8192
    batch_size: int = 8
    device: torch.device = torch.device("cpu")

    def encode(self, seqs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(B, L_max)`` (right-padded) and lengths ``(B,)``, on :attr:`device`."""
        raise NotImplementedError

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(B, L, V)`` for ids ``(B, L)``."""
        raise NotImplementedError

    def _reduce(self, lp: torch.Tensor, lengths: torch.Tensor, reduce: str) -> np.ndarray:
        keep = torch.arange(lp.shape[1], device=lp.device)[None, :] < (lengths[:, None] - 1)
        total = (lp * keep).sum(dim=1)
        out = total / keep.sum(dim=1).clamp(min=1) if reduce == "mean" else total
        return out.double().cpu().numpy()

    def log_likelihoods(self, seqs: Sequence[str], reduce: str = "mean") -> np.ndarray:
        """Per-sequence log-likelihood in nats, shape ``(len(seqs),)``, in batches of :attr:`batch_size`."""
        check_reduce(reduce)
        out = []
        with torch.inference_mode():
            for i in range(0, len(seqs), self.batch_size):
                ids, lengths = self.encode(seqs[i:i + self.batch_size])
                out.append(self._reduce(token_log_probs(self.logits(ids), ids), lengths, reduce))
        return np.concatenate(out) if out else np.zeros(0)

    # ----------------------------------------------------------------------------------- shared prefix
    def _forward_with_cache(self, ids: torch.Tensor, split: int) -> tuple[torch.Tensor, object]:
        """Logits ``(R, L, V)`` and whatever state positions ``[:split]`` leave for later tokens."""
        raise NotImplementedError

    def _forward_suffix(self, ids: torch.Tensor, cache: object, parent: torch.Tensor, split: int) -> torch.Tensor:
        """Logits ``(A, L - split, V)`` of suffix ids ``(A, L - split)`` continuing ``cache[parent]``."""
        raise NotImplementedError

    @property
    def supports_shared_prefix(self) -> bool:
        return type(self)._forward_suffix is not TorchCausalLM._forward_suffix

    def log_likelihoods_shared_prefix(self, refs: Sequence[str], alts: Sequence[str], parent: Sequence[int],
                                      split: int, reduce: str = "mean") -> tuple[np.ndarray, np.ndarray]:
        """Score reference windows, and alternate windows that copy ``refs[parent[j]]`` on ``[:split]``.

        Args:
            refs: ``R`` reference windows, all of the same length ``L``.
            alts: ``A`` alternate windows of length ``L``; ``alts[j][:split] == refs[parent[j]][:split]``.
            parent: for each alt, the index of its reference in ``refs``.
            split: length of the shared prefix (the variant's index), ``1 <= split < L``.
            reduce: ``"mean"`` or ``"sum"`` over the ``L - 1`` predicted positions.

        Returns:
            ``(ref_ll, alt_ll)``, shapes ``(R,)`` and ``(A,)``, nats.
        """
        check_reduce(reduce)
        length = len(refs[0])
        if any(len(s) != length for s in (*refs, *alts)) or not 1 <= split < length:
            raise ValueError(f"shared-prefix scoring needs equal-length windows and 1 <= split < L "
                             f"(split={split}, lengths {sorted({len(s) for s in (*refs, *alts)})})")
        with torch.inference_mode():
            ids, _ = self.encode(refs)
            logits, cache = self._forward_with_cache(ids, split)
            lp = token_log_probs(logits, ids)                          # (R, L-1), lp[:, t-1] predicts x_t
            ref_sum, prefix_sum = lp.sum(1), lp[:, :split - 1].sum(1)  # positions 1..split-1 are shared
            at_split = torch.log_softmax(logits[:, split - 1].float(), dim=-1)  # predicts x_split from the prefix
            alt_sum = []
            parents = torch.as_tensor(np.asarray(parent), dtype=torch.long, device=ids.device)
            chunk = max(1, len(refs) * length // (length - split))
            for i in range(0, len(alts), chunk):
                alt_ids, _ = self.encode(alts[i:i + chunk])
                par = parents[i:i + chunk]
                total = prefix_sum[par] + at_split[par, alt_ids[:, split]]
                if length - split > 1:
                    suffix = alt_ids[:, split:]
                    total = total + token_log_probs(self._forward_suffix(suffix, cache, par, split), suffix).sum(1)
                alt_sum.append(total)
            alt_sum = torch.cat(alt_sum) if alt_sum else ref_sum.new_zeros(0)
        scale = 1.0 / (length - 1) if reduce == "mean" else 1.0
        return (ref_sum * scale).double().cpu().numpy(), (alt_sum * scale).double().cpu().numpy()


# -------------------------------------------------------------------------------------- tiny transformer
class _Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv, self.out = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None):
        b, n, d = x.shape
        q, k, v = (t.view(b, n, self.n_heads, -1).transpose(1, 2) for t in self.qkv(self.norm1(x)).chunk(3, -1))
        offset = 0 if past is None else past[0].shape[2]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # query i (absolute offset + i) sees keys 0 .. offset + i
        mask = torch.ones(n, offset + n, dtype=torch.bool, device=x.device).tril(diagonal=offset)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x)), (k, v)


class TinyCausalTransformer(nn.Module):
    """A small decoder-only transformer over ``A, C, G, T, N`` (+ pad), with learned positions and a KV cache."""

    def __init__(self, d_model: int = 32, n_heads: int = 2, n_layers: int = 2, max_length: int = 8192):
        super().__init__()
        self.embed, self.pos = nn.Embedding(6, d_model), nn.Embedding(max_length, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads) for _ in range(n_layers))
        self.norm, self.head = nn.LayerNorm(d_model), nn.Linear(d_model, 6)

    def forward(self, ids: torch.Tensor, past: list | None = None, offset: int = 0):
        """Logits ``(B, L, 6)`` and per-layer ``(k, v)`` for ids ``(B, L)`` at positions ``offset ..``."""
        x = self.embed(ids) + self.pos(torch.arange(offset, offset + ids.shape[1], device=ids.device))
        kvs = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if past is None else past[i])
            kvs.append(kv)
        return self.head(self.norm(x)), kvs


class TinyDNALM(TorchCausalLM):
    """A randomly initialised :class:`TinyCausalTransformer` behind the LM interface (tests, CPU smoke runs).

    Its scores mean nothing: it exists to run the neural code path (batching, padding, caching, shared
    prefixes, OOM retry) in seconds on a CPU. Deterministic for a given ``seed``.
    """

    def __init__(self, seed: int = 0, max_length: int = 8192, d_model: int = 32, n_layers: int = 2,
                 batch_size: int = 8, device: str = "cpu"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = TinyCausalTransformer(d_model=d_model, n_layers=n_layers, max_length=max_length)
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        self.name, self.max_length, self.batch_size = f"tiny-random-transformer-s{seed}", max_length, batch_size
        self.cache_key = f"{self.name}-d{d_model}-l{n_layers}-n{max_length}"
        self.hidden_size, self.pad_id = d_model, 5  # 5 = padding (A, C, G, T, N are 0..4)
        self._table = torch.full((256,), 4, dtype=torch.long)
        for i, base in enumerate("ACGT"):
            self._table[ord(base)] = self._table[ord(base.lower())] = i

    def encode(self, seqs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(s) for s in seqs])
        ids = torch.full((len(seqs), int(lengths.max())), 5, dtype=torch.long)  # 5 = pad
        for i, seq in enumerate(seqs):
            ids[i, :len(seq)] = self._table[torch.frombuffer(bytearray(seq.encode()), dtype=torch.uint8).long()]
        return ids.to(self.device), lengths.to(self.device)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)[0]

    def _forward_with_cache(self, ids, split):
        logits, kvs = self.model(ids)
        return logits, [(k[:, :, :split], v[:, :, :split]) for k, v in kvs]

    def _forward_suffix(self, ids, cache, parent, split):
        past = [(k[parent], v[parent]) for k, v in cache]
        return self.model(ids, past=past, offset=split)[0]


# ------------------------------------------------------------------------------------ Hugging Face
class HFCausalLM(TorchCausalLM):
    """Any Hugging Face causal LM (``AutoModelForCausalLM``) with its tokenizer.

    Sequences are tokenised one by one (with the tokenizer's special tokens, e.g. a BOS) and right-padded;
    the log-likelihood sums over every token after the first, so with a BOS token every base token is
    predicted. With a k-mer or BPE tokenizer a "position" is a token, not a base.

    Args:
        model: a hub id or local folder, or a loaded ``PreTrainedModel``.
        tokenizer: a tokenizer (default: ``AutoTokenizer`` from the same id/folder).
        trust_remote_code: run Python code shipped with the checkpoint (HyenaDNA, Evo 1, ... need it). Off by
            default: that code runs with your permissions, so only enable it for repositories you trust.
        device, dtype: where and how to run (``"cuda"``, ``torch.bfloat16``); default CPU / the checkpoint's.
        batch_size: sequences per forward pass.
        max_length: longest input in tokens (default: the config's ``max_position_embeddings`` or 8192).
    """

    def __init__(self, model, tokenizer=None, *, trust_remote_code: bool = False, device: str | None = None,
                 dtype: torch.dtype | None = None, batch_size: int = 8, max_length: int | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        name = model if isinstance(model, str) else (getattr(model, "name_or_path", "") or type(model).__name__)
        try:
            if isinstance(model, str):
                model = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=trust_remote_code, dtype=dtype)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
        except OSError as err:
            raise OSError(f"could not load {name!r}: {err}. Offline (HF_HUB_OFFLINE=1) or without network, only "
                          "checkpoints already in the Hugging Face cache load; pass a local folder instead") from err
        except pickle.UnpicklingError as err:  # torch.load(weights_only=True) met more than tensors
            raise pickle.UnpicklingError(
                f"refused to load {name!r}: its pickled weights (pytorch_model.bin) hold Python objects other than "
                "tensors, which could run code, so they were not unpickled. Use a checkpoint with model.safetensors; "
                "do not set weights_only=False for a file you did not make yourself") from err
        self.device = torch.device(device or "cpu")
        self.model, self.tokenizer = model.to(self.device).eval(), tokenizer
        self.name, self.batch_size = str(name), batch_size
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None) or 8192
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def encode(self, seqs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.tokenizer(s)["input_ids"] for s in seqs]
        lengths = torch.tensor([len(r) for r in rows])
        ids = torch.full((len(rows), int(lengths.max())), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        return ids.to(self.device), lengths.to(self.device)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(ids)
        return self.model(input_ids=ids, attention_mask=mask).logits


def perplexity(mean_ll: float) -> float:
    """Per-position perplexity ``exp(-mean log-likelihood)`` (4.0 = no better than uniform over A/C/G/T)."""
    return math.exp(-mean_ll)
