"""Bad input gets a clear error: a table of bad inputs across the public API (issue 7).

Each row is ``(call, expected exception type, fragments)``. The test checks that the call raises exactly the
documented type (``book/errors.md``), that the exception was raised by the package itself (the innermost frame
is in ``bioft_tutorial``, not deep inside torch, pandas, numpy or pyfaidx), and that the message holds every
fragment: the offending value, where it came from (file, line, row, column or position) and what to do.

A second group of tests pins the *documented handling* of inputs that are not errors: lower case, the rare
letters B/Z/U/O/X, sequences longer than the model, multi-allelic VCF rows.
"""
from __future__ import annotations

import gzip
import io
import pickle
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from bioft_tutorial import checkpoint, data, lora, models, predict, train, zero_shot
from bioft_tutorial.data import DataError
from bioft_tutorial.variants import (Genome, KmerModel, TinyDNALM, VariantError, expand_info, parse_vcf,
                                     read_variants_csv, read_vcf, score_variants, variant_window)

WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues; K2, T3, A4, Y5 are used below
FASTA = data.asset_path("brca1", "GRCh37_chr17_BRCA1_region.fa")
VCF_HEAD = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
GOOD_SNV = "17\t41276135\t.\tT\tG\t.\t.\t.\n"  # REF matches the shipped GRCh37 slice


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """What the calls need: the tiny models, the tokenizer, the BRCA1 genome and a folder for bad files."""
    root = tmp_path_factory.mktemp("bad-inputs")
    counter = iter(range(10**6))

    def file(name: str, content: str | bytes) -> Path:
        path = root / str(next(counter)) / name
        path.parent.mkdir()
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    mlm, tok = models.load_esm2("tiny", task="mlm")
    token_model, _ = models.load_esm2("tiny", task="token", num_labels=3)
    return SimpleNamespace(mlm=mlm, tok=tok, token_model=token_model, genome=Genome(FASTA), file=file, root=root)


# --- helpers the table calls ---------------------------------------------------------------------------------
def _score(c, wt, mutants, **kw):
    return zero_shot.score_substitutions(c.mlm, c.tok, wt, mutants, progress=False, **kw)


def _embed(c, seqs):
    return zero_shot.embed(c.mlm, c.tok, seqs, progress=False)


def _ss(c, seq, labels=None, mask=None, drop=()):
    df = pd.DataFrame({"id": ["p1"], "sequence": [seq], "labels": [labels if labels is not None else "C" * len(seq)],
                       "mask": [mask if mask is not None else "1" * len(seq)]}).drop(columns=list(drop))
    return data.secondary_structure_examples(df, c.tok, as_dataset=False)


def _regression(c, seqs, targets, sequence_column="mutated_sequence"):
    df = pd.DataFrame({sequence_column: seqs, "DMS_score": targets})
    return data.sequence_regression_examples(df, c.tok)


def _predict(c, seqs: dict):
    return predict.predict_residue_classes(c.token_model, c.tok, seqs)


def _dms(c, text):
    return data.read_dms_csv(c.file("dms.csv", text), WT)


def _fasta(text):
    return data.parse_fasta(io.StringIO(text), source="mine.fa")


def _vcf_score(c, body, **kw):
    variants = read_vcf(c.file("mine.vcf", VCF_HEAD + body))
    return score_variants(KmerModel(k=2).fit("ACGTTGCA"), c.genome, variants, window=64, progress=False, **kw)


def _csv_score(c, text):
    variants = read_variants_csv(c.file("mine.csv", text))
    return score_variants(KmerModel(k=2).fit("ACGTTGCA"), c.genome, variants, window=64, progress=False)


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode())


def _config(**kw):
    return train.TrainConfig(**{"max_steps": 10, "warmup_steps": 0, "token_budget": 2048, "min_token_budget": 512,
                                "progress": False, **kw})


def _train_too_long(c):
    model = lora.prepare_model(models.random_esm2(models.tiny_esm2_config(), "token", 3), "full")
    examples = [{"input_ids": [0] + [5] * n + [2], "labels": [-100] + [0] * n + [-100]} for n in (10, 20, 100, 30)]
    return train.train(model, examples, None, _config(output_dir=str(c.root / "run"), token_budget=64,
                                                      min_token_budget=32))


def _pickle_checkpoint(c):
    folder = c.root / "ckpt-pickle"
    checkpoint.save_checkpoint(folder, {"model/w": torch.ones(2)}, {"step": 1})
    (folder / "tensors.safetensors").write_bytes(pickle.dumps({"model/w": [1.0, 2.0]}))
    return checkpoint.load_checkpoint(folder)


def _garbled_latest(c):
    root = c.root / "runs-garbled"
    folder = checkpoint.save_checkpoint(root / "step-000001", {"model/w": torch.ones(2)}, {"step": 1})
    checkpoint.mark_latest(root, folder)
    (root / "latest.json").write_text('{"checkpoint": step-000001')
    return checkpoint.latest_checkpoint(root)


