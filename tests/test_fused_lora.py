"""The fused LoRA layer: PEFT's values, gradients and files, compiled without breaks, PEFT's path where it must."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from peft.tuners.lora.layer import Linear as PeftLinear
from torch._dynamo.utils import counters

from bioft_tutorial import fused_lora, lora, models


def _pair(dtype=torch.float64, dropout=0.0, seed=0):
    """The same tiny ESM-2 with adapters twice: the fused layer and PEFT's, identical non-zero weights."""
    base = models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=seed).to(dtype)
    fused = lora.prepare_model(copy.deepcopy(base), "lora", lora.esm2_lora_config(r=4, dropout=dropout))
    peft = lora.prepare_model(copy.deepcopy(base), "lora", lora.esm2_lora_config(r=4, dropout=dropout, fused=False))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for (name, p), (_, q) in zip(peft.named_parameters(), fused.named_parameters(), strict=True):
            if "lora_B" in name:  # B starts at zero: make the update count
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            q.copy_(p)
    return fused, peft


def _loss_and_grads(model, ids, labels, autocast=False):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 24, (2, 19), generator=g), torch.randint(0, 3, (2, 19), generator=g)


def test_layer_matches_the_formula_by_autograd():
    """y = x (W + s B A)^T + b and its gradients, against autograd on the plain formula (fp64)."""
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((3, 5, 7), (6, 7), (6,)))
    a, bb = (torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((2, 7), (6, 2)))
    x.requires_grad_(True)
    b.requires_grad_(True)  # a trainable bias (LoRA's bias="all") gets its gradient too
    y = fused_lora.lora_linear(x, w, b, a, bb, 1.5)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(y, (x, a, bb, b), dy)
    x2, a2, b2, bias2 = (t.detach().clone().requires_grad_(True) for t in (x, a, bb, b))
    y2 = x2 @ (w + 1.5 * b2 @ a2).T + bias2
    want = torch.autograd.grad(y2, (x2, a2, b2, bias2), dy)
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    for got_t, want_t in zip(got, want, strict=True):
        torch.testing.assert_close(got_t, want_t, rtol=1e-12, atol=1e-12)


def test_model_matches_peft_layer_in_fp64():
    fused, peft = _pair()
    assert isinstance(fused.base_model.model.esm.encoder.layer[0].attention.self.query, fused_lora.FusedLoraLinear)
    assert type(peft.base_model.model.esm.encoder.layer[0].attention.self.query) is PeftLinear
    ids, labels = _batch()
    loss_f, grads_f = _loss_and_grads(fused.train(), ids, labels)
    loss_p, grads_p = _loss_and_grads(peft.train(), ids, labels)
    assert loss_f == pytest.approx(loss_p, abs=1e-12)
    assert grads_f.keys() == grads_p.keys() and any("lora_A" in n for n in grads_f)
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-9, atol=1e-12, msg=name)


def test_bf16_autocast_is_as_close_to_fp32_as_peft_layer():
    """Under bf16 autocast the fused layer rounds the merged weight; its error against the fp32 values is of
    the order of PEFT's own bf16 error (the merged product is not worse)."""
    fused, peft = _pair(torch.float32)
    ids, labels = _batch(1)
    loss_ref, grads_ref = _loss_and_grads(copy.deepcopy(peft), ids, labels)
    errors = {}
    for name, model in (("fused", fused), ("peft", peft)):
        loss, grads = _loss_and_grads(model, ids, labels, autocast=True)
        rel = [((grads[n] - grads_ref[n]).norm() / grads_ref[n].norm()).item() for n in grads_ref if "lora_" in n]
        errors[name] = (abs(loss - loss_ref), max(rel))
    assert errors["fused"][0] < 1e-2 and errors["fused"][1] < 0.15  # bf16 keeps 8 bits: a few % per tensor
    assert errors["fused"][1] < 2 * errors["peft"][1] + 1e-3


def test_compiles_to_one_graph_per_layer_without_breaks():
    fused, _ = _pair(torch.float32)
    eager = copy.deepcopy(fused)
    torch._dynamo.reset()
    counters.clear()
    for layer in fused.base_model.model.esm.encoder.layer:
        layer.compile(backend="aot_eager", fullgraph=True)  # fullgraph: a break would raise
    ids, labels = _batch(2)
    loss_c, grads_c = _loss_and_grads(fused, ids, labels)
    loss_e, grads_e = _loss_and_grads(eager, ids, labels)
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]
    assert loss_c == pytest.approx(loss_e, rel=1e-5)
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-6, msg=name)
    torch._dynamo.reset()


