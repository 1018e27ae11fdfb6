"""The command line, ``bioft``: the package's public functions on your own files, with no Python to write.

* ``bioft score-mutants``: zero-shot ESM-2 scores of the mutants of a DMS table (:mod:`.zero_shot`);
* ``bioft score-variants``: DNA language-model scores of SNVs from a VCF or CSV (:mod:`.variants`), resumable;
* ``bioft finetune``: LoRA fine-tuning of ESM-2 on a CSV of sequences and targets or per-residue labels;
* ``bioft predict``: predictions of a fine-tuned model for a FASTA, in the input's order.

Every output table keeps the input's rows in the input's order, with their ids (and the file's row or line
number); its format follows the extension of ``--out`` (``.csv``, ``.tsv``, ``.parquet``), written atomically.
Exit codes: 0 done; 1 a problem with the input (one message that names the value, where it is and the fix,
without a traceback); 2 a usage error (argparse).
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import pickle
import sys
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)
TABLE_FORMATS = (".csv", ".tsv", ".parquet")
FINETUNE_FORMAT = "bioft-finetune/1"
EXAMPLES = {
    "score-mutants": "bioft score-mutants --wt wt.fasta --mutants dms.csv --model facebook/esm2_t33_650M_UR50D "
                     "--out scores.csv",
    "score-variants": "bioft score-variants --variants brca1.vcf --reference chr17.fa --model kmer:6 --cache cache "
                      "--out scores.parquet",
    "finetune": "bioft finetune --train train.csv --validation val.csv --task sequence --model tiny --method lora "
                "--out runs/dms\n  (sequence: columns id, sequence, target; token: id, sequence, labels, optional mask)",
    "predict": "bioft predict --adapter runs/dms --sequences new.fasta --out predictions.csv",
}


def main(argv: list[str] | None = None) -> int:
    """Run ``bioft`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.command != "finetune" and Path(args.out).suffix.lower() not in TABLE_FORMATS:  # before any work
            raise ValueError(f"--out {args.out}: unknown table format {Path(args.out).suffix!r}; name the file .csv, "
                             ".tsv or .parquet")
        args.run(args)
    except Exception as err:  # noqa: BLE001 (only the input's errors are caught, see _input_error)
        if not _input_error(err):
            raise
        print(f"bioft {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


def _input_error(err: Exception) -> bool:
    """The package's documented errors about the input (ValueError, OSError, refused pickles, out of memory)."""
    torch = sys.modules.get("torch")
    memory = (torch.OutOfMemoryError,) if torch is not None else ()
    return isinstance(err, (ValueError, OSError, pickle.UnpicklingError, *memory))


def build_parser() -> argparse.ArgumentParser:
    """The ``bioft`` argument parser with its four commands."""
    parser = argparse.ArgumentParser(prog="bioft", description=__doc__.split("\n\n")[0],
                                     epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, helptext: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=helptext, description=helptext, epilog="example:\n  " + EXAMPLES[name],
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(run=run)
        sub.add_argument("--out", required=True, help="output folder (adapter, history)" if name == "finetune" else
                         f"output table: {', '.join(TABLE_FORMATS)} (by extension)")
        sub.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
        sub.add_argument("-v", "--verbose", action="store_true", help="log progress details")
        return sub

    sub = command("score-mutants", score_mutants, "zero-shot ESM-2 scores of mutants (nats, mutant vs wild type)")
    sub.add_argument("--wt", required=True, help="FASTA with one record: the wild-type protein")
    sub.add_argument("--mutants", required=True, help="table with a 'mutant' column (A42G, A42G:T50C, WT) or a "
                     "'sequence' column of full-length variants (.csv, .tsv, .parquet, .xlsx)")
    sub.add_argument("--model", required=True, help="ESM-2 hub id, local folder, or 'tiny' (random, offline)")
    sub.add_argument("--method", default="masked-marginal", choices=("masked-marginal", "wt-marginal"))
    sub.add_argument("--offset", type=int, default=0, help="table position minus position in the wild type")
    sub.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")

    sub = command("score-variants", score_variants, "DNA language-model scores of SNVs (delta_ll, nats per base)")
    sub.add_argument("--variants", required=True, help="VCF (.vcf, .vcf.gz) or a table with chrom,pos,ref,alt")
    sub.add_argument("--reference", required=True, help="reference FASTA (indexed with pyfaidx on first use)")
    sub.add_argument("--model", required=True, help="kmer[:K] (fitted on the reference outside the windows), "
                     "tiny (random), an Evo 2 checkpoint name (evo2_7b), a local .pt file or a Hugging Face folder")
    sub.add_argument("--window", type=int, default=8192, help="bases per window, variant in the middle")
    sub.add_argument("--cache", default=None, help="folder of cached window scores: a rerun resumes from it")
    sub.add_argument("--batch-size", type=int, default=None, help="windows per forward pass")
    sub.add_argument("--on-invalid", default="raise", choices=("raise", "skip"),
                     help="skip: score the other rows, give bad ones NaN and a 'problem'")
    sub.add_argument("--expand-info", action="store_true", help="add one typed column per VCF INFO field")

    sub = command("finetune", finetune, "LoRA fine-tuning of ESM-2 on your sequences")
    sub.add_argument("--train", required=True, help="training table (.csv, .tsv, .parquet)")
    sub.add_argument("--validation", required=True, help="validation table, same columns")
    sub.add_argument("--task", required=True, choices=("sequence", "token"),
                     help="sequence: one value per sequence (regression); token: one class letter per residue")
    sub.add_argument("--model", required=True, help="ESM-2 hub id, local folder, or 'tiny'")
    sub.add_argument("--method", default="lora", choices=("lora",))
    sub.add_argument("--max-steps", type=int, default=500)
    sub.add_argument("--learning-rate", type=float, default=5e-4)
    sub.add_argument("--lora-rank", type=int, default=8)
    sub.add_argument("--token-budget", type=int, default=16384, help="tokens per batch, padding included")
    sub.add_argument("--seed", type=int, default=0)

    sub = command("predict", predict, "predictions of a model made by 'bioft finetune'")
    sub.add_argument("--adapter", required=True, help="the --out folder of 'bioft finetune'")
    sub.add_argument("--sequences", required=True, help="FASTA, or a table with id and sequence columns")
    sub.add_argument("--token-budget", type=int, default=16384, help="tokens per batch, padding included")
    return parser


# ------------------------------------------------------------------------------------------------ tables
def write_table(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` atomically as CSV, TSV or Parquet (by extension), with its index if it names file rows."""
    from bioft_tutorial.data import atomic_write_bytes

    path, keep_index = Path(path), df.index.name in ("row", "line")
    if path.suffix.lower() == ".parquet":
        buffer = io.BytesIO()
        df.to_parquet(buffer, index=keep_index)
        payload = buffer.getvalue()
    else:
        payload = df.to_csv(sep="\t" if path.suffix.lower() == ".tsv" else ",", index=keep_index).encode()
    atomic_write_bytes(path, payload)
    log.info("wrote %d rows to %s", len(df), path)


def _device(name: str | None) -> str:
    import torch
    return name or ("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------------ commands
def score_mutants(args: argparse.Namespace) -> None:
    """``bioft score-mutants``: the table as ``data.read_dms_csv`` reads it (less a ``mutated_sequence`` it built)
    plus ``zero_shot_score`` (nats)."""
    from bioft_tutorial import data, models, zero_shot

    records = data.read_fasta(args.wt)
    if len(records) != 1:
        raise ValueError(f"{args.wt}: {len(records)} FASTA records ({', '.join(list(records)[:3])}, ...); --wt needs "
                         "a FASTA with one record, the wild-type protein")
    wt_seq = next(iter(records.values()))
    table = data.read_dms_csv(args.mutants, wt_seq, score_column=None, offset=args.offset)
    model, tokenizer = models.load_esm2(args.model, task="mlm", device=_device(args.device))
    table["zero_shot_score"] = zero_shot.score_substitutions(model, tokenizer, wt_seq, table["mutant"].tolist(),
                                                             args.method, offset=args.offset,
                                                             batch_size=args.batch_size)
    built = ["mutated_sequence"] if "mutated_sequence" in table.attrs["added_columns"] else []
    write_table(table.drop(columns=built), args.out)


def score_variants(args: argparse.Namespace) -> None:
    """``bioft score-variants``: the variants plus ``ref_ll``, ``alt_ll``, ``delta_ll`` (``variants.score_variants``)."""
    from bioft_tutorial import variants

    genome = variants.Genome(args.reference)
    name = Path(args.variants).name.lower()
    vcf = name.endswith((".vcf", ".vcf.gz", ".vcf.bgz"))
    table = variants.read_vcf(args.variants) if vcf else variants.read_variants_csv(args.variants)
    if args.on_invalid == "raise":  # before a model is loaded or fitted
        variants.raise_for_problems(genome, table, variants.check_variants(genome, table))
    lm = dna_model(args.model, genome, table, args.window, args.batch_size, _device(args.device))
    scored = variants.score_variants(lm, genome, table, window=args.window, batch_size=args.batch_size,
                                     cache_dir=args.cache, on_invalid=args.on_invalid)
    write_table(variants.expand_info(scored) if args.expand_info and vcf else scored, args.out)


def dna_model(name: str, genome, table: pd.DataFrame, window: int, batch_size: int | None, device: str):
    """The DNA language model ``--model`` names (see ``bioft score-variants --help``)."""
    from bioft_tutorial import variants

    kind, _, option = name.partition(":")
    if kind == "kmer":
        if option and not option.isdigit():
            raise ValueError(f"--model {name!r}: k must be a whole number, e.g. kmer:6")
        return variants.fit_kmer_background(genome, table, window=window, k=int(option or 6))
    if name == "tiny":
        return variants.TinyDNALM(max_length=window, batch_size=batch_size or 8, device=device)
    if Path(name).is_dir():
        return variants.HFCausalLM(name, device=device, batch_size=batch_size or 8)
    return variants.Evo2LM.load(name, batch_size=batch_size or 8)


def finetune(args: argparse.Namespace) -> None:
    """``bioft finetune``: ``DIR/best/adapter`` (PEFT), ``DIR/history.csv`` and ``DIR/bioft.json``."""
    from bioft_tutorial import data, lora, models, train

    out = Path(args.out)
    tables = [_examples_table(path, args.task) for path in (args.train, args.validation)]
    meta = {"format": FINETUNE_FORMAT, "model": args.model, "task": args.task, "method": args.method,
            **_label_meta(tables[0], args.task, args.train)}
    model, tokenizer = models.load_esm2(args.model, task=args.task, num_labels=meta["num_labels"], seed=args.seed)
    examples = [data.sequence_regression_examples(t, tokenizer, "sequence", "target", meta["center"], meta["scale"])
                if args.task == "sequence" else data.secondary_structure_examples(t, tokenizer, classes=meta["classes"])
                for t in tables]
    net = lora.prepare_model(model, "lora", lora.esm2_lora_config(r=args.lora_rank, task=args.task))
    config = train.TrainConfig(output_dir=str(out), max_steps=args.max_steps, learning_rate=args.learning_rate,
                               warmup_steps=args.max_steps // 10, token_budget=args.token_budget,
                               min_token_budget=min(1024, args.token_budget), eval_every=max(1, args.max_steps // 5),
                               save_every=None, seed=args.seed, device=args.device or "auto")
    result = train.train(net, examples[0], examples[1], config)
    meta["adapter"] = "best/adapter"
    if not (out / meta["adapter"] / "adapter_config.json").is_file():  # no evaluation gave a finite metric
        log.warning("no evaluation gave a finite %s; saving the final weights as %s/final/adapter", result.metric, out)
        net.save_pretrained(str(out / "final" / "adapter"))
        meta["adapter"] = "final/adapter"
    meta.update(best_step=result.best_step, metric=result.metric, best_metric=result.best_metric)
    write_table(result.history, out / "history.csv")
    data.atomic_write_bytes(out / "bioft.json", json.dumps(meta, indent=2).encode())


def _label_meta(table: pd.DataFrame, task: str, path: str) -> dict:
    """What predictions need to mean what the training labels meant: the targets' scaling, or the label letters."""
    from bioft_tutorial import data

    if task == "token":
        letters = set("".join(x for x in table["labels"] if isinstance(x, str)))
        classes = data.SS_LABELS if letters <= set(data.SS_LABELS) else "".join(sorted(letters))
        return {"classes": classes, "num_labels": len(classes)}
    targets = pd.to_numeric(table["target"], errors="coerce")  # text or NaN rows: refused with their row below
    if not targets.std() > 0:
        raise ValueError(f"{path}: the {len(table)} training targets do not vary (all {targets.iloc[0]}); a "
                         "regression needs different values to learn from")
    return {"num_labels": 1, "center": float(targets.mean()), "scale": float(targets.std())}