def _wrong_model_resume(c):
    full = lora.prepare_model(models.random_esm2(models.tiny_esm2_config(), "token", 3), "full")
    head = lora.prepare_model(models.random_esm2(models.tiny_esm2_config(), "token", 3), "head")
    return checkpoint.load_trainable(head, checkpoint.trainable_tensors(full))


def _empty_dir(c):
    folder = c.root / "empty-model-folder"
    folder.mkdir(exist_ok=True)
    return models.load_esm2(str(folder))


def _tiny_model():
    return models.random_esm2(models.tiny_esm2_config(), "token", 3)


# --- the table ------------------------------------------------------------------------------------------------
# (id, call, expected type, fragments that must all appear in the message)
CASES = [
    # protein sequences: zero-shot scoring and embeddings
    ("score: empty wt_seq", lambda c: _score(c, "", ["M1A"]), ValueError, ["wt_seq is empty", "protein sequence"]),
    ("score: lower case", lambda c: _score(c, WT.lower(), ["M1A"]), ValueError,
     ["wt_seq", "'m' at position 1", "upper-case", "seq.upper()"]),
    ("score: stop codon", lambda c: _score(c, WT[:10] + "*" + WT[10:], ["K2A"]), ValueError,
     ["wt_seq", "'*' at position 11", "remove stop codons"]),
    ("score: J", lambda c: _score(c, "MKJAY", ["K2A"]), ValueError, ["'J' at position 3", "X for unknown"]),
    ("score: gap", lambda c: _score(c, "MK-AY", ["K2A"]), ValueError, ["'-' at position 3", "gaps"]),
    ("score: space", lambda c: _score(c, "MK AY", ["K2A"]), ValueError, ["' ' at position 3", "spaces"]),
    ("score: digit", lambda c: _score(c, "MK7AY", ["K2A"]), ValueError, ["'7' at position 3", "digits"]),
    ("score: newline", lambda c: _score(c, "MKTA\nY", ["K2A"]), ValueError, ["'\\n' at position 5", "spaces"]),
    ("embed: empty", lambda c: _embed(c, [WT, ""]), ValueError, ["sequence 1 is empty"]),
    ("embed: stop codon", lambda c: _embed(c, [WT, "MK*"]), ValueError, ["sequence 1", "'*' at position 3"]),
    ("embed: too long", lambda c: _embed(c, ["A" * 1023]), ValueError,
     ["sequence 0 has 1023 residues", "1022", "crop it or embed overlapping windows"]),
    ("embed: not text", lambda c: _embed(c, [None]), ValueError, ["sequence 0 is None", "as text"]),
    # protein sequences: training-data builders and inference
    ("ss examples: stop codon", lambda c: _ss(c, "MKT*A"), DataError, ["chain 'p1'", "'*' at position 4",
                                                                    "remove stop codons"]),
    ("ss examples: digit", lambda c: _ss(c, "MK3TA"), DataError, ["chain 'p1'", "'3' at position 3"]),
    ("ss examples: empty", lambda c: _ss(c, ""), DataError, ["chain 'p1'", "empty sequence"]),
    ("regression: space", lambda c: _regression(c, ["MKTA", "MK TA"], [0.1, 0.2]), DataError,
     ["table, row 2", "' ' at position 3", "spaces"]),
    ("regression: too long", lambda c: _regression(c, ["M" * 1023], [0.1]), DataError,
     ["table, row 1", "1023 residues", "longer than 1022", "crop it"]),
    ("regression: empty", lambda c: _regression(c, ["MK", ""], [0.1, 0.2]), DataError, ["row 2", "empty sequence"]),
    ("regression: no sequence", lambda c: _regression(c, ["MK", None], [0.1, 0.2]), DataError,
     ["table, row 2", "'mutated_sequence'", "nan is not a sequence", "drop rows"]),
    ("predict: stop codon", lambda c: _predict(c, {"q1": "MKTAY*"}), DataError,
     ["sequence 'q1'", "'*' at position 6", "remove stop codons"]),
    ("predict: gap", lambda c: _predict(c, {"q1": "MK", "q2": "MK-TA"}), DataError,
     ["sequence 'q2'", "'-' at position 3"]),
    ("predict: empty", lambda c: _predict(c, {"q1": ""}), DataError, ["sequence 'q1'", "empty sequence"]),
    # mutation strings
    ("mutant: wrong wild type", lambda c: _score(c, WT, ["W5A"]), ValueError,
     ["'W5A'", "sequence has 'Y' at position 5", "not 'W'", "check that wt_seq"]),
    ("mutant: off by one (1-based too high)", lambda c: _score(c, WT, ["K3A"]), ValueError,
     ["'K3A'", "'T' at position 3", "'K' at 2", "offset=1"]),
    ("mutant: off by one (0-based)", lambda c: zero_shot.parse_mutant("A3G", WT), ValueError,
     ["'A3G'", "'A' at 4", "offset=-1"]),
    ("mutant: out of range", lambda c: _score(c, WT, ["L200A"]), ValueError,
     ["'L200A'", "position 200", f"1..{len(WT)}", "offset"]),
    ("mutant: position 0", lambda c: zero_shot.parse_mutant("M0A", WT), ValueError, ["'M0A'", "1-based", "offset=-1"]),
    ("mutant: duplicate position", lambda c: _score(c, WT, ["K2A:K2G"]), ValueError,
     ["'K2A:K2G'", "position 2 appears twice", "merge or drop"]),
    ("mutant: malformed", lambda c: zero_shot.parse_mutant("K2", WT), ValueError, ["'K2'", "not like 'A42G'"]),
    ("mutant: wrong separator", lambda c: zero_shot.parse_mutant("K2A,Y5W", WT), ValueError,
     ["'K2A,Y5W'", "join several substitutions with ':'"]),
    ("mutant: lower case", lambda c: zero_shot.parse_mutant("k2a", WT), ValueError, ["'k2a'", "use upper case"]),
    ("mutant: non-standard letter", lambda c: zero_shot.parse_mutant("K2B", WT), ValueError,
     ["'K2B'", "'B' is not one of the 20 amino acids"]),
    ("mutant: not text", lambda c: zero_shot.parse_mutant(None, WT), ValueError, ["None", "like 'A42G'"]),
    ("mutants: a bare string", lambda c: _score(c, WT, "K2A"), TypeError, ["'K2A'", "wrap it: ['K2A']"]),
    ("dms csv: wrong wild type", lambda c: _dms(c, "mutant,DMS_score\nK2A,0.1\nK3A,0.2\n"), DataError,
     ["dms.csv, row 3", "'K3A'", "has 'T'", "Try offset=1"]),
    ("dms csv: malformed mutant", lambda c: _dms(c, "mutant,DMS_score\nK2A,0.1\nK2,0.2\n"), DataError,
     ["dms.csv, row 3", "'K2'", "like 'A42G'"]),
    ("regression: NaN target in a file", lambda c: data.sequence_regression_examples(
        _dms(c, "mutant,DMS_score\nK2A,0.1\nT3A,0.2\n").assign(DMS_score=[0.1, np.nan]), c.tok), DataError,
     ["dms.csv, row 3", "column 'DMS_score'", ": nan is not", "drop or fix"]),
    ("dms split: no position column", lambda c: data.dms_split(pd.DataFrame({"mutant": ["K2A"], "score": [0.1]}),
                                                              by="position"), DataError,
     ["by='position' needs a 'position' column", "found ['mutant', 'score']", "read_dms_csv", "by='random'"]),
    ("dms split: multi-mutants by position", lambda c: data.dms_split(
        _dms(c, "mutant,DMS_score\nK2A,0.1\nK2A:Y5W,0.2\n"), by="position"), DataError,
     ["dms.csv, row 3", "'K2A:Y5W' has no single position", "Use by='random'"]),
    ("mutant: wild type spelt out", lambda c: zero_shot.parse_mutant("wildtype", WT), ValueError,
     ["'wildtype'", "write the wild type as 'WT'"]),
    ("mutants from sequences: other length", lambda c: data.mutants_from_sequences(WT, [WT, WT[:-1]], source="gb1.csv"),
     ValueError, ["gb1.csv, row 2", "32 residues", "wild type has 33", "align insertions and deletions"]),
    ("dms csv: mutated_sequence disagrees", lambda c: _dms(
        c, f"mutant,DMS_score,mutated_sequence\nK2A,0.1,{WT}\n"), DataError,
     ["dms.csv, row 2", "'mutated_sequence'", "'K2A'", "position 2 has 'K', expected 'A'", "offset"]),
    # FASTA
    ("fasta: FLIP header without SET", lambda c: data.read_flip_fasta(c.file("flip.fasta", ">s1 TARGET=0.5\nMK\n")),
     DataError, ["flip.fasta, line 1", "SET=None", "'>id SET=train VALIDATION=False'"]),
    ("fasta: FLIP target not a number", lambda c: data.read_flip_fasta(
        c.file("flip.fasta", ">s1 SET=train\nMK\n>s2 TARGET=high SET=test\nMA\n")), DataError,
     ["flip.fasta, line 3", "TARGET='high' is not a number"]),
    ("fasta: text before header", lambda c: _fasta("MKT\n>a\nMK\n"), DataError,
     ["mine.fa, line 1", "'MKT'", "before the first '>' header"]),
    ("fasta: duplicate id", lambda c: _fasta(">a\nMK\n>b\nMK\n>a\nGG\n"), DataError,
     ["mine.fa, line 5", "duplicate FASTA id 'a'", "rename one record"]),
    ("fasta: record without sequence", lambda c: _fasta(">a\n>b\nGG\n"), DataError,
     ["mine.fa, line 1", "record 'a' has no sequence"]),
    ("fasta: empty header", lambda c: _fasta(">\nGG\n"), DataError, ["mine.fa, line 1", "give every record an id"]),
    ("fasta: empty text", lambda c: _fasta(""), DataError, ["mine.fa", "no FASTA records", "empty or not FASTA"]),
    ("fasta: binary file", lambda c: data.read_fasta(c.file("mine.fa", b"\xff\xfe>a\n")), DataError,
     ["mine.fa", "not a readable FASTA", "UnicodeDecodeError", "check that it is a FASTA file"]),
    ("fasta: .gz that is not gzip", lambda c: data.read_fasta(c.file("mine.fa.gz", ">a\nMK\n")), DataError,
     ["mine.fa.gz", "not a readable FASTA", "complete gzip file"]),
    ("fasta: truncated .gz", lambda c: data.read_fasta(c.file("cut.fa.gz", _gz(">a\n" + WT * 30)[:-20])), DataError,
     ["cut.fa.gz", "complete gzip file"]),
    ("fasta: missing file", lambda c: data.read_fasta(c.root / "nope.fa"), FileNotFoundError,
     ["nope.fa", "no such file", "check the path"]),
    ("labels: fewer labels than residues", lambda c: _ss(c, "MKT", labels="HH"), DataError,
     ["chain 'p1' has 3 residues but 2 labels", "exactly one label"]),
    ("labels: fewer mask values", lambda c: _ss(c, "MKT", mask="11"), DataError, ["chain 'p1'", "2 mask values"]),
    ("labels: foreign letter", lambda c: _ss(c, "MKT", labels="HGC"), DataError,
     ["chain 'p1'", "labels ['G']", "'HEC'", "G/I to H"]),
    ("labels: bad mask value", lambda c: _ss(c, "MKT", mask="121"), DataError, ["chain 'p1'", "['2']", "write 1"]),
    ("labels: no mask column", lambda c: _ss(c, "MKT", drop=["mask"]), DataError,
     ["missing column(s) ['mask']", "one 0/1 mask value per residue"]),
    ("labels: validate FLIP-style table", lambda c: data.validate_token_labels(
        pd.DataFrame({"id": ["p7"], "sequence": ["MKTA"], "labels": ["HHEEC"], "mask": ["1111"]}), source="ss.fasta"),
     DataError, ["ss.fasta", "chain 'p7' has 4 residues but 5 labels"]),
    # CSV
    ("dms csv: missing column", lambda c: _dms(c, "mutant,score\nK2A,0.1\n"), DataError,
     ["dms.csv", "missing column(s) ['DMS_score']", "found ['mutant', 'score']"]),
    ("dms csv: text score", lambda c: _dms(c, "mutant,DMS_score\nK2A,0.1\nT3A,high\n"), DataError,
     ["dms.csv, row 3", "column 'DMS_score'", "'high' is not a number"]),
    ("dms csv: NaN score", lambda c: _dms(c, "mutant,DMS_score\nK2A,0.1\nT3A,\n"), DataError,
     ["dms.csv, row 3", "column 'DMS_score'", "NaN", "drop or fill"]),
    ("dms csv: inf score", lambda c: _dms(c, "mutant,DMS_score\nK2A,inf\n"), DataError,
     ["dms.csv, row 2", "column 'DMS_score'", "inf", "finite"]),
    ("dms csv: empty file", lambda c: _dms(c, ""), DataError, ["dms.csv", "empty", "mutant,DMS_score"]),
    ("dms csv: unclosed quote", lambda c: _dms(c, 'mutant,DMS_score\nK2A,0.1\n"T3A,0.2\n'), DataError,
     ["dms.csv", "not a well-formed CSV", "row 2", "quotes"]),
    ("dms csv: missing file", lambda c: data.read_dms_csv(c.root / "none.csv", WT), FileNotFoundError,
     ["none.csv", "no such file", "check the path"]),
    ("regression: NaN target", lambda c: _regression(c, ["MK", "MA"], [1.0, np.nan]), DataError,
     ["table, row 2", "column 'DMS_score'", ": nan is not a finite number", "drop or fix"]),
    ("regression: text target", lambda c: _regression(c, ["MK", "MA"], [1.0, "high"]), DataError,
     ["row 2", "'high' is not a finite number"]),
    ("regression: missing column", lambda c: _regression(c, ["MK"], [1.0], sequence_column="seq"), DataError,
     ["missing column(s) ['mutated_sequence']", "found ['seq', 'DMS_score']"]),
    ("variants csv: missing column", lambda c: read_variants_csv(c.file("v.csv", "chrom,position,alt\n17,5,A\n")),
     VariantError, ["v.csv", "no column for ['ref']", "chrom, pos (1-based), ref and alt"]),
    ("variants csv: empty", lambda c: read_variants_csv(c.file("v.csv", "")), VariantError,
     ["v.csv", "empty", "chrom,pos,ref,alt"]),
    ("variants csv: unclosed quote", lambda c: read_variants_csv(c.file("v.csv", 'chrom,pos,ref,alt\n"17,5,A,G\n')),
     VariantError, ["v.csv", "not a well-formed CSV", "quotes"]),
    ("variants csv: text position", lambda c: _csv_score(c, "chrom,pos,ref,alt\n17,41276135,T,G\n17,two,T,G\n"),
     VariantError, ["mine.csv", "bad_position", "line 3", "whole numbers >= 1"]),
    ("variants csv: empty allele", lambda c: _csv_score(c, "chrom,pos,ref,alt\n17,41276135,T,\n"),
     VariantError, ["mine.csv", "missing", "line 2", "fill in chrom, pos, ref and alt"]),
    # VCF
    ("vcf: record before header", lambda c: parse_vcf(["17\t1\t.\tA\tC\t.\t.\t.\n"], source="mine.vcf"),
     VariantError, ["mine.vcf, line 1", "before the '#CHROM", "is this a VCF?"]),
    ("vcf: spaces, not tabs", lambda c: parse_vcf((VCF_HEAD + "17 5 . A C . . .\n").splitlines(True), "mine.vcf"),
     VariantError, ["mine.vcf, line 3", "1 tab-separated columns", "spaces instead of tabs"]),
    ("vcf: POS not a number", lambda c: parse_vcf((VCF_HEAD + "17\t5x\t.\tA\tC\t.\t.\t.\n").splitlines(True),
                                                  "mine.vcf"),
     VariantError, ["mine.vcf, line 3", "POS '5x'", "1-based integers"]),
    ("vcf: empty ALT", lambda c: parse_vcf((VCF_HEAD + "17\t5\t.\tA\t\t.\t.\t.\n").splitlines(True), "mine.vcf"),
     VariantError, ["mine.vcf, line 3", "empty ALT", "write '.'"]),
    ("vcf: no header", lambda c: parse_vcf(["##fileformat=VCFv4.2\n"], source="mine.vcf"), VariantError,
     ["mine.vcf", "no '#CHROM' header", "not a VCF"]),
    ("vcf: binary file", lambda c: read_vcf(c.file("mine.vcf", b"\x00\xff\xfe")), VariantError,
     ["mine.vcf", "not a readable VCF", "check that it is a VCF file"]),
    ("vcf: missing file", lambda c: read_vcf(c.root / "absent.vcf"), FileNotFoundError,
     ["absent.vcf", "no such file", "check the path"]),
    ("vcf: unknown contig", lambda c: _vcf_score(c, GOOD_SNV + "chr99\t5\t.\tA\tG\t.\t.\t.\n"), VariantError,
     ["mine.vcf", "unknown_contig", "line 4", "unknown contig 'chr99'", "aliases="]),
    ("vcf: REF mismatch", lambda c: _vcf_score(c, GOOD_SNV + "17\t41276135\t.\tA\tG\t.\t.\t.\n"), VariantError,
     ["mine.vcf", "ref_mismatch", "line 4", "17:41276135 A>G (genome has T)", "Fix:"]),
    ("vcf: indel", lambda c: _vcf_score(c, GOOD_SNV + "17\t41276135\t.\tTA\tT\t.\t.\t.\n"), VariantError,
     ["mine.vcf", "indel x1", "line 4", "SNVs only", "on_invalid='skip'"]),
    ("vcf: multi-allelic with an indel allele", lambda c: _vcf_score(c, "17\t41276135\t.\tT\tG,TAA\t.\t.\t.\n"),
     VariantError, ["mine.vcf: 1 of 2 variants", "indel x1", "line 3", "T>TAA", "split indels"]),
    ("variants csv: multi-allelic ALT", lambda c: _csv_score(c, "chrom,pos,ref,alt\n17,41276135,T,\"G,C\"\n"),
     VariantError, ["mine.csv", "multi_allelic x1", "line 2", "T>G,C", "one row per ALT allele", "explode('alt')"]),
    ("vcf: INFO value not of its type", lambda c: expand_info(read_vcf(c.file("mine.vcf", VCF_HEAD.replace(
        "#CHROM", '##INFO=<ID=AF,Number=A,Type=Float,Description="freq">\n#CHROM') + "17\t5\t.\tA\tC\t.\t.\tAF=high\n"))),
     VariantError, ["mine.vcf, line 4", "AF='high'", "Type=Float", "##INFO header"]),
    ("vcf: symbolic allele", lambda c: _vcf_score(c, "17\t41276135\t.\tT\t<DEL>\t.\t.\t.\n"), VariantError,
     ["mine.vcf", "non_acgt", "line 3", "symbolic alleles"]),
    ("vcf: outside the genome", lambda c: _vcf_score(c, "17\t41000000\t.\tT\tG\t.\t.\t.\n"), VariantError,
     ["mine.vcf", "out_of_range", "line 3", "NC_000017.10:41,100,001-41,300,000", "covers these positions"]),
    ("scoring: bad on_invalid", lambda c: _vcf_score(c, GOOD_SNV, on_invalid="ignore"), ValueError,
     ["on_invalid='ignore'", "use 'raise' or 'skip'"]),
    ("scoring: window longer than the model", lambda c: score_variants(
        TinyDNALM(max_length=32), {"c": "ACGT" * 20}, pd.DataFrame({"chrom": ["c"], "pos": [5], "ref": ["A"],
                                                                   "alt": ["G"]}), window=64, progress=False),
     ValueError, ["window=64", "max_length=32", "pass a smaller window"]),
    ("scoring: k-mer model not fitted", lambda c: score_variants(
        KmerModel(k=2), {"c": "ACGT" * 20}, pd.DataFrame({"chrom": ["c"], "pos": [5], "ref": ["A"], "alt": ["G"]}),
        window=16, progress=False), RuntimeError, ["not fitted", "call .fit("]),
    ("window: REF mismatch", lambda c: variant_window(Genome({"c": "ACGTACGTAC"}), "c", 2, "A", "G"), VariantError,
     ["c:2", "REF is 'A'", "has 'C'", "genome build", "1-based"]),
    ("window: outside the contig", lambda c: variant_window(Genome({"c": "ACGTACGTAC"}), "c", 20, "A", "G"),
     VariantError, ["c:20", "outside the sequence", "c:1-10", "1-based"]),
    ("window: indel", lambda c: variant_window(Genome({"c": "ACGTACGTAC"}), "c", 2, "CG", "C"), VariantError,
     ["c:2 CG>C", "SNVs only"]),
    ("window: unknown contig", lambda c: variant_window(Genome({"c": "ACGTACGTAC"}), "chrQ", 2, "C", "G"),
     VariantError, ["unknown contig 'chrQ'", "aliases={'chrQ': 'c'}"]),
    # genome FASTA
    ("genome: missing", lambda c: Genome(c.root / "hg19.fa"), FileNotFoundError,
     ["hg19.fa", "no such FASTA file", "check the path"]),
    ("genome: missing, via score_variants", lambda c: score_variants(
        KmerModel(k=2).fit("ACGT"), c.root / "hg38.fa", pd.DataFrame({"chrom": ["1"], "pos": [5], "ref": ["A"],
                                                                      "alt": ["G"]}), progress=False),
     FileNotFoundError, ["hg38.fa", "no such FASTA file"]),
    ("genome: empty file", lambda c: Genome(c.file("empty.fa", "")), VariantError,
     ["empty.fa", "the FASTA file is empty", "download or copy it again"]),
    ("genome: header only", lambda c: Genome(c.file("header.fa", ">chr1\n")), VariantError,
     ["header.fa", "record 'chr1' has no sequence", "download or copy it again"]),
    ("genome: a folder", lambda c: Genome(c.root), VariantError, ["is a folder", "path of the FASTA file"]),
    ("genome: not FASTA", lambda c: Genome(c.file("notes.fa", "hello\nworld\n")), VariantError,
     ["notes.fa", "not a well-formed FASTA", "'>' header"]),
    ("genome: ragged lines", lambda c: Genome(c.file("ragged.fa", ">c\nACGTACGT\nAC\nACGTACGT\n")).fetch("c", 0, 10),
     VariantError, ["ragged.fa", "lines of equal width", "seqkit seq -w 60"]),
    ("genome: gzip, not bgzip", lambda c: Genome(c.file("g.fa.gz", _gz(">c\nACGT\n"))), VariantError,
     ["g.fa.gz", "compressed FASTA", "bgzip"]),
    ("genome: region header disagrees", lambda c: Genome(c.file("region.fa", ">chr2:11-30\nACGT\n")), VariantError,
     ["region.fa", "'chr2:11-30'", "spans 20 bases but holds 4", "starts="]),
    # training configs
    ("config: lr = 0", lambda c: _config(learning_rate=0.0), ValueError, ["TrainConfig.learning_rate=0.0", "> 0"]),
    ("config: lr < 0", lambda c: _config(learning_rate=-1e-3), ValueError, ["learning_rate=-0.001", "e.g. 5e-4"]),
    ("config: lr NaN", lambda c: _config(learning_rate=float("nan")), ValueError, ["learning_rate=nan", "> 0"]),
    ("config: lr as text (YAML '1e-3')", lambda c: _config(learning_rate="1e-3"), ValueError,
     ["learning_rate='1e-3'", "must be a number", "float()"]),
    ("config: token budget 0", lambda c: _config(token_budget=0), ValueError,
     ["TrainConfig.token_budget=0", "integer >= 1"]),
    ("config: budget as float", lambda c: _config(token_budget=2048.0), ValueError,
     ["token_budget=2048.0", "integer >= 1"]),
    ("config: floor above budget", lambda c: _config(min_token_budget=4096), ValueError,
     ["min_token_budget=4096", "token_budget=2048", "lower it"]),
    ("config: warm-up too long", lambda c: _config(warmup_steps=10), ValueError,
     ["warmup_steps=10", "< max_steps=10"]),
    ("config: unknown schedule", lambda c: _config(schedule="step"), ValueError,
     ["TrainConfig.schedule='step'", "use one of"]),
    ("train: example longer than the token budget", _train_too_long, ValueError,
     ["example 2 has 102 tokens", "token_budget=64", "Raise token_budget to at least 102", "crop long chains"]),
    ("batches: example longer than the budget", lambda c: data.token_budget_batches([10, 3000], 2048), ValueError,
     ["example 1 has 3000 tokens", "token_budget=2048", "Raise token_budget"]),
    ("lora: unknown target modules", lambda c: lora.esm2_lora_config(target_modules=["q_proj", "v_proj"]),
     ValueError, ["['q_proj', 'v_proj']", "query, key, value, dense", "belong to other models"]),
    ("lora: one unknown target", lambda c: lora.esm2_lora_config(target_modules="qkv"), ValueError,
     ["['qkv']", "query, key, value, dense"]),
    ("lora: rank 0", lambda c: lora.esm2_lora_config(r=0), ValueError, ["r=0", "positive integer (e.g. 8)"]),
    ("lora: dropout 1", lambda c: lora.esm2_lora_config(dropout=1.0), ValueError, ["dropout=1.0", "0 <= dropout < 1"]),
    ("lora: method without config", lambda c: lora.prepare_model(_tiny_model(), "lora"), ValueError,
     ["method='lora'", "lora_config=esm2_lora_config(...)"]),
    ("lora: unknown method", lambda c: lora.prepare_model(_tiny_model(), "qlora"), ValueError,
     ["'qlora'", "('head', 'lora', 'full')"]),
    # models and checkpoints
    ("model: hub id offline", lambda c: models.load_esm2("facebook/esm2_t6_8M_UR50D"), OSError,
     ["'facebook/esm2_t6_8M_UR50D'", "Hub is unreachable", "hf download", "pass the folder", "'tiny'"]),
    ("model: misspelt hub id", lambda c: models.load_esm2("facebook/esm2_t6_8M_UR50"), OSError,
     ["'facebook/esm2_t6_8M_UR50'", "a typo", "pass the folder"]),
    ("model: local folder that does not exist", lambda c: models.load_esm2("./my_esm2"), OSError,
     ["'./my_esm2'", "no such folder", "check the path", "config.json"]),
    ("model: empty local folder", _empty_dir, OSError, ["empty-model-folder", "config.json", "pass the folder"]),
    ("tokenizer: folder that does not exist", lambda c: models.load_tokenizer("./esm_tokenizer"), OSError,
     ["'./esm_tokenizer'", "vocab.txt", "Pass a local folder, or None"]),
    ("model: unknown task", lambda c: models.load_esm2("tiny", task="tokens", num_labels=3), ValueError,
     ["unknown task 'tokens'", "'token' (per-residue labels)"]),
    ("model: head without num_labels", lambda c: models.load_esm2("tiny", task="token"), ValueError,
     ["task='token' needs num_labels >= 1", "num_labels=3 for H/E/C"]),
    ("model: unknown size", lambda c: models.esm2_config("7B"), ValueError, ["'7B'", "use one of ['8M'"]),
    ("scoring: model without MLM head", lambda c: zero_shot.score_substitutions(
        c.token_model, c.tok, WT, ["K2A"], progress=False), ValueError,
     ["EsmForTokenClassification", "task='mlm'"]),
    ("dna model: hub id offline", lambda c: __import__("bioft_tutorial.variants", fromlist=["HFCausalLM"]).HFCausalLM(
        "someone/dna-model"), OSError, ["'someone/dna-model'", "HF_HUB_OFFLINE=1", "pass a local folder"]),
    ("checkpoint: incomplete folder", lambda c: checkpoint.load_checkpoint(c.root / "no-checkpoint"),
     FileNotFoundError, ["tensors.safetensors is missing", "not a complete checkpoint"]),
    ("checkpoint: pickle instead of safetensors", _pickle_checkpoint, ValueError,
     ["ckpt-pickle/tensors.safetensors", "not a valid safetensors file", "never unpickled",
      "Resume from another checkpoint"]),
    ("checkpoint: garbled latest.json", _garbled_latest, ValueError,
     ["latest.json is not valid JSON", "delete it"]),
    ("checkpoint: resumed with another method", _wrong_model_resume, ValueError,
     ["trainable tensors", "resume with the same model and method"]),
]

