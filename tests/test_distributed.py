"""torchrun helpers: the token loss over a global batch, row splitting, topology, process-group set-up.

That 2 CPU processes (gloo) train exactly like 1 process on the same global batch is checked by the train-dist
benchmark's smoke run (tests/test_benchmarks.py) and by tests/test_train.py.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from bioft_tutorial import distributed
from bioft_tutorial.distributed import DistInfo

TOPOLOGY = """\
\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID
GPU0\t X \tNV18\t0-51\t0\t\tN/A
GPU1\tNV18\t X \t0-51\t0\t\tN/A

Legend:
  X    = Self
"""





def test_summed_loss_times_world_size_averages_to_the_global_mean():
    """train_step's scaling: each process's summed loss x world_size / (targets of all processes), averaged over
    processes (as DDP does with gradients), is the mean over every labelled token of both."""
    from bioft_tutorial.loss import loss_sum

    torch.manual_seed(0)
    logits, labels = torch.randn(2, 7, 3), torch.randint(0, 3, (2, 7))
    labels[0, :2] = -100
    n = int((labels != -100).sum())
    ranks = [loss_sum(logits[r], labels[r]) * 2 / n for r in range(2)]
    expected = F.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close((ranks[0] + ranks[1]) / 2, expected)


def test_parse_topology():
    assert distributed.parse_topology(TOPOLOGY) == "NV18"
    assert distributed.parse_topology("GPU0\t X \tPHB\nGPU1\tPHB\t X \n") == "PHB"
    assert distributed.parse_topology("no GPUs") is None


def test_init_single_process_sets_safe_nccl_env(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCH_SYMM_MEM_DISABLE_MULTICAST"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")
    info = distributed.init_distributed("cpu")
    assert info == DistInfo() and info.is_main and not info.is_distributed
    assert os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1"
    monkeypatch.delenv("TORCH_SYMM_MEM_DISABLE_MULTICAST")
    with pytest.raises(ValueError, match="'cuda'"):
        distributed.init_distributed("mps")


def test_wrap_model_errors_and_single_process_passthrough():
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(model, DistInfo(), "ddp") is model
    with pytest.raises(ValueError, match="parallel"):
        distributed.wrap_model(model, DistInfo(world_size=2), "zero3")
    with pytest.raises(ValueError, match="EsmLayer"):
        distributed.wrap_model(model, DistInfo(world_size=2), "fsdp2")


def test_gradient_sync_uses_no_sync():
    calls = []

    class FakeDDP(torch.nn.Module):
        def no_sync(self):
            calls.append("no_sync")
            return torch.no_grad()  # any context manager

    with distributed.gradient_sync(FakeDDP(), enabled=False):
        pass
    with distributed.gradient_sync(FakeDDP(), enabled=True):
        pass
    assert calls == ["no_sync"]
