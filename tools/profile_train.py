"""Profile a few LoRA training steps of the train bench's workload on the GPU (a diagnostic, not a result).

    python tools/profile_train.py --model 650M --tokens 16384 [--method head]

Prints the kernels and ATen calls that take the most GPU time (``torch.profiler``), grouped by input
shape, so that the cost of LoRA's small products can be read off. Writes the tables to ``--out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bioft_tutorial.bench.train_bench import Case, _chains_for
from bioft_tutorial.bench.train_workload import (PATHS, build_model, make_batches, prepare_model, sync,
                                                 train_step)
from bioft_tutorial.distributed import DistInfo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="650M")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--out", default="profile.txt")
    args = ap.parse_args()
    device = torch.device("cuda")
    recipe = PATHS["package"]
    case = Case(args.model, "package", method=args.method, tokens=args.tokens, steps=3, warmup=6)
    batches = make_batches(_chains_for(case, False, 0), "packed", case.tokens, case.steps + case.warmup, 0)
    model = build_model(args.model, args.method, recipe, device)
    prepare_model(model, recipe, False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    info = DistInfo(device=device)

    def step(batch: dict) -> None:
        train_step(model, optimizer, [batch], int((batch["labels"] != -100).sum()), True, info)

    for b in batches[:case.warmup]:
        step(b)
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        for b in batches[case.warmup:]:
            step(b)
        sync(device)
    averages = prof.key_averages(group_by_input_shape=True)
    text = [f"# {args}", averages.table(sort_by="self_device_time_total", row_limit=45, max_name_column_width=70,
                                        max_shapes_column_width=80)]
    kernels = prof.key_averages()
    text.append(kernels.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=90))
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text)[:12000])


if __name__ == "__main__":
    main()