def _fused_calls(monkeypatch, model, ids) -> int:
    calls = []
    real = fused_lora.lora_linear
    monkeypatch.setattr(fused_lora, "lora_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    model(input_ids=ids)
    return len(calls)


def test_falls_back_to_peft_where_the_merge_does_not_apply(monkeypatch):
    ids, _ = _batch()
    fused, _ = _pair(torch.float32)
    assert _fused_calls(monkeypatch, fused.train(), ids) == 6 * len(fused.base_model.model.esm.encoder.layer)
    with_dropout, _ = _pair(torch.float32, dropout=0.1)
    assert _fused_calls(monkeypatch, with_dropout.train(), ids) == 0  # a dropout mask differs per adapter input
    assert _fused_calls(monkeypatch, with_dropout.eval(), ids) > 0  # no dropout in evaluation: fused again
    with fused.disable_adapter():
        assert _fused_calls(monkeypatch, fused, ids) == 0
        base_out = fused(input_ids=ids).logits
    plain = models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=0).eval()  # the pair's base
    layer = fused.base_model.model.esm.encoder.layer[0].attention.self.query
    layer.base_layer = type("Float8Like", (torch.nn.Linear,), {})(layer.in_features, layer.out_features)
    assert not layer._fused_adapter((), {})  # a replaced frozen layer (FP8) keeps its own forward
    key = fused.base_model.model.esm.encoder.layer[0].attention.self.key
    assert key._fused_adapter((), {}) == "default"
    key.lora_B["default"].bias = torch.nn.Parameter(torch.zeros(key.out_features))  # LoraConfig(lora_bias=True)
    assert key._fused_adapter((), {}) is None
    with torch.no_grad():
        torch.testing.assert_close(base_out, plain(input_ids=ids).logits)


@pytest.mark.parametrize("marks_lost", [True, False])
def test_compiled_checkpointed_layers_take_peft_forward_where_torch_loses_the_marks(monkeypatch, marks_lost):
    """PyTorch < 2.13 defeats checkpointing around a compiled autograd.Function: there, and only where the
    layer is both compiled and checkpointed, the fused layer steps aside (counted while the layer is traced)."""
    torch._dynamo.reset()
    monkeypatch.setattr(fused_lora, "CHECKPOINT_MARKS_LOST", marks_lost)
    ids, _ = _batch()
    counts = {}
    for checkpointing in (True, False):
        fused, _ = _pair(torch.float32)
        if checkpointing:
            models.enable_activation_checkpointing(fused)
        models.compile_layers(fused, backend="aot_eager")
        counts[checkpointing] = _fused_calls(monkeypatch, fused.train(), ids)
    assert counts[False] > 0 and (counts[True] == 0) == marks_lost
    eager, _ = _pair(torch.float32)
    models.enable_activation_checkpointing(eager)  # checkpointed but not compiled: eager checkpointing works
    assert _fused_calls(monkeypatch, eager.train(), ids) > 0


def test_saved_adapter_is_peft_adapter(tmp_path):
    """Same files, names and config as PEFT's layer; loads into a model with PEFT's layer; merges the same."""
    fused, peft = _pair(torch.float32)
    fused.save_pretrained(tmp_path / "fused")
    peft.save_pretrained(tmp_path / "peft")
    assert sorted(p.name for p in (tmp_path / "fused").iterdir()) == sorted(p.name for p in (tmp_path / "peft").iterdir())
    assert json.loads((tmp_path / "fused" / "adapter_config.json").read_text()) == \
        json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    fresh = models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=0)  # the base the pair was made from
    loaded = lora.load_adapter(fresh, str(tmp_path / "fused")).eval()
    ids, _ = _batch(3)
    with torch.no_grad():
        want = peft.eval()(input_ids=ids).logits
        torch.testing.assert_close(loaded(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused.eval().merge_and_unload()(input_ids=ids).logits, want, rtol=1e-5, atol=1e-5)


def _kept_for_backward(checkpointing: bool) -> tuple[list[tuple], int, set]:
    """Shapes and bytes of the non-parameter tensors a compiled fused-LoRA model keeps for its backward pass."""
    model = lora.prepare_model(models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=0), "lora",
                               lora.esm2_lora_config(r=4))
    if checkpointing:
        models.enable_activation_checkpointing(model)
    models.compile_layers(model, backend="aot_eager_decomp_partition")  # the partitioner inductor uses
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept.append((tuple(t.shape), t.untyped_storage().nbytes()))
        return t
    ids, labels = _batch()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    return [shape for shape, _ in kept], sum(n for _, n in kept), {tuple(p.shape) for p in model.parameters()}


def test_checkpointed_compiled_layers_keep_no_merged_weights():
    """Under activation checkpointing a compiled model keeps little more than each layer's input for the backward
    pass: no merged weight W' (torch 2.11 kept W' and the layer's activations for a custom autograd.Function)."""
    shapes, kept, weights = _kept_for_backward(checkpointing=True)
    _, everything, _ = _kept_for_backward(checkpointing=False)
    assert not weights & {s for s in shapes if len(s) == 2}, "a weight-shaped tensor was kept across the checkpoint"
    assert kept < everything / 3, (kept, everything)
