"""``python -m benchmarks evo2-finetune``: chapter 6 with Evo 2 7B on one GPU: embeddings, and LoRA steps.

The 7B architecture with **random weights** (``Evo2LM.load("evo2_7b:random")``: speed and memory depend only
on shapes), 8,192-bp windows around real BRCA1 SNVs (Findlay et al. 2018). Every case runs the code chapter 6
runs; the baselines run in the same process, on the same model and windows.

Embeddings (``windows_per_s``: pooled vectors of the asked blocks, on the CPU, per second):

* ``evo2 forward b1 (baseline)``: the ``evo2`` package's own ``Evo2.forward(ids, return_embeddings=True,
  layer_names=["blocks.<k>", ...])``, one window at a time through the whole model, then the same pooling;
* ``embed_windows b<B>``: :func:`bioft_tutorial.variants.embeddings.embed_windows`: hooks, batches of ``B``,
  the forward stopped after the deepest block asked for;

each for the chapter's sweep (every ``--sweep-step``-th block and the last) and for one middle block
(``--layer``); and ``embed_variants``: the variants of the first ``--positions`` BRCA1 positions end to end,
each distinct reference window computed once (``variants_per_s``).

LoRA (``tokens_per_s``: real tokens of the timed steps over their seconds; ``peak_mem_gib``):

* ``frozen forward+backward (floor)``: the chapter's classifier with no adapters and every weight frozen,
  the gradient taken down to the input of the first block, no optimizer: what any training step of this model
  must at least cost;
* ``LoRA r=<r> (train.train)``: :func:`bioft_tutorial.train.train` on the classifier with LoRA in every
  ``nn.Linear`` of the blocks (chapter 6's set-up), with activation checkpointing, and once without it.

A step takes one variant: its reference and alternate window, 2 x 8,192 tokens. ``--smoke`` runs the tiny
random transformer on the CPU with 128-bp windows (the ``evo2`` package needs CUDA: a plain hooked forward at
batch 1 stands in for its baseline).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from benchmarks.harness import ResultsFile, pick_device, run_case, smoke_threads, steady_steps, sync, timed
from bioft_tutorial import lora, train
from bioft_tutorial.data import asset_path, collate_padded
from bioft_tutorial.variants import Evo2LM, Genome, TinyDNALM, read_findlay_xlsx
from bioft_tutorial.variants import embeddings as emb
from bioft_tutorial.variants import finetune

COMMAND = "evo2-finetune"
CASES = ("embeddings", "variants", "floor", "lora", "lora-no-checkpointing")


#: The command's options: flag, type, default, help.
OPTIONS = (
    ("--model", str, "evo2_7b:random", "Evo2LM.load model_name (random weights for timing)"),
    ("--window", int, 8192, "window length (bases)"),
    ("--batch-size", int, 8, "windows per forward pass of embed_windows"),
    ("--windows", int, 16, "windows timed per embedding case"),
    ("--baseline-windows", int, 6, "windows timed per baseline case"),
    ("--sweep-step", int, 4, "the sweep's blocks: every n-th, and the last"),
    ("--layer", int, 20, "the single middle block of the second embedding case"),
    ("--positions", int, 4, "BRCA1 positions of the embed_variants case"),
    ("--lora-layer", int, -1, "block feeding the classifier (-1: the last)"),
    ("--rank", int, 8, "LoRA rank"),
    ("--steps", int, 6, "optimizer steps per LoRA case, warm-up included"),
    ("--warmup", int, 2, "untimed first steps of each LoRA and floor case"),
    ("--cases", str, ",".join(CASES), f"comma-separated, of {', '.join(CASES)}"),
    ("--out", str, None, "results folder (default book/results/gpu; smoke: _build/benchmarks-smoke)"),
    ("--tag", str, None, "extra word in the results file name"),
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks {COMMAND}", description=__doc__.split("\n")[0])
    for flag, kind, default, text in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument("--smoke", action="store_true", help="tiny random transformer on the CPU, 128-bp windows")
    return parser.parse_args(argv)


def _setup(args) -> tuple:
    """The model, BRCA1 windows (reference windows of distinct positions, and whole variants) and common fields."""
    start = time.perf_counter()
    if args.smoke:
        lm, label = TinyDNALM(seed=0, n_layers=4, max_length=args.window, batch_size=args.batch_size), \
            "tiny random transformer (smoke)"
    else:
        lm = Evo2LM.load(args.model, batch_size=args.batch_size)
        label = lm.name
    genome = Genome(asset_path("brca1", "GRCh37_chr17_BRCA1_region.fa"))
    table = read_findlay_xlsx(asset_path("brca1", "41586_2018_461_MOESM3_ESM.xlsx"))
    firsts = table.drop_duplicates("pos").iloc[:max(args.windows, args.baseline_windows)]
    refs = list(emb.variant_windows(genome, firsts, args.window)["ref_seq"])
    subset = table[table["pos"].isin(list(dict.fromkeys(table["pos"]))[:args.positions])]
    n_blocks = len(emb.blocks_of(lm.model))
    common = {"model": label, "window": args.window, "smoke": args.smoke, "blocks": n_blocks,
              "build_s": round(time.perf_counter() - start, 1), "parameters": sum(p.numel() for p in lm.model.parameters())}
    return lm, genome, table, subset, refs, common


def _baseline_forward(lm, device):
    """``(ids, layer_names) -> {name: (1, L, H)}``: the evo2 package's Evo2.forward on our model (smoke: a
    hooked forward of the whole model, which is what Evo2.forward does)."""
    if device.type == "cuda":
        from evo2 import Evo2
        from vortex.model.tokenizer import CharLevelTokenizer

        evo2 = Evo2.__new__(Evo2)  # the package's class around our already built model (no checkpoint)
        evo2.model, evo2.tokenizer = lm.model, CharLevelTokenizer(512)
        return "evo2.Evo2.forward(return_embeddings=True)", lambda ids, names: evo2.forward(
            ids, return_embeddings=True, layer_names=names)[1]

    def forward(ids, names):
        kept, blocks = {}, lm.model.blocks
        hooks = [blocks[int(n.split(".")[1])].register_forward_hook(
            lambda m, i, o, n=n: kept.__setitem__(n, o[0] if isinstance(o, tuple) else o)) for n in names]
        try:
            with torch.no_grad():
                lm.model(ids)
        finally:
            for hook in hooks:
                hook.remove()
        return kept
    return "hooked whole-model forward at batch 1 (smoke stand-in for Evo2.forward)", forward


def _baseline(lm, refs: list[str], layers: list[int], n: int, device) -> dict:
    """Batch 1 through the evo2 package's forward with embeddings, then the chapter's two poolings, on the CPU."""
    path, forward = _baseline_forward(lm, device)
    names, index = [f"blocks.{k}" for k in layers], len(refs[0]) // 2

    def run(seqs):
        for seq in seqs:
            ids = lm.encode([seq])[0]
            states = forward(ids, names)
            for name in names:
                hidden = states[name].float()
                torch.stack([hidden[0, index], hidden[0].mean(0)]).cpu()
    run(refs[:1])  # warm-up
    seconds = timed(lambda: run(refs[:n]), device)
    return {"path": path, "layers": layers, "batch": 1, "n_windows": n, "seconds": round(seconds, 3),
            "windows_per_s": n / seconds}


def _ours(lm, refs: list[str], layers: list[int], n: int, batch: int, device) -> dict:
    index = [len(refs[0]) // 2] * n
    emb.embed_windows(lm, refs[:batch], index[:batch], layers, batch_size=batch, progress=False)  # warm-up
    seconds = timed(lambda: emb.embed_windows(lm, refs[:n], index, layers, batch_size=batch, progress=False), device)
    return {"path": "variants.embeddings.embed_windows", "layers": layers, "batch": batch, "n_windows": n,
            "seconds": round(seconds, 3), "windows_per_s": n / seconds}


def _variants(lm, genome, subset, layers: list[int], args, device) -> dict:
    start = time.perf_counter()
    emb.embed_variants(lm, genome, subset, layers, window=args.window, batch_size=args.batch_size, progress=False)
    sync(device)
    seconds, refs = time.perf_counter() - start, subset["pos"].nunique()
    return {"path": "variants.embeddings.embed_variants", "layers": layers, "batch": args.batch_size,
            "n_variants": len(subset), "n_windows": refs + len(subset), "seconds": round(seconds, 3),
            "variants_per_s": len(subset) / seconds, "windows_per_s": (refs + len(subset)) / seconds}


def _examples(lm, genome, table, args) -> list[dict]:
    variants = table.iloc[:args.steps + 1]
    windows = emb.variant_windows(genome, variants, args.window)
    return finetune.variant_examples(lm, windows, (variants["func.class"] == "LOF").astype(int).tolist())


def _classifier(lm, args):
    return finetune.classifier_for(lm, args.lora_layer, variant_index=args.window // 2)


def _floor(lm, examples: list[dict], args, device) -> dict:
    """Forward and backward through the frozen blocks down to the first block's input: no adapters, no optimizer."""
    classifier = _classifier(lm, args)
    classifier.gradient_checkpointing_enable()
    first = emb.blocks_of(lm.model)[0]
    hook = first.register_forward_pre_hook(lambda m, a, k: ((a[0].detach().requires_grad_(), *a[1:]), k),
                                           with_kwargs=True)
    bf16 = device.type == "cuda"

    def step(example):
        batch = {k: v.to(device) for k, v in collate_padded([example], lm.pad_id).items()}
        labels = batch.pop("labels")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(classifier(**batch).logits.float(), labels)
        loss.backward()
        classifier.zero_grad(set_to_none=True)
    try:
        for example in examples[:args.warmup]:
            step(example)
        timed_steps = examples[args.warmup:args.steps]
        seconds = timed(lambda: [step(e) for e in timed_steps], device)
    finally:
        hook.remove()
        classifier.gradient_checkpointing_disable()
    tokens = sum(len(e["input_ids"]) for e in timed_steps)
    return {"path": "classifier forward + backward, frozen blocks", "checkpointing": True, "steps": len(timed_steps),
            "tokens_per_step": tokens / len(timed_steps), "tokens_per_s": tokens / seconds,
            "step_s": seconds / len(timed_steps), "lora_layer": classifier.config.layer}


