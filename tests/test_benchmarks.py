"""The benchmarks beside the package: smoke runs of every command on the CPU, their records, their helpers."""
from __future__ import annotations

import importlib
import json
import os

from pathlib import Path

import pandas as pd
import pytest
import torch

from benchmarks import COMMANDS, harness, main
from benchmarks import notebooks as nb_bench
from benchmarks import train as train_bench
from bioft_tutorial import results

TRAIN_FIELDS = ("gpu", "torch", "transformers", "peft", "date", "case", "model", "method", "runner", "setting",
                "tokens_per_s", "step_s", "step_times_ms", "padding_fraction", "peak_mem_gib", "mfu",
                "flops_per_token", "trainable_params", "data", "smoke")
SMOKE_CASES = "650M-fast,650M-hf-trainer,650M-floor-fast,650M-bf16-padded,650M-head-fast"


def test_every_command_is_registered_with_a_main():
    assert set(COMMANDS) == {"train", "train-dist", "zero-shot", "evo2", "evo2-finetune", "notebooks",
                             "fp8-numerics"}
    for target in COMMANDS.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))
    with pytest.raises(SystemExit, match="unknown benchmark command 'loop-vs-trainer'"):
        main(["loop-vs-trainer"])


@pytest.fixture(scope="module")
def train_smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return train_bench.main(["--smoke", "--cases", SMOKE_CASES, "--out", str(out)]), out


@pytest.mark.slow
def test_train_smoke_runs_train_train_and_the_trainer_baseline(train_smoke):
    records, out = train_smoke
    (path,) = out.glob("train-smoke-*.json")  # one file per run, rewritten after each case
    stored = json.loads(path.read_text())["results"]
    assert [r["case"] for r in stored] == SMOKE_CASES.split(",")
    for r in stored:
        assert "error" not in r, r
        assert all(k in r for k in TRAIN_FIELDS), sorted(set(TRAIN_FIELDS) - set(r))
        assert r["smoke"] is True and r["model"] == "tiny" and r["tokens_per_s"] > 0
    by_case = {r["case"]: r for r in stored}
    trainer = by_case["650M-hf-trainer"]
    assert trainer["runner"] == "transformers.Trainer" and "vs_trainer" not in trainer
    fast = by_case["650M-fast"]
    assert fast["vs_trainer"] == pytest.approx(fast["tokens_per_s"] / trainer["tokens_per_s"], rel=1e-3)
    assert fast["compile"] == "aot_eager" and fast["dynamo_graphs"] > 0 and len(fast["step_times_ms"]) == 2
    assert fast["attention_kernel"] == "sdpa" and by_case["650M-bf16-padded"]["attention_kernel"] is None  # CPU
    head = by_case["650M-head-fast"]
    assert head["trainable_params"] == 64 * 3 + 3  # the classifier of the tiny model
    assert head["dynamo_graphs"] > 0  # the process's second compiled model is compiled too, not run eagerly
    floor = by_case["650M-floor-fast"]  # the same head, with the backward pass through every layer
    assert floor["trainable_params"] == head["trainable_params"] and floor["dynamo_graphs"] > 0
    assert results.measured("train", out).empty  # smoke records are never shown as GPU results


def test_steady_steps_against_a_hand_computation():
    history = pd.DataFrame({"step": [1, 2, 3, 4], "tokens": [100, 200, 300, 100], "computed_tokens": [200, 200, 400, 100],
                            "step_s": [10.0, 1.0, 2.0, 1.0], "tokens_per_s": [10.0, 200.0, 150.0, 100.0],
                            "loss": [2.0, 1.5, 1.2, 1.0]})
    out = harness.steady_steps(history, warmup=1)
    assert out["tokens_per_s"] == pytest.approx(600 / 4.0) and out["tokens_per_s_median"] == pytest.approx(150.0)
    assert out["step_s"] == 1.0 and out["step_times_ms"] == [1000.0, 2000.0, 1000.0]
    assert out["padding_fraction"] == pytest.approx(1 - 600 / 700, abs=1e-4)  # stored to 4 decimals
    assert (out["first_step_s"], out["loss_first"], out["loss_last"]) == (10.0, 2.0, 1.0)


def test_select_cases_by_glob_and_group():
    assert [c.name for c in train_bench.select_cases("3B-*,650M-full-fast")] == ["3B-fast", "3B-fa4-fast",
                                                                                   "3B-fp8-fast", "650M-full-fast",
                                                                                   "3B-fast-4k", "3B-peft-fast",
                                                                                   "3B-bf16-packed",
                                                                                   "3B-peft-bf16-packed"]
    assert {c.name for c in train_bench.select_cases("checkpointing")} == {
        "3B-peft-fast", "3B-bf16-packed", "3B-peft-bf16-packed"}
    assert {c.group for c in train_bench.select_cases("family")} == {"family"}
    assert len(train_bench.select_cases("all")) == len(train_bench.CASES) == len({c.name for c in train_bench.CASES})
    with pytest.raises(SystemExit, match="no case matches"):
        train_bench.select_cases("70B-*")


