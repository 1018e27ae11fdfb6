"""Crash-safe training checkpoints: tensors in safetensors, everything else in JSON, no pickle.

A checkpoint is a folder ``<root>/step-000200/`` holding

* ``tensors.safetensors``: the trainable weights (``model/<name>``), the optimizer state
  (``optimizer/<param index>/<key>``) and the torch RNG states (``rng/torch``, ``rng/cuda<i>``);
* ``state.json``: step, data position, schedule, optimizer hyper-parameters, Python/NumPy RNG states,
  best metric so far, and whatever else the caller adds.

Each file is written to a temporary name, flushed and ``fsync``-ed, the whole folder is written under a
temporary name and renamed into place, and only then ``<root>/latest.json`` is replaced (again write,
fsync, rename). A crash at any moment leaves ``latest.json`` pointing at the last *complete* checkpoint.
Loading uses ``safetensors`` and ``json`` only, so a checkpoint can never execute code.

This module needs only torch, numpy and safetensors: copy it into your own project as it is.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

LATEST = "latest.json"
#: Room left on the disk beyond a checkpoint's own bytes before it is written (JSON, filesystem overhead).
SPARE_BYTES = 64 * 2**20


class DiskFullError(OSError):
    """Too little free disk for a checkpoint; the previous checkpoint is untouched and still loads."""

    def __init__(self, folder: Path, needed: int, free: int):
        super().__init__(errno.ENOSPC, (
            f"not enough free disk to write {folder}: it needs {_gib(needed)} and {_gib(free)} is free. The previous "
            f"checkpoint is untouched and resume=True continues from it. Free space on that disk, write to another "
            f"folder (output_dir), keep fewer checkpoints (keep_checkpoints=1), or save less often (save_every)"))
        self.folder, self.needed, self.free = folder, needed, free


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n:,} bytes)"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    _write_json(tmp, obj)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(folder: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write one checkpoint folder atomically and return its path.

    Free space is checked first: with too little, nothing is written and :class:`DiskFullError` says how much
    is needed. A disk that fills up during the write (another program) gives the same error; the half-written
    temporary folder is removed and an existing checkpoint of the same name is left as it was.

    Args:
        folder: the final folder, e.g. ``out/checkpoints/step-000200`` (replaced if it exists).
        tensors: name -> tensor (any device or dtype; saved as contiguous CPU copies).
        state: JSON-serialisable values.
        write_extra: called with the temporary folder to add files of its own (e.g. a PEFT adapter folder)
            before the folder is renamed into place.

    Raises:
        DiskFullError: not enough free disk.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    needed = sum(t.numel() * t.element_size() for t in tensors.values()) + len(json.dumps(state)) + SPARE_BYTES
    free = shutil.disk_usage(folder.parent).free
    if free < needed:
        raise DiskFullError(folder, needed, free)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_folder(tmp, tensors, state, write_extra)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err):
            raise DiskFullError(folder, needed, shutil.disk_usage(folder.parent).free) from err
        raise
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    _fsync_dir(folder.parent)
    return folder


def _write_folder(tmp: Path, tensors: dict[str, torch.Tensor], state: dict, write_extra) -> None:
    tmp.mkdir()
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    save_file(cpu, str(tmp / "tensors.safetensors"))
    with open(tmp / "tensors.safetensors", "rb+") as handle:
        os.fsync(handle.fileno())
    _write_json(tmp / "state.json", state)
    if write_extra is not None:
        write_extra(tmp)
    _fsync_dir(tmp)


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint folder written by :func:`save_checkpoint`: ``(tensors, state)``.

    Raises:
        FileNotFoundError: the folder or one of its two files is missing (an incomplete checkpoint).
        ValueError: a file is not valid safetensors or JSON (damaged, or something else under that name, such
            as a pickle: it is refused, never unpickled).
    """
    folder = Path(folder)
    for name in ("tensors.safetensors", "state.json"):
        if not (folder / name).exists():
            raise FileNotFoundError(f"{folder / name} is missing: {folder} is not a complete checkpoint")
    try:
        tensors = load_file(str(folder / "tensors.safetensors"), device=str(device))
    except SafetensorError as err:
        raise ValueError(f"{folder / 'tensors.safetensors'} is not a valid safetensors file ({err}); it was not "
                         "loaded (checkpoints are never unpickled). Resume from another checkpoint, or delete this "
                         "one if it is damaged") from err
    state = _read_json(folder / "state.json")
    return tensors, state


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it was damaged or edited by hand: delete it, or restore "
                         "it from the checkpoint folders next to it") from err


