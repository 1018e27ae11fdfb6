"""variants.finetune: the classifier's logits by hand, LoRA placement, and a run of the book's own train.train
(checkpoints, resume, adapter save and load) on a tiny random DNA model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bioft_tutorial import lora, models, train
from bioft_tutorial.variants import TinyDNALM
from bioft_tutorial.variants.finetune import (ClassifierConfig, DNAForSequenceClassification, classifier_for,
                                              dna_lora_config, linear_modules, variant_examples)

WINDOW, INDEX = 24, 12
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is fastest


def _lm(seed: int = 5) -> TinyDNALM:
    return TinyDNALM(seed=seed, n_layers=3, max_length=64, batch_size=8)


def _windows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    refs = ["".join(rng.choice(list("ACGT"), WINDOW)) for _ in range(n)]
    alts = [r[:INDEX] + ("A" if r[INDEX] != "A" else "G") + r[INDEX + 1:] for r in refs]
    return pd.DataFrame({"ref_seq": refs, "alt_seq": alts, "variant_index": INDEX})


def _by_hand(lm, seq: str, layer: int) -> torch.Tensor:
    """Block ``layer``'s output for one window, block by block (no hooks)."""
    ids = lm.encode([seq])[0]
    x = lm.model.embed(ids) + lm.model.pos(torch.arange(len(seq)))
    for block in lm.model.blocks[:layer + 1]:
        x, _ = block(x)
    return x[0]


@pytest.mark.parametrize("pooling,contrast", [("variant", "ref-minus-alt"), ("mean", "concat"), ("mean", "alt")])
def test_logits_equal_the_head_on_a_hand_pooled_block(pooling, contrast):
    lm, windows = _lm(), _windows(3)
    model = classifier_for(lm, 1, pooling=pooling, contrast=contrast, variant_index=INDEX)
    batch = {"input_ids": torch.as_tensor(np.stack([e["input_ids"] for e in variant_examples(lm, windows,
                                                                                             contrast=contrast)]))}
    with torch.no_grad():
        logits = model(**batch).logits
        for i, row in windows.iterrows():
            ref, alt = (_by_hand(lm, row[k], 1) for k in ("ref_seq", "alt_seq"))
            ref, alt = (x[INDEX] if pooling == "variant" else x.mean(0) for x in (ref, alt))
            features = {"alt": alt, "ref-minus-alt": ref - alt, "concat": torch.cat([ref, alt])}[contrast]
            torch.testing.assert_close(logits[i], model.classifier(features), atol=1e-5, rtol=1e-5)
    assert logits.shape == (3, 2) and model.config.pad_token_id == lm.pad_id


def test_lora_goes_into_the_linear_layers_up_to_the_chosen_block():
    lm = _lm()
    table = linear_modules(lm.model, 1)
    assert list(table["name"]) == [f"blocks.{b}.{m}" for b in (0, 1) for m in ("qkv", "out", "mlp.0", "mlp.2")]
    classifier = classifier_for(lm, 1, variant_index=INDEX)
    head = sum(p.numel() for p in classifier.classifier.parameters())
    model = lora.prepare_model(classifier, "lora", dna_lora_config(classifier, r=4, target_modules=["qkv", "out"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapted = {n.split(".lora_")[0].replace("base_model.model.backbone.", "") for n in trainable if "lora_" in n}
    assert adapted == {"blocks.0.qkv", "blocks.0.out", "blocks.1.qkv", "blocks.1.out"}
    rows = table[table["name"].isin(adapted)]
    assert lora.parameter_counts(model)["trainable"] == 4 * (rows["in"] + rows["out"]).sum() + head
    with pytest.raises(ValueError, match="match no nn.Linear"):
        dna_lora_config(classifier, target_modules=["q_proj"])


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        lm = _lm()
        classifier = classifier_for(lm, 2, variant_index=INDEX)
        torch.manual_seed(0)  # LoRA's A matrices start random
        model = lora.prepare_model(classifier, "lora", dna_lora_config(classifier, r=2, dropout=0.0))
        if checkpointing:
            models.enable_activation_checkpointing(model)
        with torch.no_grad():  # LoRA's B starts at zero; make the adapters matter
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
        ids = torch.as_tensor(np.stack([e["input_ids"] for e in variant_examples(lm, _windows(4))]))
        model(input_ids=ids).logits.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_mixed_precision_backbones_keep_their_float32_parameters():
    lm = _lm()
    lm.model.to(torch.bfloat16)
    lm.model.blocks[0].norm1.float()  # stands in for Evo 2's float32 filter poles
    classifier = DNAForSequenceClassification(lm.model, ClassifierConfig(layer=0, hidden_size=32))
    names = dict(classifier.backbone.named_buffers())
    assert {"blocks.0.norm1.weight", "blocks.0.norm1.bias"} <= set(names)
    models.cast_frozen(classifier, torch.bfloat16)  # what train.train does on a GPU
    assert names["blocks.0.norm1.weight"].dtype == torch.float32


def test_examples_refuse_windows_of_different_shapes():
    lm, windows = _lm(), _windows(3)
    examples = variant_examples(lm, windows, [1, 0, 1])
    assert len(examples[0]["input_ids"]) == 2 * WINDOW and examples[2]["labels"] == 1
    assert list(examples[0]["input_ids"][WINDOW:]) == lm.encode([windows["alt_seq"][0]])[0][0].tolist()
    clipped = pd.concat([windows, windows.iloc[:1].assign(variant_index=3)])
    with pytest.raises(ValueError, match="clipped near a contig end"):
        variant_examples(lm, clipped, [0, 1, 0, 1])


def test_train_resume_and_adapter_round_trip(tmp_path):
    windows = _windows(64, seed=1)
    labels = (windows["alt_seq"].str[INDEX - 1] == "A").astype(int).tolist()  # learnable from the window

    def fresh():
        lm = _lm()
        classifier = classifier_for(lm, 1, variant_index=INDEX)
        return lm, lora.prepare_model(classifier, "lora", dna_lora_config(classifier, r=4))

    lm, model = fresh()
    examples = variant_examples(lm, windows, labels)
    config = dict(output_dir=str(tmp_path), token_budget=16 * 2 * WINDOW, min_token_budget=2 * WINDOW, learning_rate=3e-3, warmup_steps=1,
                  eval_every=4, save_every=4, best_metric="loss", progress=False, device="cpu")
    first = train.train(model, examples[:48], examples[48:], train.TrainConfig(max_steps=4, **config))
    lm2, model2 = fresh()
    resumed = train.train(model2, examples[:48], examples[48:], train.TrainConfig(max_steps=8, resume=True, **config))
    assert list(resumed.history["step"]) == list(range(1, 9))
    assert resumed.history["loss"].iloc[-1] < first.history["loss"].iloc[0]
    base = classifier_for(_lm(), 1, variant_index=INDEX)
    loaded = lora.load_adapter(base, str(tmp_path / "best" / "adapter"))
    ids = torch.as_tensor(np.stack([e["input_ids"] for e in examples[48:]]))
    with torch.no_grad():  # eval mode: no LoRA dropout
        torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, model2.eval()(input_ids=ids).logits)
