"""Use a pretrained ESM-2 as it is: zero-shot scores of amino-acid substitutions.

A masked language model gives, at every position of a protein, a probability for each of the 20 amino
acids. The log-ratio ``log p(mutant aa) - log p(wild-type aa)`` (nats) scores a substitution: negative
means the model finds the mutant less plausible than the wild type. Two ways to get those probabilities
(Meier et al. 2021, ESM-1v):

* ``"wt-marginal"``: one forward pass of the unmasked wild type scores every position at once.
* ``"masked-marginal"``: each mutated position is masked in turn, so the model cannot see the residue it
  predicts. One pass per *distinct* position (not per mutant), batched.

A multi-mutant such as ``"A42G:T50C"`` scores the sum over its substitutions. Positions are 1-based, as in
ProteinGym. Sequences longer than the model's limit are scored in windows (:func:`window_start`).

Sequences use the upper-case one-letter codes of the ESM-2 vocabulary: the 20 amino acids plus ``X``
(unknown) and the rare ``B``, ``Z``, ``U``, ``O``. Anything else (lower case, ``*``, gaps ``-``/``.``,
digits, spaces, ``J``) raises ``ValueError`` naming the character and its position. A CUDA out-of-memory
error halves the batch and retries, down to one sequence, logging each step.

Embeddings (the hidden states themselves, from any layer) are in :mod:`bioft_tutorial.embeddings`. This
module needs torch, numpy and tqdm, plus the package's ``data`` (amino acids, mutant parsing) and ``oom``.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from bioft_tutorial.data import (AMINO_ACIDS, MAX_RESIDUES, Substitution, parse_mutant,  # noqa: F401 (re-exported)
                                 single_mutants)
from bioft_tutorial.oom import halving_batches

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase as Tokenizer

log = logging.getLogger(__name__)
_ADVICE = "use a smaller max_residues, a smaller model, bfloat16 weights or a GPU with more memory"
SCORING_METHODS = ("wt-marginal", "masked-marginal")


# --- windows -----------------------------------------------------------------------------------------
def window_start(position: int, length: int, max_residues: int = MAX_RESIDUES) -> int:
    """0-based index of the first residue of the window that scores ``position``.

    The rule (that of ESM-1v and ProteinGym): a sequence of at most ``max_residues`` is scored whole
    (start 0). A longer one is cut to ``max_residues`` residues centred on the position,
    ``start = position - 1 - max_residues // 2``, shifted to lie inside the sequence near either end,
    so the position has as much context on each side as the sequence allows.

    Args:
        position: 1-based position in the sequence.
        length: residues in the sequence.
        max_residues: residues per window (1,022 for ESM-2).
    """
    if length <= max_residues:
        return 0
    return min(max(position - 1 - max_residues // 2, 0), length - max_residues)


def _plan(positions: Sequence[int], length: int, masked: bool, max_residues: int) -> tuple[list, np.ndarray]:
    """Forward-pass rows ``(window start, masked index or None)``, and the row of each position."""
    rows: dict[tuple[int, int | None], int] = {}
    row_of = []
    for p in positions:
        start = window_start(p, length, max_residues)
        row_of.append(rows.setdefault((start, p - 1 - start if masked else None), len(rows)))
    return list(rows), np.asarray(row_of, dtype=int)


# --- model helpers -----------------------------------------------------------------------------------
@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[torch.device]:
    """Eval mode (restored afterwards) and ``torch.inference_mode``; yields the model's device."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def residue_ids(tokenizer: Tokenizer, seq: str, source: str = "sequence") -> torch.Tensor:
    """Token ids of the residues of ``seq``, one per residue, without special tokens: (L,) int64.

    ``source`` names the sequence in errors (``"wt_seq"``, ``"sequence 3"``).
    """
    if not isinstance(seq, str) or not seq:
        raise ValueError(f"{source} is {'empty' if seq == '' else repr(seq)}; pass a protein sequence as text, "
                         "e.g. 'MKTAYIAK'")
    ids = tokenizer.convert_tokens_to_ids(list(seq))
    # '-' and '.' are ESM-2 tokens (alignment gaps), but a gap is not a residue of a protein
    bad = [i for i, (aa, t) in enumerate(zip(seq, ids)) if t == tokenizer.unk_token_id or not aa.isalpha()]
    if bad:
        raise ValueError(f"{source} has {seq[bad[0]]!r} at position {bad[0] + 1} (1-based), which is not an amino "
                         "acid the model knows; use upper-case one-letter codes (seq.upper(), X for unknown) and "
                         "remove stop codons '*', gaps, digits and spaces")
    return torch.tensor(ids, dtype=torch.long)