def mark_latest(root: str | Path, folder: str | Path) -> None:
    """Point ``<root>/latest.json`` at ``folder`` (atomically)."""
    atomic_write_json(Path(root) / LATEST, {"checkpoint": Path(folder).name})


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder ``<root>/latest.json`` names, or ``None`` if there is no complete checkpoint yet."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    folder = Path(root) / _read_json(pointer)["checkpoint"]
    return folder if (folder / "state.json").exists() else None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest ``step-*`` folders and any leftover temporary folders and files."""
    root = Path(root)
    for tmp in root.glob(".step-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    for tmp in root.glob(f".{LATEST}.*.tmp"):  # a pointer update cut short by a crash
        tmp.unlink(missing_ok=True)
    for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# --- optimizer state <-> flat tensors + JSON -------------------------------------------------------------

def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``optimizer/<i>/<key>``) and JSON (the rest)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in sd["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{key}"] = _full(value)
            else:
                scalars[f"{index}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of :func:`optimizer_to_flat`: load the state into ``optimizer``."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer/"):
            _, index, key = name.split("/", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split("/", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --- random number generators ------------------------------------------------------------------------------

def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG a training step may draw from: torch CPU and CUDA (tensors), Python and NumPy (JSON)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = s
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return tensors, {"python": [version, list(internal), gauss],
                     "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Restore the RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(tensors["rng/torch"].cpu())
    cuda = [tensors[f"rng/cuda{i}"].cpu() for i in range(len(tensors)) if f"rng/cuda{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# --- a training run's state: trainable weights + optimizer + scheduler + RNG + loop position ---------------

def _full(t: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2 DTensor) tensor gathered whole; a collective, so every rank must call it."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{"model/<name>": tensor}`` for every parameter that requires a gradient (LoRA adapters and head,
    or all weights in full fine-tuning). Sharded (FSDP2) parameters are gathered: call it on every rank."""
    return {f"model/{n}": _full(p).detach() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``model/<name>`` tensors into the model's trainable parameters (all of them, nothing else).

    Raises:
        ValueError: the checkpoint's tensors are not exactly the model's trainable parameters.
    """
    own = dict(model.named_parameters())
    wanted = {n for n, p in own.items() if p.requires_grad}
    saved = {k[len("model/"):] for k in tensors if k.startswith("model/")}
    if saved != wanted:
        raise ValueError(f"the checkpoint holds {len(saved)} trainable tensors but the model trains {len(wanted)} "
                         f"(first difference: {sorted(saved ^ wanted)[:1]}); resume with the same model and method")
    with torch.no_grad():
        for name in saved:
            own[name].copy_(tensors[f"model/{name}"])


def save_training_state(root: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                        loop_state: dict, config: dict, keep: int = 2, write: bool = True) -> Path | None:
    """Write ``<root>/step-<step>/`` with everything needed to continue exactly, point ``latest.json`` at it
    and prune old checkpoints. ``loop_state`` must hold ``step`` and be JSON-serialisable. Under
    ``torchrun`` every rank calls it (sharded tensors are gathered) and only the one with ``write=True``
    writes."""
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    rng_tensors, rng_meta = rng_state()
    model_tensors = trainable_tensors(model)
    if not write:
        return None
    folder = save_checkpoint(Path(root) / f"step-{loop_state['step']:06d}",
                             {**model_tensors, **opt_tensors, **rng_tensors},
                             {"state": loop_state, "scheduler": scheduler.state_dict(), "optimizer": opt_meta,
                              "rng": rng_meta, "config": config})
    mark_latest(root, folder)
    prune_checkpoints(root, keep)
    return folder


def load_training_state(root: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scheduler) -> dict | None:
    """Restore the latest checkpoint under ``root`` into the objects; returns its ``loop_state`` (or ``None``
    when there is no checkpoint yet). The RNG states are restored last."""
    folder = latest_checkpoint(root)
    if folder is None:
        return None
    tensors, meta = load_checkpoint(folder)
    load_trainable(model, tensors)
    optimizer_from_flat(optimizer, tensors, meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    set_rng_state(tensors, meta["rng"])
    return meta["state"]