PARAMS = [case if isinstance(case, type(pytest.param(0))) else pytest.param(*case, id=case[0]) for case in CASES]
@pytest.mark.parametrize("name, call, expected, fragments", PARAMS)
def test_bad_input_gets_a_clear_error(ctx, name, call, expected, fragments):
    with pytest.raises(Exception) as info:
        call(ctx)
    err = info.value
    assert type(err) is expected, f"{name}: {type(err).__module__}.{type(err).__name__}: {err}"
    frame = traceback.extract_tb(err.__traceback__)[-1]
    assert "bioft_tutorial" in Path(frame.filename).parts, (
        f"{name}: raised inside {frame.filename}:{frame.lineno}, not by the package")
    message = str(err)
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{name}: {missing} not in {message!r}"


def test_the_table_is_big_enough():
    """Issue 7 asks for at least 40 bad inputs; every topic it lists has a row."""
    names = [p.id for p in PARAMS]
    assert len(names) >= 40 and len(set(names)) == len(names)
    for topic in ("score:", "embed:", "ss examples:", "regression:", "predict:", "mutant:", "fasta:", "labels:",
                  "dms csv:", "variants csv:", "vcf:", "genome:", "config:", "lora:", "model:"):
        assert any(n.startswith(topic) for n in names), topic