def with_specials(tokenizer: Tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """``<cls> residues <eos>``: residue ids (..., L) -> (..., L + 2)."""
    shape = (*ids.shape[:-1], 1)
    cls = ids.new_full(shape, tokenizer.cls_token_id)
    eos = ids.new_full(shape, tokenizer.eos_token_id)
    return torch.cat([cls, ids, eos], dim=-1)


def _aa_log_probs(model: torch.nn.Module, tokenizer: Tokenizer, input_ids: torch.Tensor,
                  aa_ids: torch.Tensor) -> torch.Tensor:
    """log p(aa) over the 20 amino acids at every token: (B, T) -> (B, T, 20), fp32, nats."""
    logits = getattr(model(input_ids=input_ids), "logits", None)
    if logits is None or logits.shape[-1] != len(tokenizer):
        raise ValueError(f"{type(model).__name__} does not output one logit per vocabulary token; scoring needs "
                         "the masked-LM head: load_esm2(name, task='mlm')")
    return torch.log_softmax(logits[..., aa_ids].float(), dim=-1)


# --- scoring -----------------------------------------------------------------------------------------
def position_log_probs(
    model: torch.nn.Module, tokenizer: Tokenizer, wt_seq: str, positions: Sequence[int], *, masked: bool,
    batch_size: int = 32, max_residues: int = MAX_RESIDUES, progress: bool = True,
) -> np.ndarray:
    """The model's amino-acid distribution at ``positions`` of ``wt_seq``.

    Args:
        positions: 1-based positions of ``wt_seq``.
        masked: mask each position in its own pass (masked-marginal) or read all of them from the
            unmasked sequence (wt-marginal: one pass per window).
        model, tokenizer, wt_seq, batch_size, max_residues, progress: as in :func:`score_substitutions`
            (every sequence in a batch has the same length, so nothing is padded).

    Returns:
        ``(len(positions), 20)`` float64 log-probabilities (nats), columns in :data:`AMINO_ACIDS` order,
        normalised over the 20 amino acids (differences between two amino acids at one position equal
        those under the full 33-token vocabulary).
    """
    residues = residue_ids(tokenizer, wt_seq, "wt_seq")
    if any(not 1 <= p <= len(wt_seq) for p in positions):
        raise ValueError(f"positions must lie in 1..{len(wt_seq)} (1-based); got {list(positions)[:5]}...")
    aa_ids = torch.tensor(tokenizer.convert_tokens_to_ids(list(AMINO_ACIDS)))
    rows, row_of = _plan(positions, len(wt_seq), masked, max_residues)
    token_of = np.asarray(positions, dtype=int) - np.asarray([r[0] for r in rows], dtype=int)[row_of]
    out = np.empty((len(positions), len(AMINO_ACIDS)))
    width = min(len(wt_seq), max_residues)
    with evaluating(model) as device, tqdm(total=len(rows), desc="forward passes", unit="sequence",
                                            disable=not progress) as bar:
        residues, aa_ids = residues.to(device), aa_ids.to(device)

        def run(b0: int, b1: int) -> None:
            chunk = rows[b0:b1]
            batch = torch.stack([residues[start:start + width] for start, _ in chunk])
            if masked:
                batch[torch.arange(len(chunk)), torch.tensor([m for _, m in chunk])] = tokenizer.mask_token_id
            log_probs = _aa_log_probs(model, tokenizer, with_specials(tokenizer, batch), aa_ids)
            sel = np.flatnonzero((row_of >= b0) & (row_of < b1))
            index = torch.as_tensor(np.stack([row_of[sel] - b0, token_of[sel]]), device=device)
            out[sel] = log_probs[index[0], index[1]].double().cpu().numpy()

        for chunk, _ in halving_batches(lambda b: run(b[0], b[-1] + 1), range(len(rows)), batch_size, "sequence",
                                        _ADVICE):
            bar.update(len(chunk))
    return out


def score_substitutions(
    model: torch.nn.Module, tokenizer: Tokenizer, wt_seq: str, mutants: Sequence[str],
    method: Literal["wt-marginal", "masked-marginal"] = "wt-marginal", *, offset: int = 0,
    batch_size: int = 32, max_residues: int = MAX_RESIDUES, progress: bool = True,
) -> np.ndarray:
    """Zero-shot score of each mutant: sum over its substitutions of ``log p(mt) - log p(wt)``.

    Args:
        model: an ESM-2 masked LM (``load_esm2(..., task="mlm")``), on any device.
        tokenizer: its tokenizer.
        wt_seq: the wild-type sequence.
        mutants: ProteinGym-style mutants, e.g. ``["H24C", "A42G:T50C"]``, 1-based.
        method: ``"wt-marginal"`` (one pass of the wild type per window) or ``"masked-marginal"``
            (one pass per distinct mutated position, that position masked; Meier et al. 2021).
        offset: numbering offset of the mutants (see :func:`parse_mutant`).
        batch_size: sequences per forward pass.
        max_residues: window size for sequences longer than the model's limit (see :func:`window_start`).
        progress: show a tqdm bar.

    Returns:
        ``(len(mutants),)`` float64 scores in nats; higher = more plausible than the wild type.

    Raises:
        ValueError: an unknown method, a ``wt_seq`` with a character the model does not know (see the module
            docstring), or a mutant that does not fit ``wt_seq`` (see :func:`parse_mutant`).
        torch.OutOfMemoryError: out of memory even with one sequence per forward pass.
    """
    if method not in SCORING_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {SCORING_METHODS}")
    if isinstance(mutants, str):
        raise TypeError(f"mutants must be a list of mutants, not the string {mutants!r}; wrap it: [{mutants!r}]")
    residue_ids(tokenizer, wt_seq, "wt_seq")  # an unusable wild type fails first, with its own message
    parsed = [parse_mutant(m, wt_seq, offset) for m in mutants]
    positions = sorted({s.position for subs in parsed for s in subs})
    if not positions:
        return np.zeros(len(parsed))
    table = position_log_probs(model, tokenizer, wt_seq, positions, masked=method == "masked-marginal",
                               batch_size=batch_size, max_residues=max_residues, progress=progress)
    row = {p: i for i, p in enumerate(positions)}
    col = {aa: j for j, aa in enumerate(AMINO_ACIDS)}
    return np.array([sum(table[row[s.position], col[s.mt]] - table[row[s.position], col[s.wt]] for s in subs)
                     for subs in parsed], dtype=float)


def __getattr__(name: str) -> Any:
    """``zero_shot.embed`` moved to :func:`bioft_tutorial.embeddings.embed`; it stays importable from here."""
    if name == "embed":
        from bioft_tutorial.embeddings import embed

        return embed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