def _examples_table(path: str, task: str) -> pd.DataFrame:
    from bioft_tutorial import data

    text = {c: str for c in ("id", "sequence", "labels", "mask")}  # a mask such as 0111 is text, not a number
    table = data.read_table(path, **({} if path.lower().endswith(".parquet") else {"dtype": text}))
    need = ["id", "sequence", "target" if task == "sequence" else "labels"]
    missing = [c for c in need if c not in table.columns]
    if table.empty or missing:
        raise ValueError(f"{path}: no column {missing} for --task {task}; it needs {need} (found "
                         f"{list(table.columns)[:8]}); rename the columns" if missing else f"{path}: no rows")
    table.index = pd.Index(range(2, len(table) + 2), name="row")
    table.attrs["source"] = str(path)
    if task == "token" and "mask" not in table.columns:
        table["mask"] = ["1" * len(s) if isinstance(s, str) else s for s in table["sequence"]]
    return table


def predict(args: argparse.Namespace) -> None:
    """``bioft predict``: ``id`` and ``prediction`` (a value, or one class letter per residue), input order."""
    from bioft_tutorial import data, lora, models
    from bioft_tutorial import predict as inference

    folder = Path(args.adapter)
    meta_path = next((p / "bioft.json" for p in (folder, *folder.parents[:2]) if (p / "bioft.json").is_file()), None)
    if meta_path is None:
        raise FileNotFoundError(f"{folder}: no bioft.json here; pass the --out folder of 'bioft finetune'")
    meta = json.loads(meta_path.read_text())
    device = _device(args.device)
    base, tokenizer = models.load_esm2(meta["model"], task=meta["task"], num_labels=meta["num_labels"], device=device)
    model = lora.load_adapter(base, str(meta_path.parent / meta["adapter"]))
    sequences = _sequences(args.sequences)
    if meta["task"] == "token":
        classes = inference.predict_residue_classes(model, tokenizer, sequences, classes=meta["classes"],
                                                    token_budget=args.token_budget)
        values = [classes[i] for i in sequences]
    else:
        table = pd.DataFrame({"sequence": list(sequences.values())}, index=pd.Index(list(sequences), name="id"))
        table.attrs["source"] = str(args.sequences)
        examples = data.sequence_regression_examples(table, tokenizer, "sequence", None)
        values = inference.predict_values(model, examples, center=meta["center"], scale=meta["scale"],
                                          token_budget=args.token_budget)
    write_table(pd.DataFrame({"id": list(sequences), "prediction": values}), args.out)


def _sequences(path: str) -> dict[str, str]:
    from bioft_tutorial import data

    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith((".fasta", ".fa", ".faa", ".fas")):
        return data.read_fasta(path)
    table = data.read_table(path)
    if not {"id", "sequence"} <= set(table.columns):
        raise ValueError(f"{path}: a table of sequences needs columns id and sequence; found {list(table.columns)[:8]}")
    twice = table["id"][table["id"].duplicated()].tolist()
    if twice:
        raise ValueError(f"{path}: id {twice[0]!r} appears twice; ids must be unique (rename one)")
    return dict(zip(table["id"].astype(str), table["sequence"]))


if __name__ == "__main__":
    sys.exit(main())