# --- documented handling of inputs that are not errors ---------------------------------------------------------
def test_lower_case_is_upper_cased_by_the_data_builders_and_refused_by_zero_shot(ctx):
    vocab = ctx.tok.get_vocab()
    assert data.encode_protein("mktay", vocab) == data.encode_protein("MKTAY", vocab)
    assert _ss(ctx, "mkt")[0]["input_ids"] == _ss(ctx, "MKT")[0]["input_ids"]
    with pytest.raises(ValueError, match="upper-case"):
        _score(ctx, "mktay", ["K2A"])  # zero_shot: refused with a hint (seq.upper()), never guessed


@pytest.mark.parametrize("letter", list("BZUOX"))
def test_rare_letters_are_ordinary_tokens(ctx, letter):
    """B, Z, U, O and X are in ESM-2's vocabulary: accepted everywhere a sequence goes in, each its own token;
    as a *mutant* letter only the 20 amino acids are allowed."""
    seq = "MK" + letter + "AY"
    vocab = ctx.tok.get_vocab()
    assert data.encode_protein(seq, vocab)[2] == vocab[letter] != ctx.tok.unk_token_id
    assert np.isfinite(_score(ctx, seq, ["K2A"])).all()
    assert _embed(ctx, [seq]).shape == (1, ctx.mlm.config.hidden_size)
    assert len(_predict(ctx, {"q": seq})["q"]) == len(seq)
    with pytest.raises(ValueError, match="not one of the 20 amino acids"):
        zero_shot.parse_mutant(f"K2{letter}", seq)


