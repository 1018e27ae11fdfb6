"""The command line, end to end in the smoke profile: every command and Python block of book/your_own_data.md,
exit codes and messages, a token-task run, and a score-variants run killed with SIGKILL and resumed."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bioft_tutorial import cli, data, lora, models
from bioft_tutorial.variants import read_findlay_xlsx

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "book" / "your_own_data.md"
BLOCK = re.compile(r"^```(python|console)\n(.*?)^```", re.S | re.M)


def _bioft(*args: str, **kwargs) -> subprocess.Popen:
    """``bioft ARGS`` as a separate process (the installed entry point runs the same ``cli.main``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "bioft_tutorial.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """Run the page top to bottom in a fresh folder: Python blocks in one namespace, each ``$ bioft`` line."""
    folder = tmp_path_factory.mktemp("your-own-data")
    namespace: dict = {}
    previous = os.getcwd()
    os.chdir(folder)
    try:
        for kind, text in BLOCK.findall(PAGE.read_text()):
            if kind == "python":
                exec(compile(text, str(PAGE), "exec"), namespace)  # noqa: S102 (the page's own code)
                continue
            for line in text.splitlines():
                assert line.startswith("$ bioft "), line
                assert cli.main(shlex.split(line)[2:]) == 0, line
    finally:
        os.chdir(previous)
    return folder, namespace


@pytest.mark.slow
def test_score_mutants_keeps_rows_and_scores_the_wild_type_zero(page):
    folder, ns = page
    out = pd.read_csv(folder / "mutant_scores.csv", keep_default_na=False)
    assert out["mutant"].tolist() == pd.read_csv(folder / "mutants.csv")["mutant"].tolist()
    assert out["row"].tolist() == [2, 3, 4, 5, 6] and out["zero_shot_score"].iloc[0] == 0
    assert np.allclose(out["zero_shot_score"], ns["scores"], atol=1e-6)  # the page's Python call
    assert out["n_mutations"].tolist() == [0, 1, 1, 2, 3] and "mutated_sequence" not in out.columns


@pytest.mark.slow
def test_score_variants_gives_one_row_per_alt_with_its_own_info(page):
    folder, ns = page
    out = pd.read_csv(folder / "variant_scores.csv")
    vcf_lines = (folder / "brca1.vcf").read_text().splitlines()
    expected = [(n, alt, cls) for n, line in enumerate(vcf_lines, start=1) if not line.startswith("#")
                for alt, cls in zip(line.split("\t")[4].split(","), line.split("CLS=")[1].split(","))]
    assert list(zip(out["line"], out["alt"], out["CLS"])) == expected
    assert np.allclose(out["delta_ll"], out["alt_ll"] - out["ref_ll"])
    assert np.array_equal(out["delta_ll"].to_numpy(), ns["scored"]["delta_ll"].to_numpy())


@pytest.mark.slow
def test_finetune_writes_the_adapter_and_predict_undoes_the_scaling(page):
    folder, _ = page
    run = folder / "run"
    meta = json.loads((run / "bioft.json").read_text())
    train = pd.read_csv(folder / "train.csv")
    assert (run / "best" / "adapter" / "adapter_config.json").is_file() and meta["adapter"] == "best/adapter"
    assert meta["center"] == pytest.approx(train["target"].mean()) and meta["scale"] == pytest.approx(
        train["target"].std())
    assert pd.read_csv(run / "history.csv")["step"].tolist() == [1, 2, 3, 4]
    predictions = pd.read_csv(folder / "predictions.csv")
    fasta = data.read_fasta(folder / "new.fasta")
    assert predictions["id"].tolist() == list(fasta)
    base, tokenizer = models.load_esm2("tiny", task="sequence", num_labels=1)
    model = lora.load_adapter(base, str(run / "best" / "adapter")).eval()
    for value, seq in zip(predictions["prediction"], fasta.values()):  # one unbatched forward pass each
        with torch.no_grad():
            raw = model(**tokenizer(seq, return_tensors="pt")).logits.item()
        assert value == pytest.approx(meta["center"] + meta["scale"] * raw, abs=1e-5)


@pytest.mark.slow
def test_token_task_predicts_one_letter_per_residue(tmp_path):
    flip = data.load_flip_secondary_structure("train", max_chains=200, seed=0)
    flip = flip[flip["length"] < 120].head(12)
    flip[:8].to_csv(tmp_path / "train.csv", index=False)
    flip[8:].drop(columns="mask").to_csv(tmp_path / "val.csv", index=False)  # no mask: every residue labelled
    queries = dict(zip(flip["id"][8:], flip["sequence"][8:]))
    data.write_fasta(queries, tmp_path / "q.fasta")
    assert cli.main(["finetune", "--train", str(tmp_path / "train.csv"), "--validation", str(tmp_path / "val.csv"),
                     "--task", "token", "--model", "tiny", "--max-steps", "2", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "bioft.json").read_text())["classes"] == "HEC"
    assert cli.main(["predict", "--adapter", str(tmp_path / "run" / "best" / "adapter"), "--sequences",
                     str(tmp_path / "q.fasta"), "--out", str(tmp_path / "p.parquet")]) == 0
    out = pd.read_parquet(tmp_path / "p.parquet")
    assert out["id"].tolist() == list(queries)
    assert [len(p) for p in out["prediction"]] == [len(s) for s in queries.values()]
    assert set("".join(out["prediction"])) <= set("HEC")


# --- exit codes and messages ---------------------------------------------------------------------------------
def test_help_shows_an_example_for_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for command in ("score-mutants", "score-variants", "finetune", "predict"):
        assert f"bioft {command} --" in text
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert "example:" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["score-mutants", "--wt", "wt.fasta"])
    assert exit_.value.code == 2 and "required: --out, --mutants, --model" in capsys.readouterr().err


@pytest.mark.parametrize("args, fragments", [
    (["score-mutants", "--wt", "wt.fasta", "--mutants", "bad.csv", "--model", "tiny", "--out", "s.csv"],
     ["bioft score-mutants: error: bad.csv, row 3: mutant 'H23C'", "Try offset=-1"]),
    (["score-mutants", "--wt", "two.fasta", "--mutants", "bad.csv", "--model", "tiny", "--out", "s.csv"],
     ["two.fasta: 2 FASTA records", "one record, the wild-type protein"]),
    (["score-variants", "--variants", "multi.csv", "--reference", "ref.fa", "--model", "kmer:6", "--out", "v.csv"],
     ["multi.csv: 1 of 1 variants", "multi_allelic x1: line 2", "explode('alt')"]),
    (["score-variants", "--variants", "one.csv", "--reference", "ref.fa", "--model", "kmer:x", "--out", "v.csv"],
     ["--model 'kmer:x': k must be a whole number"]),
    (["score-variants", "--variants", "multi.csv", "--reference", "ref.fa", "--model", "kmer", "--out", "v.xlsx"],
     ["--out v.xlsx: unknown table format '.xlsx'"]),
    (["finetune", "--train", "bad.csv", "--validation", "bad.csv", "--task", "sequence", "--model", "tiny",
      "--out", "run"], ["bad.csv: no column ['id', 'sequence', 'target']", "rename the columns"]),
    (["finetune", "--train", "text.csv", "--validation", "text.csv", "--task", "sequence", "--model", "tiny",
      "--out", "run"], ["text.csv, row 3, column 'target': 'high' is not a finite number"]),
    (["finetune", "--train", "flat.csv", "--validation", "text.csv", "--task", "sequence", "--model", "tiny",
      "--out", "run"], ["flat.csv: the 2 training targets do not vary (all 0.5)"]),
    (["predict", "--adapter", "nowhere", "--sequences", "wt.fasta", "--out", "p.csv"],
     ["nowhere: no bioft.json", "--out folder of 'bioft finetune'"]),
])
def test_input_errors_exit_1_with_our_message(tmp_path, monkeypatch, capsys, args, fragments):
    monkeypatch.chdir(tmp_path)
    wt = data.blat_wild_type()
    data.write_fasta({"wt": wt}, "wt.fasta")
    data.write_fasta({"a": wt, "b": wt}, "two.fasta")
    Path("bad.csv").write_text("mutant\nWT\nH23C\n")
    Path("multi.csv").write_text('chrom,pos,ref,alt\nc,5,A,"G,C"\n')
    Path("one.csv").write_text("chrom,pos,ref,alt\nc,5,A,G\n")
    Path("text.csv").write_text("id,sequence,target\na,MKT,0.5\nb,MKA,high\nc,MKW,0.1\n")
    Path("flat.csv").write_text("id,sequence,target\na,MKT,0.5\nb,MKA,0.5\n")
    Path("ref.fa").write_text(">c\n" + "ACGT" * 50 + "\n")
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert all(f in err for f in fragments), err


def test_an_input_error_prints_no_traceback(tmp_path):
    process = _bioft("score-mutants", "--wt", "missing.fasta", "--mutants", "m.csv", "--model", "tiny", "--out",
                     "s.csv", cwd=tmp_path)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines() == ["bioft score-mutants: error: missing.fasta: no such file; check the path "
                                        f"(relative to {tmp_path})"]


def test_the_entry_point_is_declared():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["bioft"] == "bioft_tutorial.cli:main"


# --- resumable variant scoring ---------------------------------------------------------------------------------
def _variant_files(folder: Path, positions: int = 12) -> None:
    (folder / "ref.fa").write_bytes(data.asset_path("brca1", "GRCh37_chr17_BRCA1_region.fa").read_bytes())
    snvs = read_findlay_xlsx(data.asset_path("brca1", "41586_2018_461_MOESM3_ESM.xlsx"))
    snvs[snvs["pos"].isin(snvs["pos"].unique()[:positions])][["chrom", "pos", "ref", "alt"]].to_csv(
        folder / "snvs.csv", index=False)


@pytest.mark.slow
def test_score_variants_killed_and_rerun_gives_the_uninterrupted_output(tmp_path, monkeypatch):
    _variant_files(tmp_path)
    args = ["score-variants", "--variants", "snvs.csv", "--reference", "ref.fa", "--model", "tiny", "--window",
            "256", "--batch-size", "1"]
    first = _bioft(*args, "--cache", "cache", "--out", "resumed.csv", cwd=tmp_path)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "cache").rglob("*.json"))) < 8 and first.poll() is None:
        assert time.monotonic() < deadline, "no window was cached in 120 s"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    cached = len(list((tmp_path / "cache").rglob("*.json")))
    assert first.returncode == -signal.SIGKILL and not (tmp_path / "resumed.csv").exists()
    monkeypatch.chdir(tmp_path)  # the rerun and the uninterrupted run: in this process, same code
    assert cli.main([*args, "--cache", "cache", "--out", "resumed.csv"]) == 0
    assert cli.main([*args, "--out", "whole.csv"]) == 0
    resumed, uninterrupted = pd.read_csv(tmp_path / "resumed.csv"), pd.read_csv(tmp_path / "whole.csv")
    assert resumed.equals(uninterrupted) and len(resumed) == len(pd.read_csv(tmp_path / "snvs.csv"))
    assert 8 <= cached < len(list((tmp_path / "cache").rglob("*.json")))  # killed part-way, then completed
