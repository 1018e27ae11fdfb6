"""Packed batches: the packed forward of a tiny ESM-2 equals the plain Hugging Face padded forward (CPU, fp32)."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from bioft_tutorial import attention, data, packing
from bioft_tutorial.models import random_esm2, tiny_esm2_config

MASK = 32


def _chains(lengths, seed=0, labels=True):
    """Tokenized random chains (<cls> residues <eos>) with per-residue labels, -100 on special tokens."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = [0, *torch.randint(4, 24, (n,), generator=g).tolist(), 2]
        ex = {"input_ids": ids}
        if labels:
            lab = torch.randint(0, 3, (n,), generator=g).tolist()
            lab[n // 2] = -100  # an unresolved residue
            ex["labels"] = [-100, *lab, -100]
        out.append(ex)
    return out


def _lora_pair(task="token", num_labels=3):
    """Two identical LoRA models (random non-zero A and B, so every LoRA weight gets a gradient)."""
    base = random_esm2(tiny_esm2_config(), task=task, num_labels=num_labels, seed=1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value", "dense"],
                        modules_to_save=["classifier"], init_lora_weights=False)
    torch.manual_seed(2)
    reference = get_peft_model(copy.deepcopy(base), config)
    packed = get_peft_model(copy.deepcopy(base), config)
    packed.load_state_dict(reference.state_dict())
    return reference, packed


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_pack_rows_first_fit_by_hand():
    rows = packing.pack_rows([6, 5, 4, 3, 2], token_budget=10)
    assert rows == [[0, 2], [1, 3, 4]]  # 6 -> row 0; 5 -> new row; 4 -> row 0 (6+4); 3, 2 -> row 1
    assert packing.pack_rows([6, 5, 4, 3, 2], 10, max_chains=2) == [[0, 2], [1, 3], [4]]
    assert packing.pack_rows([2, 6, 5, 4], 10, sort=True) == [[1, 3], [2, 0]]
    assert packing.pack_rows([6, 5, 4, 3, 2], 10, window=1) == [[0], [1, 2], [3, 4]]  # only the newest row open


def test_pack_rows_every_chain_once_within_budget():
    lengths = torch.randint(3, 300, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    rows = packing.pack_rows(lengths, 1024, max_chains=7)
    assert sorted(i for r in rows for i in r) == list(range(200))
    assert all(sum(lengths[i] for i in r) <= 1024 and len(r) <= 7 for r in rows)
    with pytest.raises(ValueError, match="token_budget"):
        packing.pack_rows([10, 2000], 1024)


def test_collate_packed_layout():
    chains = _chains([3, 5])
    batch = packing.collate_packed(chains, pad_to=20, max_chains=6, max_length=8)
    assert batch["input_ids"].shape == batch["position_ids"].shape == batch["labels"].shape == (1, 20)
    # chains of 5 and 7 tokens, then 8 padding tokens split into one chain of max_length=8
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 12, 20, 20, 20, 20]
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["position_ids"][0].tolist() == [*range(5), *range(7), *range(8)]
    assert batch["input_ids"][0, :12].tolist() == chains[0]["input_ids"] + chains[1]["input_ids"]
    assert (batch["input_ids"][0, 12:] == 1).all() and (batch["labels"][0, 12:] == -100).all()
    assert batch["max_length_q"] == batch["max_length_k"] == 8
    dynamic = packing.collate_packed(chains)
    assert dynamic["input_ids"].shape == (1, 12) and dynamic["max_length_q"] == 7


def test_collate_packed_errors():
    chains = _chains([30, 30])
    with pytest.raises(ValueError, match="pad_to"):
        packing.collate_packed(chains, pad_to=40)
    with pytest.raises(ValueError, match="max_length"):
        packing.collate_packed(chains, max_length=20)
    with pytest.raises(ValueError, match="max_chains"):
        packing.collate_packed(chains, pad_to=100, max_chains=2)  # 2 chains + a padding chain
    with pytest.raises(ValueError, match="labels"):
        packing.collate_packed([{"input_ids": [0, 5, 2], "labels": [-100, 1]}])


def test_unpack_round_trip():
    chains = _chains([4, 9, 1])
    batch = packing.collate_packed(chains, pad_to=30)
    parts = packing.unpack(batch["input_ids"], batch["cu_seq_lens_q"])
    assert [p.tolist() for p in parts[:3]] == [c["input_ids"] for c in chains]
    assert sum(len(p) for p in parts) == 30


@pytest.mark.parametrize("static", [False, True])
def test_packed_loss_and_lora_gradients_match_padded_hf(static):
    """The issue's correctness bar: loss and every trainable gradient within 1e-5 of HF's padded forward."""
    reference, packed = _lora_pair()
    assert attention.enable_packed_attention(packed) == "sdpa"  # CPU: one SDPA call per chain
    chains = _chains([7, 40, 3, 25, 12], seed=3)
    padded_batch = data.collate_padded(chains)
    packed_batch = packing.collate_packed(chains, pad_to=128 if static else None, max_chains=12 if static else None,
                                          max_length=64 if static else packing.MAX_TOKENS)
    out_ref = reference(**padded_batch)
    out_ref.loss.backward()
    out = packed(**packed_batch)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(out_ref.loss.item(), abs=1e-5, rel=1e-5)
    g_ref, g = _grads(reference), _grads(packed)
    assert g_ref.keys() == g.keys() and len(g) == 2 * 6 * 2 + 2  # A and B of 6 modules in 2 layers; head W, b
    for name in g_ref:
        assert torch.count_nonzero(g_ref[name]) > 0, name
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-5, rtol=1e-5, msg=name)
    per_chain = packing.unpack(out.logits, packed_batch["cu_seq_lens_q"])
    for i, c in enumerate(chains):
        torch.testing.assert_close(per_chain[i], out_ref.logits[i, :len(c["input_ids"])], atol=1e-5, rtol=1e-5)


