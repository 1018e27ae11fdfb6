"""Hidden states of a DNA language model at any block: forward hooks, pooling, and a resumable on-disk cache.

A causal DNA model such as Evo 2 is a stack of blocks (``model.blocks``: 32 StripedHyena blocks in Evo 2 7B,
Hyena or attention). The output of block ``k`` is a ``(B, L, hidden)`` tensor, one vector per base, and any
of them can feed a classifier. :func:`block_outputs` reads them with forward hooks, the way the ``evo2``
package's own ``Evo2.forward(..., return_embeddings=True, layer_names=["blocks.20"])`` does, and stops the
forward pass after the deepest block asked for, so the later blocks and the output head cost nothing.

Pooling turns a window's ``(L, hidden)`` states into one vector: the state at the variant's position
(``"variant"``: for a causal model it has read the bases up to and including the variant) or the mean over
the window (``"mean"``: it also covers the bases after the variant). :func:`embed_windows` returns both, for
every block asked for, batched, on the model's device and in its dtype (bf16 for Evo 2, pooled in fp32 and
rounded back), with a tqdm bar and, given ``cache_dir``, a resumable on-disk cache (:mod:`.embedding_cache`).
:func:`embed_variants` does it for a variant table (each variant's reference and alternate window); features
that combine the two are built by :func:`.probe.variant_features`.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..oom import halving_batches
from .checks import check_variants, raise_for_problems
from .embedding_cache import EmbeddingCache
from .genome import as_genome
from .io import standardize_variants
from .windows import variant_window

log = logging.getLogger(__name__)
POOLINGS = ("variant", "mean")
_ADVICE = "use a smaller batch_size, a shorter window or a GPU with more memory"


class _Stop(Exception):
    """Raised by the hook of the deepest block asked for: nothing after it needs computing."""


def blocks_of(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of blocks: ``model.blocks``, or that of ``model.model`` or ``model.backbone``."""
    for candidate in (model, getattr(model, "model", None), getattr(model, "backbone", None)):
        blocks = getattr(candidate, "blocks", None)
        if isinstance(blocks, torch.nn.ModuleList):
            return blocks
    raise ValueError(f"{type(model).__name__} has no 'blocks' list; pass a block-stacked DNA model such as "
                     "Evo2LM.model (StripedHyena) or TinyDNALM.model")


def check_layers(layers: Sequence[int], n_blocks: int) -> list[int]:
    """``layers`` as block indices ``0 .. n_blocks - 1`` (negative ones count from the end).

    Raises:
        ValueError: no layer, or one outside the model, naming it and the valid range.
    """
    layers = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    bad = [k for k in layers if not isinstance(k, (int, np.integer)) or not -n_blocks <= k < n_blocks]
    if bad or not layers:
        raise ValueError(f"layers={layers!r}: this model has blocks 0..{n_blocks - 1} (-1 = the last); "
                         f"e.g. layers=range(0, {n_blocks}, 4)")
    return [int(k) % n_blocks for k in layers]


