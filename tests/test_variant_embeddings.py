"""variants.embeddings: block outputs by forward hooks, pooling, the resumable cache, variant windows.

The reference is an independent fp32 forward written here: each window alone (no batch, no padding), block
by block, keeping every block's output. A StripedHyena check (Evo 2's architecture) runs where the ``vortex``
package is installed.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from bioft_tutorial.data import asset_path
from bioft_tutorial.variants import Genome, TinyDNALM, VariantError, read_findlay_xlsx
from bioft_tutorial.variants.embedding_cache import EmbeddingCache
from bioft_tutorial.variants.embeddings import (block_outputs, check_layers, embed_variants, embed_windows,
                                                variant_windows)

ATOL = 1e-5
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is fastest


@pytest.fixture(scope="module")
def lm():
    return TinyDNALM(seed=3, n_layers=4, max_length=512, batch_size=3)


@pytest.fixture(scope="module")
def windows():
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), n)) for n in (40, 64, 64, 17, 52)]
    return seqs, [20, 0, 63, 8, 30]


def _every_block(lm, seq: str) -> list[np.ndarray]:
    """Independent forward of one window: embeddings + positions, then each block in turn; all outputs kept."""
    model = lm.model
    ids = lm.encode([seq])[0]
    with torch.no_grad():
        x = model.embed(ids) + model.pos(torch.arange(len(seq)))
        kept = []
        for block in model.blocks:
            x, _ = block(x)
            kept.append(x[0].double().numpy())
    return kept


def test_pooled_block_outputs_equal_an_independent_forward(lm, windows):
    seqs, index = windows
    emb = embed_windows(lm, seqs, index, [0, 2, -1], progress=False)
    assert emb.layers == [0, 2, 3] and emb.variant.shape == (5, 3, lm.hidden_size)
    for i, (seq, at) in enumerate(zip(seqs, index)):
        states = _every_block(lm, seq)
        for j, k in enumerate(emb.layers):
            np.testing.assert_allclose(emb.variant[i, j], states[k][at], atol=ATOL)
            np.testing.assert_allclose(emb.mean[i, j], states[k].mean(0), atol=ATOL)  # padding left out
            np.testing.assert_allclose(emb.pooled("mean", k)[i], states[k].mean(0), atol=ATOL)


def test_the_forward_stops_after_the_deepest_block(lm, windows):
    calls = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, b in enumerate(lm.model.blocks)]
    hooks.append(lm.model.head.register_forward_hook(lambda m, i, o: calls.append("head")))
    try:
        ids = lm.encode(windows[0][:2])[0]
        out = block_outputs(lm.model, ids, [1, 0])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [0, 1] and list(out) == [1, 0] and out[1].shape == (2, 64, lm.hidden_size)


def test_block_outputs_keep_their_gradient(lm, windows):
    ids = lm.encode(windows[0][:2])[0]
    out = block_outputs(lm.model, ids, [1])[1]
    out.sum().backward()
    assert lm.model.blocks[0].qkv.weight.grad is not None and lm.model.blocks[2].qkv.weight.grad is None
    lm.model.zero_grad(set_to_none=True)


def test_check_layers():
    assert check_layers([0, -1, 2], 4) == [0, 3, 2] and check_layers(1, 4) == [1]
    for bad in ([4], [-5], [], [0.5]):
        with pytest.raises(ValueError, match="blocks 0..3"):
            check_layers(bad, 4)


def test_cache_resumes_and_rejects_damaged_entries(lm, windows, tmp_path, caplog):
    seqs, index = windows
    fresh = embed_windows(lm, seqs, index, [1, 3], cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 5
    cache = EmbeddingCache(tmp_path, lm.cache_key, [1, 3])
    torn = cache.path(seqs[2], index[2])
    torn.write_bytes(torn.read_bytes()[:-7])  # a torn write
    assert [cache.get(s, i) is None for s, i in zip(seqs, index)] == [False, False, True, False, False]
    assert cache.corrupted == 1
    with caplog.at_level(logging.WARNING):
        again = embed_windows(lm, seqs, index, [1, 3], cache_dir=tmp_path, progress=False)
    assert "damaged" in caplog.text
    np.testing.assert_array_equal(again.variant[[0, 1, 3, 4]], fresh.variant[[0, 1, 3, 4]])  # read back: identical
    np.testing.assert_allclose(again.mean, fresh.mean, atol=1e-6)  # recomputed alone, not in a padded batch
    other = TinyDNALM(seed=4, n_layers=4, max_length=512)  # another model never reads these entries
    assert EmbeddingCache(tmp_path, other.cache_key, [1, 3]).get(seqs[0], index[0]) is None
    assert EmbeddingCache(tmp_path, lm.cache_key, [1]).get(seqs[0], index[0]) is None  # nor other blocks


def test_interrupted_extraction_resumes_with_the_same_numbers(lm, windows, tmp_path, monkeypatch):
    seqs, index = windows
    whole = embed_windows(lm, seqs, index, [2], batch_size=2, progress=False)
    import bioft_tutorial.variants.embeddings as module

    real, calls = module._embed_batch, []

    def dies_on_second_batch(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(module, "_embed_batch", dies_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        embed_windows(lm, seqs, index, [2], batch_size=2, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(module, "_embed_batch", real)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 2
    resumed = embed_windows(lm, seqs, index, [2], batch_size=2, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(resumed.variant, whole.variant)


def test_variant_embeddings_follow_the_table(lm):
    genome = Genome(asset_path("brca1", "GRCh37_chr17_BRCA1_region.fa"))
    table = read_findlay_xlsx(asset_path("brca1", "41586_2018_461_MOESM3_ESM.xlsx")).iloc[[5, 0, 1, 2, 300]]
    frame = variant_windows(genome, table, 48)
    assert list(frame.index) == list(table.index) and set(frame["variant_index"]) == {24}
    assert (frame["ref_seq"].str[24] == table["ref"]).all() and (frame["alt_seq"].str[24] == table["alt"]).all()
    ref, alt = embed_variants(lm, genome, table, [1], window=48, progress=False)
    by_hand = embed_windows(lm, list(frame["alt_seq"]), [24] * 5, [1], progress=False)
    np.testing.assert_array_equal(alt.mean, by_hand.mean)
    np.testing.assert_allclose(ref.variant[1], ref.variant[2])  # rows 0 and 1 of the table share a position
    bad = table.assign(ref="A")
    with pytest.raises(VariantError, match="REF"):
        variant_windows(genome, bad, 48)


def test_errors_name_the_fix(lm, windows):
    with pytest.raises(ValueError, match="5 windows but 2 variant indices"):
        embed_windows(lm, windows[0], [0, 1], [0], progress=False)
    with pytest.raises(ValueError, match="window 3 has 17 bases but its variant index is 17"):
        embed_windows(lm, windows[0], [0, 0, 0, 17, 0], [0], progress=False)
    with pytest.raises(ValueError, match="no 'blocks'"):
        block_outputs(torch.nn.Linear(2, 2), torch.zeros(1, 2), [0])
    emb = embed_windows(lm, windows[0][:1], windows[1][:1], [0], progress=False)
    with pytest.raises(ValueError, match="layer 2 was not extracted"):
        emb.pooled("mean", 2)


@contextlib.contextmanager
def _vortex_on_cpu():
    """vortex builds blocks under ``torch.cuda.device`` and applies rotary embeddings with a Triton kernel; on a
    CPU-only machine both need a stand-in (torch's own rotary formula, from vortex itself)."""
    import vortex.model.rotary as rotary

    def apply_rotary(x, cos, sin, seqlen_offsets=0, cu_seqlens=None, max_seqlen=None, interleaved=False,
                     inplace=False, conjugate=False):
        cos, sin = cos[seqlen_offsets:seqlen_offsets + x.shape[1]], sin[seqlen_offsets:seqlen_offsets + x.shape[1]]
        out = rotary.apply_rotary_emb_torch(x, cos, -sin if conjugate else sin, interleaved)
        return x.copy_(out) if inplace else out

    with pytest.MonkeyPatch.context() as patch:
        if not torch.cuda.is_available():
            patch.setattr(rotary, "apply_rotary", apply_rotary)
            patch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
        yield


def test_striped_hyena_blocks_equal_an_independent_forward(windows):
    if importlib.util.find_spec("vortex") is None:
        pytest.skip("the vortex package (Evo 2's runtime, pip install evo2) is not installed")
    from bioft_tutorial.variants.evo2_backend import Evo2LM, prepare_vortex_import

    prepare_vortex_import()

    small = dict(hidden_size=64, num_filters=64, num_layers=4, hcs_layer_idxs=[0], hcm_layer_idxs=[1],
                 hcl_layer_idxs=[2], attn_layer_idxs=[3], hcl_filter_groups=64, hcm_filter_groups=4,
                 hcs_filter_groups=4, num_attention_heads=4, inner_mlp_size=128, max_seqlen=1024)
    with _vortex_on_cpu():
        lm = Evo2LM.from_config("evo2-7b-8k", batch_size=2, **small)
        lm.model.float()
        seqs, index = windows
        emb = embed_windows(lm, seqs, index, [0, 2, 3], progress=False)
        for i, (seq, at) in enumerate(zip(seqs, index)):
            with torch.no_grad():
                x, kept = lm.model.embedding_layer(lm.encode([seq])[0]), []
                for block in lm.model.blocks:
                    x, _ = block(x, inference_params=None, padding_mask=None)
                    kept.append(x[0].double().numpy())
            for j, k in enumerate([0, 2, 3]):
                np.testing.assert_allclose(emb.variant[i, j], kept[k][at], atol=1e-4, rtol=1e-4)
                np.testing.assert_allclose(emb.mean[i, j], kept[k].mean(0), atol=1e-4, rtol=1e-4)


def test_windows_table_keeps_unusual_indices(lm):
    genome = {"chr1": "ACGT" * 30}
    table = pd.DataFrame({"chrom": ["chr1", "chr1"], "pos": [2, 60], "ref": ["C", "T"], "alt": ["T", "A"]},
                         index=[7, 3])
    frame = variant_windows(genome, table, 40)
    assert list(frame.index) == [7, 3] and list(frame["variant_index"]) == [1, 20]
