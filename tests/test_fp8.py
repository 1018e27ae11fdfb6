"""FP8 for the frozen encoder linears (bioft_tutorial.fp8) on the CPU: which layers convert, what stays as it
was, the products against FP8 rounding done by hand (torchao's emulation), and the clean fall-back where a
device has no FP8 (the CPU, GPUs older than compute capability 8.9).

The conversion tests need torchao (the ``fp8`` extra) and are skipped without it; the choice of layers, the
fall-back, the error without torchao and the settings run everywhere."""
from __future__ import annotations

import copy
import logging
import sys

import numpy as np
import pytest
import torch

from bioft_tutorial import data, fp8, lora, models, train

NO_TORCHAO = "torchao is not installed (pip install 'bioft-tutorial[fp8]'): the FP8 conversion is not tested"
ENCODER_LINEARS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                   "intermediate.dense", "output.dense")


def _tiny(method: str) -> torch.nn.Module:
    model = models.random_esm2(models.tiny_esm2_config(), task="token", num_labels=3, seed=0)
    return lora.prepare_model(model, method, lora.esm2_lora_config(r=8) if method == "lora" else None)


def _fp8_round(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Tensorwise FP8 rounding written out: scale the absolute maximum to the format's largest value, cast, undo."""
    scale = torch.finfo(dtype).max / x.abs().max().double()
    return ((x.double() * scale).to(dtype).double() / scale).float()


@pytest.fixture(scope="module")
def flip_chains():
    chains = data.load_flip_secondary_structure("train", max_chains=24, seed=0)
    return data.secondary_structure_examples(chains, models.load_tokenizer(), as_dataset=False)


def test_exactly_the_frozen_encoder_linears_are_chosen():
    layers = [f"encoder.layer.{i}.{name}" for i in range(2) for name in ENCODER_LINEARS]
    lora_model = _tiny("lora")
    assert fp8.frozen_encoder_linears(lora_model) == [f"base_model.model.esm.{n}.base_layer" for n in layers]
    assert fp8.frozen_encoder_linears(_tiny("head")) == [f"esm.{n}" for n in layers]  # not the classifier
    assert fp8.frozen_encoder_linears(_tiny("full")) == []  # every weight trains: nothing is frozen


def test_conversion_leaves_adapters_head_and_weights_as_they_were():
    pytest.importorskip("torchao.float8", reason=NO_TORCHAO)
    model = _tiny("lora")
    before = {name: p for name, p in model.named_parameters()}
    names = fp8.convert_frozen_linears(model, emulate=True)
    modules = dict(model.named_modules())
    assert fp8.fp8_linears(model) == names and len(names) == 12
    assert all(type(modules[n]).__name__ == "Float8Linear" for n in names)
    others = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear) and n not in names]
    assert others and all(type(modules[n]) is torch.nn.Linear for n in others)  # lora_A/B, heads untouched
    assert any("lora_A" in n for n in others) and any("classifier" in n for n in others)
    after = dict(model.named_parameters())
    assert list(after) == list(before) and all(after[n] is p for n, p in before.items())  # same Parameters
    assert fp8.convert_frozen_linears(model, emulate=True) == []  # a second call converts nothing new


def test_fp8_products_match_hand_rounded_operands():
    """Forward ``x W^T + b`` with x and W rounded to e4m3; input gradient ``dy W`` with dy in e5m2."""
    pytest.importorskip("torchao.float8", reason=NO_TORCHAO)
    model = _tiny("head")
    fp8.convert_frozen_linears(model, emulate=True)
    linear = model.esm.encoder.layer[0].intermediate.dense
    weight, bias = linear.weight.detach(), linear.bias.detach()
    x = torch.randn(5, 7, 64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = linear(x)
    e4m3, e5m2 = torch.float8_e4m3fn, torch.float8_e5m2
    expected = _fp8_round(x.detach(), e4m3) @ _fp8_round(weight, e4m3).T + bias
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y, x @ weight.T + bias, rtol=1e-3, atol=1e-3)  # FP8 is really in use
    grad_y = torch.randn_like(y)
    y.backward(grad_y)
    torch.testing.assert_close(x.grad, _fp8_round(grad_y, e5m2) @ _fp8_round(weight, e4m3), rtol=1e-5, atol=1e-5)
    assert linear.weight.grad is None  # the frozen weight gets no gradient


