"""What this machine has: hardware, library versions, and what each chapter will run on it.

Used by ``notebooks/00_environment.ipynb``; handy at the top of any training script's log.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import platform

import pandas as pd
import torch

LIBRARIES = ("torch", "transformers", "peft", "datasets", "accelerate", "safetensors", "scikit-learn",
             "scipy", "pandas", "numpy", "pyfaidx", "evo2", "jupyter-book", "papermill", "nbval")


def _total_ram_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def gpu_table() -> pd.DataFrame:
    """One row per CUDA device: name, memory (GiB), compute capability, bf16 and FP8 support.

    FP8 tensor cores need compute capability 8.9 (Ada) or 9.0+ (Hopper); Evo 2's 1B, 20B and 40B
    checkpoints use FP8 layers, the 7B runs in bf16.
    """
    rows = []
    for i in range(torch.cuda.device_count()):
        prop = torch.cuda.get_device_properties(i)
        cc = (prop.major, prop.minor)
        rows.append({
            "device": f"cuda:{i}", "name": prop.name, "memory_gib": round(prop.total_memory / 2**30, 1),
            "compute_capability": f"{cc[0]}.{cc[1]}", "bf16": cc >= (8, 0), "fp8": cc >= (8, 9),
            "multiprocessors": prop.multi_processor_count,
        })
    return pd.DataFrame(rows, columns=["device", "name", "memory_gib", "compute_capability", "bf16", "fp8",
                                       "multiprocessors"])


def host_table() -> pd.DataFrame:
    """CPU cores, RAM and platform of this machine, as a two-column table."""
    ram = _total_ram_gib()
    rows = {
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "cpu_cores": os.cpu_count(),
        "ram_gib": None if ram is None else round(ram, 1),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": torch.cuda.device_count(),
        "torch_cuda_build": torch.version.cuda or "none (CPU build)",
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE", "0"),
    }
    return pd.DataFrame({"item": list(rows), "value": [str(v) for v in rows.values()]})


def library_versions(names: tuple[str, ...] = LIBRARIES) -> pd.DataFrame:
    """Installed versions of the libraries the book uses (``not installed`` where missing)."""
    versions = []
    for name in names:
        try:
            versions.append(md.version(name))
        except md.PackageNotFoundError:
            versions.append("not installed")
    return pd.DataFrame({"library": list(names), "version": versions})


def run_plan(profile) -> pd.DataFrame:
    """What each chapter runs in ``profile`` (a :class:`bioft_tutorial.profile.Profile`)."""
    smoke = profile.is_smoke
    device = profile.device if torch.cuda.is_available() or profile.device == "cpu" else "cpu (no GPU found!)"
    chapters = [
        ("01 ESM-2 loading", "tiny random ESM-2" if smoke else profile.esm_model, "embeddings, masked LM, zero-shot"),
        ("02 LoRA setup", "tiny random ESM-2" if smoke else profile.esm_model, "LoRA config, adapter round trip"),
        ("03 GPU training", "tiny random ESM-2" if smoke else profile.esm_model,
         f"{profile.max_steps} steps, {profile.token_budget:,}-token batches"),
        ("04 Evo 2 scoring", "k-mer Markov model" if smoke else f"Evo 2 ({profile.evo2_model})",
         f"{profile.dna_window:,}-bp windows"),
        ("05 Performance", "stored GPU results", "renders JSON, runs nothing on the GPU"),
    ]
    return pd.DataFrame([(c, m, device if not c.startswith("05") else "-", w) for c, m, w in chapters],
                        columns=["chapter", "model", "device", "work"])
