"""LoRA config, methods, parameter counts, memory estimates and the adapter round trip (tiny model, CPU)."""
from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from bioft_tutorial import lora, models


def _tiny(task="token", num_labels=3, seed=0):
    return models.random_esm2(models.tiny_esm2_config(), task, num_labels, seed=seed)


def test_unknown_target_module_names_the_valid_ones():
    with pytest.raises(ValueError, match="q_proj.*query, key, value, dense"):
        lora.esm2_lora_config(target_modules=("q_proj", "value"))
    with pytest.raises(ValueError, match="rank"):
        lora.esm2_lora_config(r=0)
    with pytest.raises(ValueError, match="task"):
        lora.esm2_lora_config(task="contact")


@pytest.mark.parametrize("task,num_labels", [("token", 3), ("sequence", 1)])
def test_trainable_parameters_match_the_low_rank_formula(task, num_labels):
    base = _tiny(task, num_labels)
    head = sum(p.numel() for n, p in base.named_parameters() if n.startswith("classifier"))
    # independent count: r * (d_in + d_out) for every encoder Linear named query/key/value/dense
    expected = sum(8 * (m.in_features + m.out_features) for n, m in base.named_modules()
                   if isinstance(m, torch.nn.Linear) and ".encoder.layer." in n
                   and n.rsplit(".", 1)[-1] in ("query", "key", "value", "dense"))
    model = lora.prepare_model(base, "lora", lora.esm2_lora_config(r=8, task=task))
    counts = lora.parameter_counts(model)
    assert counts["trainable"] == expected + head
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any("classifier" in n and "lora_" in n for n in names)  # the head is trained in full, no adapter


def test_methods_choose_what_trains():
    head = lora.prepare_model(_tiny(), "head")
    assert {n.split(".")[0] for n, p in head.named_parameters() if p.requires_grad} == {"classifier"}
    full = lora.prepare_model(_tiny(), "full")
    frozen = [n for n, p in full.named_parameters() if not p.requires_grad]
    assert frozen and all("contact_head" in n for n in frozen)
    with pytest.raises(ValueError, match="lora_config"):
        lora.prepare_model(_tiny(), "lora")


def test_cast_frozen_keeps_trainable_weights_in_fp32():
    model = models.cast_frozen(lora.prepare_model(_tiny(), "lora", lora.esm2_lora_config()))
    for p in model.parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16)


def test_memory_estimate_from_the_config_alone():
    config = models.esm2_config("650M")
    n = models.count_parameters(config, "token", 3)["total"]
    full = lora.estimate_training_memory(config, "full", token_budget=0)
    assert full["total_params"] == n
    assert full["total_gib"] * 2**30 == pytest.approx(16 * n)  # fp32 weights + grads + two Adam moments
    low = lora.estimate_training_memory("650M", "lora", token_budget=1000)
    assert low["weights_gib"] < full["weights_gib"] / 1.9 and low["trainable_params"] < n / 100
    assert low["activations_gib"] * 2**30 == pytest.approx(1000 * 34 * 1280 * 33)
    table = lora.family_memory_table(sizes=("8M", "35M"))
    assert list(table["method"]) == ["lora", "full", "lora", "full"]


def test_adapter_round_trip_and_merge(tmp_path):
    model = lora.prepare_model(_tiny(seed=0), "lora", lora.esm2_lora_config(dropout=0.0))
    with torch.no_grad():  # make the adapters and the head differ from their initial values
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    x = torch.randint(4, 24, (2, 30))
    mask = torch.ones_like(x)
    before = model(input_ids=x, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "adapter", save_embedding_layers=False)
    reloaded = lora.load_adapter(_tiny(seed=0), str(tmp_path / "adapter")).eval()  # the fused layer, as trained
    after = reloaded(input_ids=x, attention_mask=mask).logits
    assert torch.equal(before, after)
    plain = PeftModel.from_pretrained(_tiny(seed=0), tmp_path / "adapter").eval()  # PEFT's own layer
    assert torch.allclose(plain(input_ids=x, attention_mask=mask).logits, before, atol=1e-5)
    merged = reloaded.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(merged(input_ids=x, attention_mask=mask).logits, before, atol=1e-5)
    assert lora.folder_bytes(tmp_path / "adapter") < 0.5 * sum(p.numel() * 4 for p in merged.parameters())


def test_matmul_params_counts_the_encoder_linear_weights():
    from transformers import EsmModel

    config = models.esm2_config("650M")
    with torch.device("meta"):
        encoder = EsmModel(config).encoder
    counted = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    assert lora.matmul_params(config) == counted and 640e6 < counted < 660e6


def test_flops_per_token_by_hand():
    config = models.tiny_esm2_config()
    d, layers = config.hidden_size, config.num_hidden_layers
    n = layers * 12 * d * d  # 4 d x d attention products, 2 d x 4d feed-forward products per layer
    assert lora.flops_per_token(config, "lora", 100) == 4 * n + 12 * 100 * d * layers
    assert lora.flops_per_token(config, "full", 100) == 6 * n + 12 * 100 * d * layers
    assert lora.flops_per_token(config, "head", 100) == 2 * n + 4 * 100 * d * layers
    with pytest.raises(ValueError, match="unknown method"):
        lora.flops_per_token(config, "adapter", 100)
