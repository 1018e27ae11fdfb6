"""benchmarks/evo2_finetune.py (chapter 6 on a GPU): the smoke run on the CPU writes every case, with its baseline."""
from __future__ import annotations

import json

import pytest

from benchmarks import COMMANDS, evo2_finetune
from bioft_tutorial import results


@pytest.mark.slow
def test_smoke_run_measures_every_case_against_its_baseline(tmp_path):
    assert COMMANDS["evo2-finetune"] == "benchmarks.evo2_finetune:main"
    records = evo2_finetune.main(["--smoke", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("evo2-finetune-smoke-*.json")
    stored = json.loads(path.read_text())["results"]
    assert [r["case"] for r in stored] == [r["case"] for r in records] == [
        "evo2 forward b1 (baseline)", "embed_windows b8", "evo2 forward b1 (baseline)", "embed_windows b8",
        "embed_variants", "frozen forward+backward (floor)", "LoRA r=8 (train.train)",
        "LoRA r=8 (train.train, no checkpointing)"]
    for r in stored:
        assert "error" not in r, r
        assert r["smoke"] and r["gpu"] == "cpu" and r["window"] == 128
    ours = [r for r in stored if r["case"].startswith("embed_")]
    assert all(r["vs_baseline"] == r["windows_per_s"] / r["baseline_windows_per_s"] for r in ours)
    lora_runs = [r for r in stored if r["case"].startswith("LoRA")]
    assert all(r["tokens_per_s"] > 0 and r["vs_floor"] > 0 and r["trainable_params"] > 0 for r in lora_runs)
    assert {r["checkpointing"] for r in lora_runs} == {True, False}
    assert results.measured("evo2-finetune", tmp_path).empty  # smoke records are never shown as GPU figures


def test_unknown_case_is_refused():
    with pytest.raises(SystemExit, match="unknown case"):
        evo2_finetune.main(["--smoke", "--cases", "embeddings,speed"])
