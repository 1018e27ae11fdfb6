"""ESM-2 embeddings: the representation of a protein at any layer, per residue or averaged over residues.

ESM-2 computes a hidden state for every token at every layer. Hugging Face numbers them as
``hidden_states``: index ``0`` is the token embedding (before any layer), index ``k`` the output of encoder
layer ``k``, and the last index (``num_hidden_layers``) the final layer after ESM-2's closing layer norm,
the same tensor as ``last_hidden_state``. :func:`embed` returns any subset of them, so a reader can ask
which layer holds the information a task needs (a *layer sweep*): the last layer is shaped by the masked-LM
objective, and middle layers often carry more of what a downstream probe can use.

Sequences are validated as in :mod:`bioft_tutorial.zero_shot` (upper-case one-letter codes; the error names
the sequence and the position). Needs torch, numpy and tqdm, plus :mod:`bioft_tutorial.zero_shot` for the
tokenising checks and :mod:`bioft_tutorial.oom` for the out-of-memory back-off.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from bioft_tutorial.data import MAX_RESIDUES
from bioft_tutorial.oom import halving_batches
from bioft_tutorial.zero_shot import evaluating, residue_ids, with_specials

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase as Tokenizer

log = logging.getLogger(__name__)
POOLINGS = ("mean", "per-residue")
_ADVICE = "use a smaller batch_size, a smaller model, bfloat16 weights or a GPU with more memory"


def encoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The bare ESM-2 encoder (``EsmModel``) of a model with or without a head, PEFT-wrapped or not."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return getattr(model, "base_model", model)


def hidden_state_indices(layers: Sequence[int], num_hidden_layers: int) -> list[int]:
    """Check ``layers`` against a model with ``num_hidden_layers`` layers; negative ones count from the end.

    Returns:
        The indices into ``hidden_states``, in ``0 .. num_hidden_layers``.

    Raises:
        ValueError: an index outside ``-(num_hidden_layers + 1) .. num_hidden_layers``, or no index at all.
    """
    layers = [layers] if isinstance(layers, int) else list(layers)
    n = num_hidden_layers + 1  # the embedding output plus one state per layer
    bad = [k for k in layers if not isinstance(k, (int, np.integer)) or not -n <= k < n]
    if bad or not layers:
        raise ValueError(f"layers={layers!r}: this model has hidden states 0..{num_hidden_layers} (0 = token "
                         f"embeddings, {num_hidden_layers} = last layer; -1 also means the last); "
                         f"e.g. layers=range({n}) for all of them")
    return [int(k) % n for k in layers]


def embed(
    model: torch.nn.Module, tokenizer: Tokenizer, seqs: Sequence[str], *, layers: Sequence[int] | None = None,
    pooling: Literal["mean", "per-residue"] = "mean", batch_size: int = 8, max_residues: int = MAX_RESIDUES,
    progress: bool = True,
) -> np.ndarray | list[np.ndarray] | dict[int, np.ndarray | list[np.ndarray]]:
    """ESM-2 representations of protein sequences, from the last layer or from any layers.

    Sequences are sorted by length and batched, so each batch pads little; results come back in input
    order. ``<cls>``, ``<eos>`` and padding are dropped.

    Args:
        model: ESM-2 with or without a head (``load_esm2(name)`` or ``task="mlm"``); tokenizer: its tokenizer.
        seqs: amino-acid sequences, at most ``max_residues`` each (crop or window longer ones yourself).
        layers: ``None`` for the last layer only, or hidden-state indices (``0`` = token embeddings, ``k`` =
            after layer ``k``, ``-1`` = last, after the final layer norm), e.g. ``range(7)`` for all of a
            6-layer model.
        pooling: ``"mean"`` (average over residues) or ``"per-residue"``.
        batch_size: sequences per forward pass (halved on CUDA out of memory); progress: show a tqdm bar.

    Returns:
        With ``layers=None``: ``"mean"`` gives ``(len(seqs), hidden)`` float32, ``"per-residue"`` a list of
        ``(len(seq), hidden)`` float32. With ``layers``: a dict ``{layer: that array or list}``, keyed by the
        layers as given.

    Raises:
        ValueError: unknown pooling or layer, an empty sequence or one with a character the model does not
            know (naming its index in ``seqs``), or a sequence longer than ``max_residues``.
        torch.OutOfMemoryError: out of memory even with one sequence per forward pass.
    """
    encoder = encoder_of(model)
    keys = [-1] if layers is None else ([layers] if isinstance(layers, int) else list(layers))
    indices = hidden_state_indices(keys, encoder.config.num_hidden_layers)
    _check_inputs(tokenizer, seqs, pooling, max_residues)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = {k: [np.empty(0)] * len(seqs) for k in keys}
    with evaluating(model) as device, tqdm(total=len(order), desc="embedding", unit="sequence",
                                           disable=not progress) as bar:
        def run(batch: list[int]) -> None:
            idx = [order[b] for b in batch]
            states = _hidden_states(encoder, tokenizer, [seqs[i] for i in idx], indices, device)
            for key, hidden in zip(keys, states):
                for row, i in enumerate(idx):
                    residues = hidden[row, 1:len(seqs[i]) + 1]
                    out[key][i] = (residues.mean(0) if pooling == "mean" else residues).cpu().numpy()

        for chunk, _ in halving_batches(run, list(range(len(order))), batch_size, "sequence", _ADVICE):
            bar.update(len(chunk))
    width = encoder.config.hidden_size
    result = {k: v if pooling == "per-residue" else (np.stack(v) if v else np.empty((0, width), np.float32))
              for k, v in out.items()}
    return result[-1] if layers is None else result


def _check_inputs(tokenizer: Tokenizer, seqs: Sequence[str], pooling: str, max_residues: int) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; use 'mean' or 'per-residue'")
    for i, seq in enumerate(seqs):
        residue_ids(tokenizer, seq, f"sequence {i}")
    too_long = [i for i, s in enumerate(seqs) if len(s) > max_residues]
    if too_long:
        raise ValueError(f"sequence {too_long[0]} has {len(seqs[too_long[0]])} residues, more than the model's "
                         f"{max_residues}; crop it or embed overlapping windows")


def _hidden_states(encoder: torch.nn.Module, tokenizer: Tokenizer, seqs: Sequence[str], indices: list[int],
                   device: torch.device) -> list[torch.Tensor]:
    """The requested hidden states of one padded batch, each ``(B, max L + 2, hidden)`` float32."""
    input_ids, attention_mask = padded_batch(tokenizer, seqs)
    output = encoder(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                     output_hidden_states=indices != [encoder.config.num_hidden_layers])
    if output.hidden_states is None:  # only the last layer: no need to keep the others
        return [output.last_hidden_state.float()]
    return [output.hidden_states[k].float() for k in indices]


def padded_batch(tokenizer: Tokenizer, seqs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``<cls> residues <eos> <pad>...`` ids and the attention mask, both ``(B, max L + 2)`` int64."""
    rows = [with_specials(tokenizer, residue_ids(tokenizer, s)) for s in seqs]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tokenizer.pad_token_id)
    return input_ids, (input_ids != tokenizer.pad_token_id).long()
