"""The FlashAttention-4 backend of packed attention: its wiring, checked on the CPU against per-chain SDPA.

FlashAttention-4's kernels need a Hopper or Blackwell GPU. Here a stand-in for its module computes the same
two functions (forward with log-sum-exp, backward from the saved forward) in fp64 with plain tensor algebra,
so that the custom operators, their fake (shape-only) versions under ``torch.compile``, the autograd wiring and
the argument order are checked against an independent computation: ``torch``'s own SDPA, chain by chain.
"""
from __future__ import annotations

import sys
import types

import pytest
import torch

from bioft_tutorial import attention, models, train


def _reference_attention(q, k, v, cu, scale):
    """Softmax attention within each chain, written out: ``(out (T, H, D), lse (H, T))``."""
    out, lse = torch.zeros_like(q), q.new_zeros(q.shape[1], q.shape[0])
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if e > s:
            scores = torch.einsum("qhd,khd->hqk", q[s:e], k[s:e]) * scale
            lse[:, s:e] = torch.logsumexp(scores, -1)
            out[s:e] = torch.einsum("hqk,khd->qhd", torch.softmax(scores, -1), v[s:e])
    return out, lse


@pytest.fixture
def fa4_standin(monkeypatch):
    """A module at ``flash_attn.cute.interface`` with FlashAttention-4's two entry points, in plain torch."""
    calls = []

    def fwd(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None,
            softmax_scale=None, causal=False, return_lse=False, **kwargs):
        assert cu_seqlens_q is cu_seqlens_k and not causal and return_lse and not kwargs
        assert int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) <= max_seqlen_q == max_seqlen_k
        calls.append("fwd")
        out, lse = _reference_attention(q, k, v, cu_seqlens_q, softmax_scale)
        return out, lse.float(), None, None, None

    def bwd(q, k, v, out, dout, lse, softmax_scale, causal, softcap, cu_seqlens_q=None, cu_seqlens_k=None,
            max_seqlen_q=None, max_seqlen_k=None, **kwargs):
        assert lse.shape == (q.shape[1], q.shape[0]) and not causal and softcap == 0.0 and not kwargs
        calls.append("bwd")
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for s, e in zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist()):  # the textbook backward, per chain
            if e > s:
                scores = torch.einsum("qhd,khd->hqk", q[s:e], k[s:e]) * softmax_scale
                p = torch.exp(scores - lse[:, s:e, None].to(q.dtype))  # softmax from the saved log-sum-exp
                dv[s:e] = torch.einsum("hqk,qhd->khd", p, dout[s:e])
                dp = torch.einsum("qhd,khd->hqk", dout[s:e], v[s:e])
                ds = p * (dp - (dout[s:e] * out[s:e]).sum(-1).T[..., None])
                dq[s:e] = torch.einsum("hqk,khd->qhd", ds, k[s:e]) * softmax_scale
                dk[s:e] = torch.einsum("hqk,qhd->khd", ds, q[s:e]) * softmax_scale
        return dq, dk, dv

    interface = types.ModuleType(attention.FA4_MODULE)
    interface._flash_attn_fwd, interface._flash_attn_bwd = fwd, bwd
    monkeypatch.setitem(sys.modules, attention.FA4_MODULE, interface)
    return calls


def _inputs(seed=0, lengths=(7, 0, 12, 1, 0)):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v = (torch.randn(total, 3, 16, generator=g, dtype=torch.float64) for _ in range(3))
    return q, k, v, cu, torch.randn(total, 3, 16, generator=g, dtype=torch.float64)


def _grads(fn, q, k, v, cu, grad):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, cu)
    out.backward(grad)
    return out.detach(), [t.grad for t in leaves]


def test_fa4_op_matches_per_chain_sdpa(fa4_standin):
    q, k, v, cu, grad = _inputs()
    out, grads = _grads(lambda q, k, v, cu: attention._fa4(q, k, v, cu, 12, 0.25), q, k, v, cu, grad)
    ref, ref_grads = _grads(lambda q, k, v, cu: attention._chain_sdpa(q, k, v, cu, 0.25), q, k, v, cu, grad)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):  # the log-sum-exp is kept in fp32, as FlashAttention-4 keeps it
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert fa4_standin == ["fwd", "bwd"]


def test_fa4_op_compiles_as_one_call(fa4_standin):
    """Under torch.compile the operator is opaque: its fake versions give the shapes, no graph break."""
    q, k, v, cu, grad = _inputs(seed=1)
    compiled = torch.compile(lambda q, k, v, cu: attention._fa4(q, k, v, cu, 12, 0.25) * 2.0, backend="aot_eager",
                             fullgraph=True)
    out, grads = _grads(compiled, q, k, v, cu, grad)
    ref, ref_grads = _grads(lambda q, k, v, cu: 2.0 * attention._chain_sdpa(q, k, v, cu, 0.25), q, k, v, cu, grad)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):  # the log-sum-exp is kept in fp32, as FlashAttention-4 keeps it
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_fa4_kernel_only_for_half_precision_on_a_gpu():
    layer = types.SimpleNamespace(_bioft_backend="fa4")
    assert attention._use_kernel(layer, torch.zeros(2, 1, 8, dtype=torch.bfloat16)) == "sdpa"  # CPU tensor
    assert attention._use_kernel(types.SimpleNamespace(), torch.zeros(2, 1, 8)) == "sdpa"


def test_fa4_unavailable_says_why():
    model = models.random_esm2(models.tiny_esm2_config(), task="token", num_labels=3)
    with pytest.raises(RuntimeError, match="backend='fa4' is unavailable: .*NVIDIA GPUs"):
        attention.enable_packed_attention(model, backend="fa4")
    with pytest.raises(ValueError, match="unknown backend 'fa3'.*'fa4'"):
        attention.enable_packed_attention(model, backend="fa3")


def test_train_config_attention_knob():
    assert train.TrainConfig(batching="packed", attention="fa4").attention == "fa4"
    with pytest.raises(ValueError, match="attention='fa4' chooses the kernel of packed rows; set batching='packed'"):
        train.TrainConfig(attention="fa4")
    with pytest.raises(ValueError, match="TrainConfig.attention='flash'; use one of"):
        train.TrainConfig(batching="packed", attention="flash")