def _lora(lm, examples: list[dict], args, checkpointing: bool) -> dict:
    """train.train on the chapter's LoRA classifier; the adapters are taken out again afterwards."""
    classifier = _classifier(lm, args)
    model = lora.prepare_model(classifier, "lora", finetune.dna_lora_config(classifier, r=args.rank))
    tokens, trainable = len(examples[0]["input_ids"]), lora.parameter_counts(model)["trainable"]
    try:
        with tempfile.TemporaryDirectory() as out:
            config = train.TrainConfig(output_dir=out, max_steps=args.steps, warmup_steps=1, learning_rate=5e-4,
                                       token_budget=tokens, min_token_budget=tokens, eval_every=None, save_every=None,
                                       checkpointing=checkpointing, progress=False, seed=0)
            result = train.train(model, examples[:args.steps], None, config)
    finally:
        classifier.gradient_checkpointing_disable()
        model.unload()
    return {"path": "train.train, LoRA in every nn.Linear of the blocks + head", "checkpointing": checkpointing,
            "rank": args.rank, "steps": args.steps - args.warmup, "lora_layer": classifier.config.layer,
            "trainable_params": trainable, **steady_steps(result.history, args.warmup)}


def _compare(records: list[dict]) -> list[dict]:
    """Each embedding record against the baseline of its layers; each LoRA record against the floor."""
    base = {str(r["layers"]): r["windows_per_s"] for r in records if r["case"].endswith("(baseline)")
            and "windows_per_s" in r}
    floor = next((r["tokens_per_s"] for r in records if r["case"].endswith("(floor)") and "tokens_per_s" in r), None)
    out = []
    for r in records:
        r = dict(r)
        if "windows_per_s" in r and str(r.get("layers")) in base and not r["case"].endswith("(baseline)"):
            r |= {"baseline_windows_per_s": base[str(r["layers"])],
                  "vs_baseline": r["windows_per_s"] / base[str(r["layers"])]}
        if r["case"].startswith("LoRA") and "tokens_per_s" in r and floor:
            r |= {"floor_tokens_per_s": floor, "vs_floor": r["tokens_per_s"] / floor}
        out.append(r)
    return out


