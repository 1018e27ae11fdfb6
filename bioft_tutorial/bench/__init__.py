"""GPU benchmarks. ``python -m bioft_tutorial.bench <command> --help``.

Each command measures one part of the book on whatever device is present, always runs its baseline in
the same run, prints one JSON object per case and writes them to ``book/results/gpu/<command>-<date>.json``
(see :mod:`bioft_tutorial.bench.results`). Throughput and memory depend only on shapes, so the real
model shapes are measured with random weights. ``--smoke`` runs a tiny CPU version (used by the tests).

Commands are registered in :data:`COMMANDS` as ``name -> "module:function"``; each function takes
``argv`` (a list of strings) and returns a list of result dicts.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, str] = {
    "train": "bioft_tutorial.bench.train_bench:main",          # issue 5: fast LoRA training (packing, bf16, compile)
    "train-dist": "bioft_tutorial.bench.train_dist_bench:main",  # issue 5/9: DDP and FSDP2 under torchrun
    "zero-shot": "bioft_tutorial.bench.zero_shot_bench:main",  # notebook 01 scoring speed
    "loop-vs-trainer": "bioft_tutorial.bench.loop_bench:main",   # issue 4: notebook 03 loop vs HF Trainer
    "evo2": "bioft_tutorial.bench.evo2_bench:main",              # issue 6: notebook 04 Evo 2 scoring speed
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``python -m bioft_tutorial.bench <command> [args]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        known = ", ".join(sorted(COMMANDS)) or "(none registered)"
        msg = f"usage: python -m bioft_tutorial.bench <command> [options]; commands: {known}"
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"unknown bench command {argv[0]!r}. {msg}")
        sys.stdout.write(msg + "\n")
        return 0
    module, func = COMMANDS[argv[0]].split(":")
    getattr(importlib.import_module(module), func)(argv[1:])
    return 0
