"""GPU benchmarks of the book's own code: ``python -m benchmarks <command> [--smoke] [--help]``.

Each command is a configuration of the package's public API (``train.train``, ``score_substitutions``,
``score_variants``, the notebooks themselves), never a second implementation of it. It measures on the GPU
that is present, runs its baseline in the same run, prints one line per case and writes
``book/results/gpu/<command>-<date>.json`` (schema: ``book/results/gpu/README.md``), which the book's pages
read through :mod:`bioft_tutorial.results`. Models have the real shapes with random weights: speed and memory
depend only on shapes. ``--smoke`` runs the same code with a tiny model on the CPU in seconds (the tests
do), writing under ``_build/benchmarks-smoke/`` unless ``--out`` says otherwise.

Commands are registered in :data:`COMMANDS` as ``name -> "module:function"``; each function takes ``argv``
(a list of strings) and returns its records.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, str] = {
    "train": "benchmarks.train:main",            # train.train: the ablation, methods, sizes, Trainer baseline
    "train-dist": "benchmarks.train_dist:main",  # train.train under torchrun (DDP, FSDP2) against one GPU
    "zero-shot": "benchmarks.zero_shot:main",    # zero_shot.score_substitutions (chapter 1)
    "evo2": "benchmarks.evo2:main",              # variants.score_variants with Evo 2 7B (chapter 4)
    "evo2-finetune": "benchmarks.evo2_finetune:main",  # embeddings and LoRA steps with Evo 2 7B (chapter 6)
    "notebooks": "benchmarks.notebooks:main",    # every notebook in the full profile, with papermill
    "fp8-numerics": "benchmarks.fp8_numerics:main",  # train.train's loss curve with FP8 frozen linears vs bf16
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``python -m benchmarks <command> [options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: python -m benchmarks <command> [--smoke] [--help]; commands: {', '.join(COMMANDS)}"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if argv[0] not in COMMANDS:
        raise SystemExit(f"unknown benchmark command {argv[0]!r}. {usage}")
    module, function = COMMANDS[argv[0]].split(":")
    getattr(importlib.import_module(module), function)(argv[1:])
    return 0