def _summary(record: dict) -> str:
    if "tokens_per_s" in record:
        return f"{record['tokens_per_s']:,.0f} tokens/s, {record.get('peak_mem_gib')} GiB"
    return f"{record['windows_per_s']:.3f} windows/s, batch {record['batch']}"


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the requested cases, write the results file after each and return the records."""
    args = parse_args(list(argv or []))
    if args.smoke:
        args.window, args.windows, args.baseline_windows = min(args.window, 128), min(args.windows, 8), 4
        args.positions, args.steps, args.warmup, args.layer = 2, 4, 1, 1
    device = pick_device(args.smoke, COMMAND)
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    if set(chosen) - set(CASES):
        raise SystemExit(f"{COMMAND}: unknown case(s) {sorted(set(chosen) - set(CASES))}; use {', '.join(CASES)}")
    results, records = ResultsFile(COMMAND, args.out, args.smoke, args.tag), []
    with smoke_threads(args.smoke):
        lm, genome, table, subset, refs, common = _setup(args)
        n_blocks = common["blocks"]
        sweep = sorted({*range(args.sweep_step - 1, n_blocks, args.sweep_step), n_blocks - 1})
        cases = []
        if "embeddings" in chosen:
            for layers in (sweep, [args.layer % n_blocks]):
                cases += [("evo2 forward b1 (baseline)", lambda l=layers: _baseline(lm, refs, l, args.baseline_windows,
                                                                                   device)),
                          (f"embed_windows b{args.batch_size}",
                           lambda l=layers: _ours(lm, refs, l, args.windows, args.batch_size, device))]
        if "variants" in chosen:
            cases.append(("embed_variants", lambda: _variants(lm, genome, subset, sweep, args, device)))
        examples = _examples(lm, genome, table, args) if {"floor", "lora", "lora-no-checkpointing"} & set(chosen) else []
        if "floor" in chosen:
            cases.append(("frozen forward+backward (floor)", lambda: _floor(lm, examples, args, device)))
        for key, ckpt in (("lora", True), ("lora-no-checkpointing", False)):
            if key in chosen:
                name = f"LoRA r={args.rank} (train.train{'' if ckpt else ', no checkpointing'})"
                cases.append((name, lambda c=ckpt: _lora(lm, examples, args, c)))
        for name, fn in cases:
            records.append(run_case({"case": name, **common}, fn, device, _summary, COMMAND))
            records = _compare(records)
            results.write(records)
    print(f"[{COMMAND}] wrote {results.path}", flush=True)
    return records
