import pytest
import torch

from bioft_tutorial.models import (
    ESM2_FAMILY,
    count_parameters,
    esm2_config,
    load_esm2,
    load_tokenizer,
    tiny_esm2_config,
)


def test_tokenizer_is_real_esm_vocab():
    tok = load_tokenizer()
    assert len(tok) == 33
    ids = tok("MKTAYIAK")["input_ids"]
    assert ids[0] == tok.cls_token_id == 0 and ids[-1] == tok.eos_token_id == 2
    assert tok.convert_ids_to_tokens(ids[1:-1]) == list("MKTAYIAK")
    assert tok.mask_token_id == 32 and tok.pad_token_id == 1


@pytest.mark.parametrize("task,cls_name", [(None, "EsmModel"), ("token", "EsmForTokenClassification"),
                                           ("sequence", "EsmForSequenceClassification"), ("mlm", "EsmForMaskedLM")])
def test_tiny_model_tasks(task, cls_name):
    model, tok = load_esm2("tiny", task=task, num_labels=3 if task in ("token", "sequence") else None)
    assert type(model).__name__ == cls_name
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert model.config.position_embedding_type == "rotary" and model.config.token_dropout
    batch = tok(["MKTAYIAKQR", "MKV"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out[0]).all()


def test_tiny_is_seeded():
    a, _ = load_esm2("tiny", seed=1)
    b, _ = load_esm2("tiny", seed=1)
    c, _ = load_esm2("tiny", seed=2)
    wa, wb, wc = (m.encoder.layer[0].attention.self.query.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_head_needs_num_labels():
    with pytest.raises(ValueError, match="num_labels"):
        load_esm2("tiny", task="token")
    with pytest.raises(ValueError, match="unknown task 'tokens'"):
        load_esm2("tiny", task="tokens", num_labels=3)


def test_regression_head():
    model, _ = load_esm2("tiny", task="sequence", num_labels=1)
    assert model.config.problem_type == "regression"


def test_offline_hub_error_says_what_to_do():
    with pytest.raises(OSError, match=r"(?s)facebook/esm2_t6_8M_UR50D.*unreachable.*pass the folder.*tiny"):
        load_esm2("facebook/esm2_t6_8M_UR50D")


def test_local_folder_round_trip(tmp_path):
    model, tok = load_esm2("tiny", task="token", num_labels=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    again, _ = load_esm2(str(tmp_path), task="token", num_labels=3)
    for (name, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(p, q), name


def test_loading_reports_new_and_unused_weights_in_one_line(tmp_path, caplog):
    import logging

    from bioft_tutorial.models import random_esm2

    random_esm2(tiny_esm2_config(), task="mlm").save_pretrained(tmp_path / "mlm")
    load_tokenizer().save_pretrained(tmp_path / "mlm")
    with caplog.at_level(logging.INFO):
        load_esm2(str(tmp_path / "mlm"), task="token", num_labels=3)  # a new head: expected, so info
    ours = [r for r in caplog.records if r.name == "bioft_tutorial.models"]
    assert len(ours) == 1 and ours[0].levelno == logging.INFO
    assert "classifier.weight" in ours[0].getMessage() and "lm_head.dense" in ours[0].getMessage()
    assert not any("LOAD REPORT" in r.getMessage() for r in caplog.records)  # transformers' table left out
    caplog.clear()
    random_esm2(tiny_esm2_config(), task="token", num_labels=3).save_pretrained(tmp_path / "token")
    with caplog.at_level(logging.INFO):
        load_esm2(str(tmp_path / "token"), task="mlm")  # the language-model head is missing: a warning
    (record,) = [r for r in caplog.records if r.name == "bioft_tutorial.models"]
    assert record.levelno == logging.WARNING and "lm_head" in record.getMessage()


def _params_by_formula(layers, hidden, heads, vocab=33, labels=3):
    """Independent count: ESM-2 layer = attention (4 h^2 + 4 h) + 2 LayerNorms (4 h) + FFN (8 h^2 + 5 h);
    plus embeddings, the final LayerNorm, the contact head (one weight per layer x head, one bias), the head."""
    per_layer = 4 * hidden * hidden + 4 * hidden + 4 * hidden + 8 * hidden * hidden + 4 * hidden + hidden
    embeddings = vocab * hidden
    final_norm = 2 * hidden
    contact_head = layers * heads + 1
    head = hidden * labels + labels
    return layers * per_layer + embeddings + final_norm + contact_head + head


@pytest.mark.parametrize("size", list(ESM2_FAMILY))
def test_family_parameter_counts(size):
    shape = ESM2_FAMILY[size]
    counts = count_parameters(esm2_config(size), task="token", num_labels=3)
    assert counts["total"] == _params_by_formula(
        shape["num_hidden_layers"], shape["hidden_size"], shape["num_attention_heads"])
    nominal = {"8M": 8e6, "35M": 35e6, "150M": 150e6, "650M": 650e6, "3B": 3e9, "15B": 15e9}[size]
    assert 0.85 < counts["total"] / nominal < 1.15


def test_unknown_size():
    with pytest.raises(ValueError, match="unknown ESM-2 size '7B'"):
        esm2_config("7B")


def test_tiny_config_shape():
    cfg = tiny_esm2_config(num_hidden_layers=3, hidden_size=32, num_attention_heads=2)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size) == (3, 32, 128, 33)