def test_gpu_commands_refuse_to_run_on_a_cpu_without_smoke(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        train_bench.main(["--cases", "650M-fast"])


@pytest.mark.slow
def test_profile_writes_tables_not_results(tmp_path):
    assert train_bench.main(["--smoke", "--profile", "650M-bf16-padded", "--profile-steps", "1",
                             "--out", str(tmp_path)]) == []
    (path,) = tmp_path.glob("train-profile-650M-bf16-padded-*.txt")
    assert "Self CPU" in path.read_text() and not list(tmp_path.glob("*.json"))


@pytest.fixture(scope="module")
def dist_smoke(tmp_path_factory):
    return {r["case"]: r for r in importlib.import_module("benchmarks.train_dist").main(
        ["--smoke", "--nproc", "2", "--out", str(tmp_path_factory.mktemp("dist"))])}


@pytest.mark.slow
def test_train_dist_two_gloo_processes_give_the_curve_of_one(dist_smoke):
    ddp = dist_smoke["650M-ddp"]
    assert "error" not in ddp, ddp.get("error")
    assert ddp["world_size"] == 2 and len(ddp["loss_curve"]) == 3 and ddp["loss_curve"][0] != ddp["loss_curve"][-1]
    assert ddp["loss_curve"] == pytest.approx(ddp["loss_curve_single"], abs=1e-5)
    assert ddp["scaling_efficiency"] == pytest.approx(ddp["tokens_per_s"] / ddp["single_gpu_tokens_per_s"], rel=1e-2)


@pytest.mark.slow
def test_train_dist_fsdp2_gives_the_curve_of_one(dist_smoke):
    fsdp = dist_smoke["3B-fsdp2"]
    assert "error" not in fsdp and fsdp["loss_curve"] == pytest.approx(fsdp["loss_curve_single"], abs=1e-5)


@pytest.mark.slow
def test_zero_shot_smoke(tmp_path):
    records = importlib.import_module("benchmarks.zero_shot").main(["--smoke", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("zero-shot-smoke-*.json")
    stored = json.loads(path.read_text())["results"]
    assert [r["case"] for r in stored] == [r["case"] for r in records] == [
        "wt-marginal", "masked-marginal", "naive masked (baseline)"]
    assert all("error" not in r and r["seconds_median"] > 0 and r["gpu"] == "cpu" for r in stored)
    assert stored[1]["forward_rows"] == 40 and stored[2]["extrapolated"] is True


@pytest.mark.slow
def test_evo2_smoke_scores_with_score_variants(tmp_path):
    records = importlib.import_module("benchmarks.evo2").main(["--smoke", "--out", str(tmp_path)])
    assert len(records) == 5 and all("error" not in r and r["seq_per_s"] > 0 for r in records)
    package = [r for r in records if r["case"].startswith("score_variants")]
    assert all(r["extrapolated"] and r["brca1_minutes_extrapolated"] > 0 for r in package)
    assert package[0]["delta_ll_max_abs_diff_full_vs_shared"] < 1e-4  # fp32 on the CPU: the same numbers
    assert records[0]["vs_baseline"] == pytest.approx(1.0)


def test_evo2_profile_writes_where_the_gpu_waits(tmp_path):
    assert importlib.import_module("benchmarks.evo2").main(["--smoke", "--profile", "--out", str(tmp_path)]) == []
    (path,) = tmp_path.glob("evo2-profile-smoke-*.txt")
    text = path.read_text()
    assert text.startswith("# score_variants (shared prefix)") and "# GPU idle over the profiled region" in text


@pytest.mark.slow
def test_notebooks_smoke_executes_and_records(tmp_path):
    (record,) = nb_bench.main(["--smoke", "--out", str(tmp_path), "--work-dir", str(tmp_path / "work")])
    assert "error" not in record, record.get("error")
    assert record["notebook"] == "00_environment" and record["runtime_s"] > 0 and record["profile"] == "smoke"
    assert record["started"].endswith("Z") and record["started"][:4].isdigit()  # UTC, for what ran beside it
    assert record["disk_written_gib"] >= 0 and record["peak_gpu_mem_gib"] is None  # no GPU here
    assert (tmp_path / "work" / "executed" / "00_environment.ipynb").exists()
    assert not (tmp_path / "work" / "esm2-tiny-random").exists()  # chapter 0 loads no ESM-2: none written
    assert list(tmp_path.glob("notebooks-smoke-*.json"))


def test_notebook_parameters_point_at_random_models_and_own_folders(tmp_path):
    params = nb_bench.parameters_for(nb_bench.ROOT / "notebooks" / "03_gpu_training.ipynb", "/m/esm", tmp_path)
    assert params["model_name"] == "/m/esm" and params["output_root"] == str(tmp_path)
    assert params["max_steps"] == 100 and params["eval_every"] == 50
    evo2 = nb_bench.parameters_for(nb_bench.ROOT / "notebooks" / "04_evo2_variant_scoring.ipynb", "/m", tmp_path)
    assert evo2["model_name"] == "evo2_7b:random" and evo2["cache_dir"] == str(tmp_path / "cache")
    assert nb_bench.parameters_for(nb_bench.ROOT / "notebooks" / "00_environment.ipynb", "/m", tmp_path) == {}


def test_parameter_defaults_read_tuple_assignments(tmp_path):
    import nbformat

    cell = nbformat.v4.new_code_cell('model_name, device = profile.esm_model, "cuda"  # two at once\nsteps = 3',
                                     metadata={"tags": ["parameters"]})
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / "07_x.ipynb")
    defaults = nb_bench.parameter_defaults(tmp_path / "07_x.ipynb")
    assert defaults == {"model_name": "profile.esm_model", "device": '"cuda"', "steps": "3"}
    assert nb_bench.parameters_for(tmp_path / "07_x.ipynb", "/m/esm", tmp_path) == {"model_name": "/m/esm"}


def test_notebooks_are_chosen_in_the_order_asked():
    names = [p.stem for p in nb_bench.select("03,00_env*,01", smoke=False)]
    assert names == ["03_gpu_training", "00_environment", "01_esm2_loading"]
    assert [p.stem for p in nb_bench.select("*", smoke=True)] == list(nb_bench.SMOKE_NOTEBOOKS)
    with pytest.raises(SystemExit, match="no notebook matches"):
        nb_bench.select("99", smoke=False)


def test_training_runs_read_from_histories(tmp_path):
    speeds = [1.0, 2.0, 3.0] + [100.0, 300.0, 200.0] * 3  # 3 warm-up steps, then 9 steady ones
    run = tmp_path / "ss-lora"
    run.mkdir()
    rows = [{"step": i + 1, "tokens": 1000, "tokens_per_s": s} for i, s in enumerate(speeds)]
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (found,) = nb_bench.training_runs(tmp_path)
    assert found == {"run": "ss-lora", "steps": 12, "warmup": 3, "tokens_per_s": 200.0,
                     "step_s": pytest.approx(1000 / 200.0)}
    assert nb_bench.folder_bytes(tmp_path) == (run / "history.jsonl").stat().st_size
    assert nb_bench.folder_bytes(tmp_path / "missing") == 0


def test_disk_counter_reads_proc_diskstats():
    sectors, disk = nb_bench.disk_sectors_written()
    assert isinstance(sectors, int) and sectors >= 0 and disk


def test_results_file_is_rewritten_in_place(tmp_path):
    out = harness.ResultsFile("train", tmp_path, smoke=False)
    out.write([{"case": "a"}])
    path = out.write([{"case": "a"}, {"case": "b"}])
    saved = json.loads(path.read_text())
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and path.name.startswith("train-2")
    assert [r["case"] for r in saved["results"]] == ["a", "b"] and saved["results"][0]["gpu"] == saved["env"]["gpu"]
    assert harness.peak_tflops("NVIDIA H200") == 989.4 and harness.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert harness.peak_tflops("cpu") is None


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="Linux per-process I/O accounting")
def test_disk_written_counts_our_children_not_other_processes(tmp_path):
    import subprocess
    import sys

    if nb_bench.process_bytes_written() == 0:
        pytest.skip("this kernel does not account writes per process")
    write = ("import os, sys; f = open(sys.argv[1], 'wb'); f.write(os.urandom(8 << 20)); f.flush(); "
             "os.fsync(f.fileno())")
    monitor = nb_bench.Monitor(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", write + "; import time; time.sleep(30)", str(tmp_path / "other")])
    try:
        subprocess.run([sys.executable, "-c", write, str(tmp_path / "ours")], check=True)
        ours = monitor.bytes_written()
        assert other.pid in nb_bench.descendants(os.getpid())
    finally:
        other.kill()
        other.wait()
    assert 8 << 20 <= ours < 12 << 20, ours  # the reaped child's 8 MiB; the one still running is not counted yet


@pytest.mark.slow
def test_notebooks_stopped_by_sigterm_still_records_the_notebook(tmp_path, monkeypatch):
    import signal
    import threading

    monkeypatch.setattr(nb_bench, "SIGNALLED", [])
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))  # a caller's time limit, mid-notebook
    timer.start()
    try:
        with pytest.raises(SystemExit, match="stopped by signal"):
            nb_bench.main(["--smoke", "--out", str(tmp_path), "--work-dir", str(tmp_path / "work")])
    finally:
        timer.cancel()
    (path,) = tmp_path.glob("notebooks-smoke-*.json")
    (record,) = json.loads(path.read_text())["results"]
    assert record["notebook"] == "00_environment" and "stopped by signal 15" in record["error"]
    assert record["runtime_s"] < 60


def test_notebooks_param_is_read_as_yaml_and_checked():
    args = nb_bench.parse_args(["--param", "compile_mode=reduce-overhead", "-p", "max_steps=10", "-p", "methods=[lora]"])
    assert args.overrides == {"compile_mode": "reduce-overhead", "max_steps": 10, "methods": ["lora"]}
    with pytest.raises(SystemExit):
        nb_bench.parse_args(["--param", "max_steps"])  # no value