def block_outputs(model: torch.nn.Module, ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Run ``model(ids)`` up to the deepest block of ``layers`` and return each block's output.

    Args:
        model: a model with ``.blocks`` whose forward takes token ids ``(B, L)``.
        ids: token ids, ``(B, L)``, on the model's device.
        layers: block indices (see :func:`check_layers`).

    Returns:
        ``{layer: (B, L, hidden)}`` in the model's dtype; they keep their autograd graph when gradients are on.
    """
    blocks = blocks_of(model)
    layers = check_layers(layers, len(blocks))
    with hooked(blocks, layers) as kept:
        try:
            model(ids)
        except _Stop:
            pass
    return {k: kept[k] for k in layers}


@contextmanager
def hooked(blocks: torch.nn.ModuleList, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks on ``blocks[k]`` for ``k`` in ``layers``: the yielded dict fills with their outputs during a
    forward pass, and the hook of the deepest one raises an internal stop signal (catch it around the forward)."""
    kept: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def hook(index: int):
        def keep(_module, _args, output):
            kept[index] = output[0] if isinstance(output, tuple) else output
            if index == deepest:
                raise _Stop
        return keep

    handles = [blocks[k].register_forward_hook(hook(k)) for k in sorted(set(layers))]
    try:
        yield kept
    finally:
        for handle in handles:
            handle.remove()


def pool(hidden: torch.Tensor, lengths: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The state at each window's variant index and the mean over its real (unpadded) positions, in fp32.

    Args:
        hidden: ``(B, L, H)`` block outputs of right-padded windows; lengths: ``(B,)``; index: ``(B,)`` 0-based.

    Returns:
        ``(at_variant, mean)``, each ``(B, H)`` float32.
    """
    hidden = hidden.float()  # a model split over GPUs leaves each block's output on its own device
    lengths, index = lengths.to(hidden.device), index.to(hidden.device)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    real = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).float()
    mean = (hidden * real[..., None]).sum(1) / lengths[:, None].float()
    return hidden[rows, index], mean


@dataclass
class WindowEmbeddings:
    """Pooled block outputs of windows, in the order the windows were given.

    Attributes:
        layers: the block indices, in the order of axis 1.
        variant: ``(N, len(layers), hidden)`` float32, the state at each window's variant index.
        mean: ``(N, len(layers), hidden)`` float32, the mean over each window.
    """

    layers: list[int]
    variant: np.ndarray
    mean: np.ndarray

    def pooled(self, pooling: str, layer: int) -> np.ndarray:
        """``(N, hidden)``: ``pooling`` (``"variant"`` or ``"mean"``) at block ``layer``."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; use one of {POOLINGS}")
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not extracted (have {self.layers}); pass it in layers=")
        return getattr(self, pooling)[:, self.layers.index(layer)]


def embed_windows(lm, windows: Sequence[str], variant_index: Sequence[int], layers: Sequence[int], *,
                  batch_size: int | None = None, cache_dir: str | Path | None = None,
                  progress: bool = True) -> WindowEmbeddings:
    """Pooled outputs of blocks ``layers`` for each window (see the module docstring).

    Args:
        lm: a neural DNA LM of this package (:class:`~.evo2_backend.Evo2LM`, :class:`~.neural.TinyDNALM`):
            ``encode``, ``model`` (with ``.blocks``), ``cache_key`` or ``name``.
        windows: DNA sequences; variant_index: 0-based index of the variant in each window.
        layers: block indices (negative count from the end).
        batch_size: windows per forward pass (default ``lm.batch_size``); halved on out of memory.
        cache_dir: folder of the resumable cache (``None``: no cache).

    Returns:
        A :class:`WindowEmbeddings` with one row per window, in input order.
    """
    if len(windows) != len(variant_index):
        raise ValueError(f"{len(windows)} windows but {len(variant_index)} variant indices; give one per window")
    outside = [i for i, (w, k) in enumerate(zip(windows, variant_index)) if not 0 <= int(k) < len(w)]
    if outside:
        i = outside[0]
        raise ValueError(f"window {i} has {len(windows[i])} bases but its variant index is {variant_index[i]}; "
                         "indices are 0-based positions inside their window (variant_windows gives them)")
    layers = check_layers(layers, len(blocks_of(lm.model)))
    keys = list(dict.fromkeys(zip(windows, map(int, variant_index))))
    cache = EmbeddingCache(cache_dir, getattr(lm, "cache_key", lm.name), layers) if cache_dir else None
    found = {key: cache.get(*key) for key in keys} if cache else {}
    found = {key: value for key, value in found.items() if value is not None}
    todo = sorted((k for k in keys if k not in found), key=lambda k: len(k[0]))
    with tqdm(total=len(keys), initial=len(found), desc=f"embedding windows ({lm.name})", unit="window",
              disable=not progress) as bar:
        for chunk, pooled in halving_batches(lambda c: _embed_batch(lm, c, layers), todo,
                                             batch_size or getattr(lm, "batch_size", 8), "window", _ADVICE):
            for key, value in zip(chunk, pooled):
                found[key] = value
                if cache:
                    cache.put(*key, value)
            bar.update(len(chunk))
    rows = [found[key] for key in zip(windows, map(int, variant_index))]
    empty = np.zeros((0, len(layers), lm.hidden_size), np.float32)
    return WindowEmbeddings(layers, *(np.stack([r[part] for r in rows]) if rows else empty for part in POOLINGS))


def variant_windows(genome, variants: pd.DataFrame, window: int) -> pd.DataFrame:
    """The reference and alternate window of every SNV, checked against the genome first.

    Args:
        genome: a :class:`~.genome.Genome`, a FASTA path or ``{contig: sequence}``.
        variants: columns chrom, pos (1-based), ref, alt (e.g. :func:`~.io.read_findlay_xlsx`).
        window: window length in bases (variant at ``window // 2``, clipped at contig ends).

    Returns:
        ``ref_seq``, ``alt_seq`` and ``variant_index`` (0-based), one row per variant, with ``variants``'s index.

    Raises:
        VariantError: rows that cannot be scored, listed with their rows and the fix (see :mod:`.checks`).
    """
    genome = as_genome(genome)
    raise_for_problems(genome, variants, check_variants(genome, variants))
    std = standardize_variants(variants)
    built = [variant_window(genome, c, int(p), r, a, window) for c, p, r, a in
             zip(std["chrom"], std["pos"], std["ref"], std["alt"])]
    return pd.DataFrame({"ref_seq": [w.ref_seq for w in built], "alt_seq": [w.alt_seq for w in built],
                         "variant_index": [w.variant_index for w in built]}, index=variants.index)


def embed_variants(lm, genome, variants: pd.DataFrame, layers: Sequence[int], *, window: int,
                   batch_size: int | None = None, cache_dir: str | Path | None = None,
                   progress: bool = True) -> tuple[WindowEmbeddings, WindowEmbeddings]:
    """Pooled block outputs of each variant's reference and alternate window, rows in ``variants``'s order.

    Reference windows shared by several variants (the three alternate alleles of a position) are computed
    once. Arguments as in :func:`variant_windows` and :func:`embed_windows`.

    Returns:
        ``(ref, alt)``: two :class:`WindowEmbeddings` with one row per variant.
    """
    frame = variant_windows(genome, variants, window)
    both = embed_windows(lm, [*frame["ref_seq"], *frame["alt_seq"]], [*frame["variant_index"]] * 2, layers,
                         batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    n = len(frame)
    return (WindowEmbeddings(both.layers, both.variant[:n], both.mean[:n]),
            WindowEmbeddings(both.layers, both.variant[n:], both.mean[n:]))


def _embed_batch(lm, keys: list[tuple[str, int]], layers: list[int]) -> list[dict[str, np.ndarray]]:
    """One forward pass; per window ``{"variant": (n_layers, H), "mean": (n_layers, H)}`` float32, rounded to the
    model's dtype (so a value read back from the cache equals a fresh one)."""
    ids, lengths = lm.encode([seq for seq, _ in keys])
    index = torch.tensor([i for _, i in keys], device=ids.device)
    with torch.inference_mode():
        states = block_outputs(lm.model, ids, layers)
        dtype = next(iter(states.values())).dtype
        pooled = [pool(states[k], lengths, index) for k in layers]
        variant = torch.stack([p[0] for p in pooled], 1).to(dtype).float().cpu().numpy()
        mean = torch.stack([p[1] for p in pooled], 1).to(dtype).float().cpu().numpy()
    return [{"variant": variant[i], "mean": mean[i]} for i in range(len(keys))]
