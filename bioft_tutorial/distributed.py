"""Training on several GPUs (or CPU processes) with ``torchrun``: DDP and FSDP2.

``torchrun --nproc_per_node=N script.py`` starts N copies of a script; each reads its rank from the
environment. Two ways to split the work:

* **DDP** (``DistributedDataParallel``): every process holds the whole model and its own share of the
  batch; gradients are averaged across processes after the backward pass. Use it when the model fits one
  GPU (ESM-2 up to 3B with LoRA).
* **FSDP2** (``torch.distributed.fsdp.fully_shard``, PyTorch >= 2.6): every process holds ``1/N`` of each
  layer's weights and gathers a layer only while it runs. Use it when the weights do not fit one GPU
  (ESM-2 15B, or full fine-tuning of 3B).

With either, each process takes its share of the step's batches and the loss is a token **sum** divided by
the labelled tokens of the whole step on all processes, times ``world_size`` (the wrappers *average*
gradients): N processes then compute exactly the gradient of one process on the whole step
(:func:`bioft_tutorial.train.train_step`).

Copy this module with only ``torch`` beside it.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

#: Environment for NCCL on shared multi-GPU hosts: NVLink multicast (NVLS / symmetric memory) stays off.
SAFE_NCCL_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world_size`` processes, its ``device`` and the backend."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # "nccl", "gloo" or None (single process)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None, timeout_s: int = 600) -> DistInfo:
    """Join the process group that ``torchrun`` set up (or return a single-process ``DistInfo``).

    Sets :data:`SAFE_NCCL_ENV` defaults before NCCL starts, picks NCCL on CUDA and gloo on CPU, and binds
    this process to GPU ``LOCAL_RANK``.

    Args:
        device: ``"cuda"``, ``"cuda:N"`` (one process only; under torchrun each process takes GPU
            ``LOCAL_RANK``) or ``"cpu"``; default CUDA if available.
        timeout_s: how long a collective may wait for the others before failing, seconds.

    Raises:
        ValueError: another device type.
    """
    for key, value in SAFE_NCCL_ENV.items():
        os.environ.setdefault(key, value)
    wanted = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if wanted.type not in ("cuda", "cpu"):
        raise ValueError(f"device {device!r}: training under torchrun supports 'cuda' (NCCL) or 'cpu' (gloo)")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = wanted.type == "cuda"
    dev = torch.device("cpu")
    if use_cuda:
        dev = torch.device("cuda", wanted.index if world_size == 1 and wanted.index is not None else local_rank)
        torch.cuda.set_device(dev)
    if world_size == 1 and not dist.is_initialized():
        return DistInfo(device=dev)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout_s),
                                device_id=dev if use_cuda else None)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)


def cleanup_distributed() -> None:
    """Leave the process group (call once at the end of a ``torchrun`` script)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, parallel: str = "ddp", *,
               param_dtype: torch.dtype | None = None, layer_class: str = "EsmLayer") -> nn.Module:
    """Wrap ``model`` (already on ``info.device``) for data-parallel training.

    Args:
        model: the model, trainable parameters marked ``requires_grad``.
        info: from :func:`init_distributed`.
        parallel: ``"none"``, ``"ddp"`` or ``"fsdp2"`` (as ``TrainConfig.parallel``).
        param_dtype: FSDP2 only: the dtype weights are gathered and computed in (e.g. ``torch.bfloat16``;
            gradients are still reduced in fp32). ``None`` keeps each weight's own dtype.
        layer_class: FSDP2 only: class name of the repeated block sharded as one unit.

    Returns:
        The wrapped model (DDP returns a wrapper; FSDP2 shards ``model`` in place and returns it).

    Raises:
        ValueError: an unknown ``parallel``, or FSDP2 on a model without ``layer_class`` blocks.
    """
    if parallel == "none" or not info.is_distributed:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    if parallel == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = (MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype
                  else MixedPrecisionPolicy())
        root = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT: shard the HF model
        blocks = [m for m in root.modules() if type(m).__name__ == layer_class]
        if not blocks:
            raise ValueError(f"no {layer_class!r} modules to shard in {type(root).__name__}; pass layer_class")
        for block in blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(root, mp_policy=policy)
        return model
    raise ValueError(f"unknown parallel={parallel!r}; use 'none', 'ddp' or 'fsdp2'")


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on micro-steps before the last one of an accumulation (DDP and FSDP2)."""
    if enabled:
        yield
    elif hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def interconnect() -> dict:
    """How the GPUs of this host are linked, as detected.

    Returns:
        ``{"gpu_count", "p2p" (GPU 0 can read GPU 1's memory), "link" (the GPU0-GPU1 entry of
        ``nvidia-smi topo -m``: ``NV<n>`` = NVLink with n links, ``PIX``/``PXB``/``PHB``/``NODE``/``SYS`` =
        PCIe paths), "topology" (the matrix text)}``; fields are ``None`` where unknown.
    """
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    info = {"gpu_count": count, "p2p": None, "link": None, "topology": None}
    if count >= 2:
        info["p2p"] = bool(torch.cuda.can_device_access_peer(0, 1))
    try:
        text = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return info
    info["topology"] = text.strip() or None
    info["link"] = parse_topology(text)
    return info


def parse_topology(text: str) -> str | None:
    """The GPU0-to-GPU1 link in the text of ``nvidia-smi topo -m`` (e.g. ``"NV18"``), or ``None``."""
    for line in text.splitlines():
        cells = line.split()
        if cells and cells[0] == "GPU0" and len(cells) > 2 and cells[1] in ("X", "x"):
            return cells[2]
    return None