def test_long_sequences_are_windowed_or_cropped_never_truncated(ctx):
    long = (WT * 40)[:1300]  # longer than the 1,022-residue limit
    scores = _score(ctx, long, [f"{long[1299]}1300A", "K2A"])  # windowed (zero_shot.window_start)
    assert np.isfinite(scores).all()
    crops = _ss(ctx, long)
    assert len(crops) == 2 and sum(sum(y != -100 for y in c["labels"]) for c in crops) == 1300  # each residue once
    assert len(_predict(ctx, {"long": long})["long"]) == 1300  # stitched back whole
    with pytest.raises(ValueError, match="1300 residues"):
        _embed(ctx, [long])  # embeddings: an error, never a silent crop
    with pytest.raises(DataError, match="1300 residues"):
        _regression(ctx, [long], [0.0])  # one value per chain cannot be split: an error


def test_multi_allelic_rows_are_split_and_scored(ctx):
    out = _vcf_score(ctx, "17\t41276135\trs1\tT\tG,C\t.\t.\t.\n")
    assert list(out["alt"]) == ["G", "C"] and list(out["allele"]) == [1, 2] and list(out.index) == [3, 3]
    assert out["delta_ll"].notna().all()


# --- multi-allelic INFO: split only where certain, otherwise kept whole with a warning --------------------------
def _info_of(caplog, header: str, info: str, alts: str = "G,C,A") -> list[str]:
    text = "##fileformat=VCFv4.2\n" + header + VCF_HEAD.split("\n", 1)[1] + f"17\t5\t.\tT\t{alts}\t.\t.\t{info}\n"
    with caplog.at_level("WARNING", logger="bioft_tutorial.variants.vcf"):
        return parse_vcf(text.splitlines(True), source="mine.vcf")["info"].tolist()