def test_fp8_model_stays_near_fp32_with_about_the_error_fp8_rounding_predicts():
    """Final hidden states of the tiny model: FP8 (e4m3, 4 significant bits) errs more than bf16 (8 bits), but
    not wildly more than the 2**4 ratio of their precisions says."""
    pytest.importorskip("torchao.float8", reason=NO_TORCHAO)
    reference = _tiny("head").eval()
    converted = copy.deepcopy(reference)
    fp8.convert_frozen_linears(converted, emulate=True)
    ids = torch.randint(4, 24, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = reference.esm(input_ids=ids).last_hidden_state
        with_fp8 = converted.esm(input_ids=ids).last_hidden_state
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with_bf16 = reference.esm(input_ids=ids).last_hidden_state.float()
    err_fp8 = ((with_fp8 - exact).norm() / exact.norm()).item()
    err_bf16 = ((with_bf16 - exact).norm() / exact.norm()).item()
    assert err_bf16 < err_fp8 < min(0.15, 64 * err_bf16), (err_fp8, err_bf16)


def _run(model, chains, tmp_path, precision, compile_backend=None):
    config = train.TrainConfig(output_dir=str(tmp_path / precision), max_steps=3, warmup_steps=1, token_budget=2048,
                               eval_every=None, save_every=None, batching="packed", compile=compile_backend,
                               precision=precision, device="cpu", progress=False, seed=0)
    return train.train(model, chains, None, config).history["loss"].to_numpy()


def test_on_a_cpu_fp8_is_off_with_a_warning_and_trains_in_fp32(flip_chains, tmp_path, caplog, one_thread):
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.fp8"):
        fp8_loss = _run(_tiny("lora"), flip_chains, tmp_path, "fp8")
    assert "precision='fp8' is off: the CPU has no FP8 matrix units" in caplog.text and "in fp32 instead" in caplog.text
    fp32_model = _tiny("lora")
    np.testing.assert_array_equal(fp8_loss, _run(fp32_model, flip_chains, tmp_path, "fp32"))
    assert not fp8.fp8_linears(fp32_model)


@pytest.mark.slow
def test_train_with_fp8_emulated_tracks_fp32(flip_chains, tmp_path, monkeypatch, one_thread):
    """train.train with precision='fp8' where FP8 is pretended (emulated on the CPU), compiled like the fast path:
    the frozen linears compute in FP8 and the losses stay within 0.5% of fp32's."""
    pytest.importorskip("torchao.float8", reason=NO_TORCHAO)
    monkeypatch.setattr(fp8, "fp8_unavailable", lambda device: None)
    model = _tiny("lora")
    torch._dynamo.reset()
    fp8_loss = _run(model, flip_chains, tmp_path, "fp8", compile_backend="aot_eager")
    assert len(fp8.fp8_linears(model)) == 12
    fp32_loss = _run(_tiny("lora"), flip_chains, tmp_path, "fp32", compile_backend="aot_eager")
    np.testing.assert_allclose(fp8_loss, fp32_loss, rtol=5e-3)
    assert not np.array_equal(fp8_loss, fp32_loss)


def test_older_gpus_and_cpus_have_no_fp8(monkeypatch):
    assert "compute capability 8.9 or newer" in fp8.fp8_unavailable("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert fp8.fp8_unavailable("cuda") == ("NVIDIA A100-SXM4-80GB has compute capability 8.0; FP8 needs 8.9 or "
                                           "newer (Ada, Hopper, Blackwell)")
    for capability in ((8, 9), (9, 0), (10, 0)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert fp8.fp8_unavailable("cuda") is None


def test_missing_torchao_gets_our_error_with_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # import fails as if torchao were not installed
    with pytest.raises(ImportError, match=r"precision='fp8' needs torchao.*bioft-tutorial\[fp8\]"):
        fp8.convert_frozen_linears(_tiny("lora"))


def test_full_fine_tuning_has_nothing_to_convert(monkeypatch, caplog):
    pytest.importorskip("torchao.float8", reason=NO_TORCHAO)
    monkeypatch.setattr(fp8, "fp8_unavailable", lambda device: None)
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.fp8"):
        assert fp8.enable_fp8(_tiny("full"), "cpu") is False
    assert "no frozen linear layer inside an EsmLayer" in caplog.text


def test_precision_fp8_is_a_train_config_choice(tmp_path):
    assert train.TrainConfig(output_dir=str(tmp_path), precision="fp8").precision == "fp8"
    with pytest.raises(ValueError, match=r"TrainConfig.precision='fp16'.*'fp8'"):
        train.TrainConfig(output_dir=str(tmp_path), precision="fp16")