def test_padded_batches_still_work_after_enabling():
    reference, packed = _lora_pair()
    attention.enable_packed_attention(packed)
    batch = data.collate_padded(_chains([5, 17, 9]))
    torch.testing.assert_close(packed(**batch).logits, reference(**batch).logits, atol=1e-6, rtol=1e-6)


def test_token_dropout_is_per_chain():
    """ESM-2 scales embeddings by the <mask> fraction of the row; packed rows must use each chain's own."""
    model = random_esm2(tiny_esm2_config(), task="mlm", seed=0)
    assert model.config.token_dropout
    chains = _chains([10, 25, 6], labels=False)
    chains[0]["input_ids"][3] = chains[0]["input_ids"][5] = MASK  # 2 of 12 tokens masked
    chains[1]["input_ids"][2] = MASK  # 1 of 27
    reference = model(**data.collate_padded(chains)).logits
    packed_model = copy.deepcopy(model)
    attention.enable_packed_attention(packed_model)
    batch = packing.collate_packed(chains, pad_to=64)
    batch.pop("labels")
    parts = packing.unpack(packed_model(**batch).logits, batch["cu_seq_lens_q"])
    for i, c in enumerate(chains):
        torch.testing.assert_close(parts[i], reference[i, :len(c["input_ids"])], atol=1e-5, rtol=1e-5)
    # without the correction the packed row would mix the chains' fractions: the test above would fail
    for module in packed_model.modules():
        if hasattr(module, "_bioft_token_dropout_hook"):
            module._bioft_token_dropout_hook.remove()
    wrong = packing.unpack(packed_model(**batch).logits, batch["cu_seq_lens_q"])
    assert (wrong[0] - reference[0, :12]).abs().max() > 1e-3


def test_token_dropout_scale_by_hand():
    """The embedding of an unmasked token is word_embedding * (1 - 0.12) / (1 - its chain's mask fraction)."""
    model = random_esm2(tiny_esm2_config(), task=None, seed=0)
    attention.enable_packed_attention(model)
    chains = _chains([2, 2], labels=False)  # 4 tokens each
    chains[0]["input_ids"][1] = MASK  # chain 0: 1 of 4 masked; chain 1: none
    batch = packing.collate_packed(chains)
    emb = model.embeddings(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    word = model.embeddings.word_embeddings(batch["input_ids"])
    torch.testing.assert_close(emb[0, 2], word[0, 2] * 0.88 / 0.75)
    torch.testing.assert_close(emb[0, 5], word[0, 5] * 0.88)
    assert emb[0, 1].abs().max() == 0


def test_weights_and_state_dict_unchanged():
    model = random_esm2(tiny_esm2_config(), task="token", num_labels=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attention.enable_packed_attention(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_enable_errors():
    seq_model = random_esm2(tiny_esm2_config(), task="sequence", num_labels=1)
    with pytest.raises(ValueError, match="per-token head"):
        attention.enable_packed_attention(seq_model)
    model = random_esm2(tiny_esm2_config(), task="token", num_labels=3)
    with pytest.raises(ValueError, match="backend"):
        attention.enable_packed_attention(model, backend="flash")
    with pytest.raises(RuntimeError, match="varlen"):
        attention.enable_packed_attention(model, backend="varlen")  # no CUDA GPU here
    attention.enable_packed_attention(model)
    batch = packing.collate_packed(_chains([3, 4]), pad_to=16)
    mask = torch.ones_like(batch["input_ids"])
    mask[0, -1] = 0
    with pytest.raises(ValueError, match="attention_mask"):
        model(**batch, attention_mask=mask)


def test_training_loop_hook_packed_batches(tmp_path):
    """train.py's ``batching="packed"`` plugs this module in; evaluation through it equals padded evaluation."""
    from bioft_tutorial import lora, predict, train

    model = lora.prepare_model(random_esm2(tiny_esm2_config(), "token", 3, seed=0), "lora",
                               lora.esm2_lora_config(dropout=0.0))
    chains = _chains([30, 12, 50, 8, 21, 40], seed=5)
    config = train.TrainConfig(output_dir=str(tmp_path), max_steps=2, warmup_steps=0, token_budget=128,
                               min_token_budget=64, eval_every=2, save_every=2, batching="packed", progress=False)
    result = train.train(model, chains, chains[:3], config)
    assert len(result.history) == 2 and result.history["loss"].notna().all()
    padded = predict.evaluate(model, chains, token_budget=256)
    packed = predict.evaluate(model, chains, token_budget=256, padded=False,
                              collate=lambda ex: packing.collate_packed(ex, pad_token_id=1))
    assert packed["loss"] == pytest.approx(padded["loss"], rel=1e-5)
    assert packed["accuracy"] == padded["accuracy"]