def test_info_without_number_a_is_split_when_its_counts_match_the_alts(caplog):
    assert _info_of(caplog, "", "CLS=FUNC,LOF,INT;DB") == ["CLS=FUNC;DB", "CLS=LOF;DB", "CLS=INT;DB"]
    assert "INFO field CLS (no ##INFO header line) has one value per ALT" in caplog.text
    assert "first on line 3" in caplog.text and "Number=A" in caplog.text


def test_info_with_number_a_but_other_counts_is_kept_whole_with_a_warning(caplog):
    header = '##INFO=<ID=CLS,Number=A,Type=String,Description="class, per ALT">\n'
    assert _info_of(caplog, header, "CLS=FUNC,LOF") == ["CLS=FUNC,LOF"] * 3
    assert "INFO field CLS (Number=A)" in caplog.text and "kept whole on every ALT row" in caplog.text


def test_info_without_number_a_and_other_counts_is_kept_whole_with_a_warning(caplog):
    assert _info_of(caplog, "", "CSQ=a,b,c,d") == ["CSQ=a,b,c,d"] * 3
    assert "INFO field CSQ (no ##INFO header line)" in caplog.text and "bcftools norm -m -any" in caplog.text


def test_info_that_the_header_declares_whole_stays_whole_silently(caplog):
    header = ('##INFO=<ID=AF,Number=A,Type=Float,Description="x">\n'
              '##INFO=<ID=XY,Number=2,Type=Integer,Description="two values, whatever the ALTs">\n')
    assert _info_of(caplog, header, "AF=0.1,0.2;XY=3,4;N=7", alts="G,C") == ["AF=0.1;XY=3,4;N=7", "AF=0.2;XY=3,4;N=7"]
    assert caplog.text == ""
