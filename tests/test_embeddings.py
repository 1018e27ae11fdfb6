"""ESM-2 embeddings from any layer, checked against hooks on a plain fp32 forward, one sequence at a time."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bioft_tutorial import models, zero_shot
from bioft_tutorial.embeddings import embed, hidden_state_indices

WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRL"
ATOL = 1e-5


@pytest.fixture(scope="module")
def mlm():
    return models.load_esm2("tiny", task="mlm")


def _every_state(model, tokenizer, seq: str) -> list[np.ndarray]:
    """Token embeddings, each layer's output (hooks on the layers) and the final layer norm, ``(L, hidden)`` each:
    one unpadded sequence, no ``output_hidden_states``."""
    encoder, kept = model.esm, []
    hooks = [encoder.embeddings.register_forward_hook(lambda m, i, o: kept.append(o))]
    hooks += [layer.register_forward_hook(lambda m, i, o: kept.append(o[0] if isinstance(o, tuple) else o))
              for layer in encoder.encoder.layer]
    try:
        with torch.no_grad():
            last = encoder(**tokenizer(seq, return_tensors="pt")).last_hidden_state
            kept[-1] = encoder.encoder.emb_layer_norm_after(kept[-1])
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.allclose(kept[-1], last)
    return [state[0, 1:-1].double().numpy() for state in kept]


def test_every_layer_equals_hooks_on_a_plain_forward(mlm):
    model, tok = mlm
    seqs = [WT[:30], WT[:7], WT, WT[40:90]]
    n = model.config.num_hidden_layers
    layers = list(range(n + 1))
    per_residue = embed(model, tok, seqs, layers=layers, pooling="per-residue", batch_size=3, progress=False)
    mean = embed(model, tok, seqs, layers=[0, -1, 1], batch_size=2, progress=False)
    assert list(per_residue) == layers and list(mean) == [0, -1, 1]
    for i, seq in enumerate(seqs):
        expected = _every_state(model, tok, seq)
        for k in layers:
            np.testing.assert_allclose(per_residue[k][i], expected[k], atol=ATOL)
        for k in (0, -1, 1):
            np.testing.assert_allclose(mean[k][i], expected[k].mean(0), atol=ATOL)
    assert mean[0].shape == (4, model.config.hidden_size) and mean[0].dtype == np.float32


def test_default_is_the_last_layer_and_zero_shot_embed_still_works(mlm):
    model, tok = mlm
    seqs = [WT[:30], WT[:7]]
    last = embed(model, tok, seqs, progress=False)
    np.testing.assert_array_equal(last, zero_shot.embed(model, tok, seqs, progress=False))
    for seq, got in zip(seqs, last):
        np.testing.assert_allclose(got, _every_state(model, tok, seq)[-1].mean(0), atol=ATOL)


def test_hidden_state_indices():
    assert hidden_state_indices([0, -1, 3, -4], 6) == [0, 6, 3, 3]
    for bad in ([7], [-8], [], [1.5]):
        with pytest.raises(ValueError, match="hidden states 0..6"):
            hidden_state_indices(bad, 6)


def test_embed_errors(mlm):
    model, tok = mlm
    with pytest.raises(ValueError, match="1023 residues, more than the model's 1022"):
        embed(model, tok, ["A" * 1023], progress=False)
    with pytest.raises(ValueError, match="unknown pooling"):
        embed(model, tok, [WT], pooling="max", progress=False)
    with pytest.raises(ValueError, match="layers=\\[9\\].*hidden states 0..2"):
        embed(model, tok, [WT], layers=[9], progress=False)
    with pytest.raises(ValueError, match="sequence 1 has '\\*' at position 3"):
        embed(model, tok, [WT, "MK*"], progress=False)
