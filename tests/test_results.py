"""bioft_tutorial.results: which stored records are shown, and the tables built from them."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from bioft_tutorial import results

GPU = {"gpu": "NVIDIA H200", "torch": "2.11.0", "transformers": "5.24.0", "peft": "0.21.2"}


def _write(folder, name: str, records: list[dict], date: str) -> None:
    stamped = [{**GPU, "date": date, **r} for r in records]
    (folder / name).write_text(json.dumps({"command": name.rsplit("-", 1)[0], "env": GPU, "results": stamped}))


def _train_record(case: str, tokens_per_s: float, **extra) -> dict:
    model, *rest = case.split("-")
    method = rest[0] if rest[0] in ("head", "full") else "lora"
    runner = "transformers.Trainer" if case.endswith("hf-trainer") else "train.train"
    return {"case": case, "model": model, "method": method, "runner": runner, "setting": case, "step_s": 1.0,
            "tokens_per_s": tokens_per_s, "peak_mem_gib": 10.0, "mfu": 0.3, "trainable_params": 100, **extra}


@pytest.fixture()
def gpu_dir(tmp_path):
    """Two runs of the train benchmark: a complete older one, and a newer one with two cases only."""
    full = [_train_record(c, v) for c, v in (("650M-hf-trainer", 10.0), ("650M-fp32-padded", 5.0),
                                             ("650M-bf16-padded", 20.0), ("650M-bf16-packed", 25.0),
                                             ("650M-fast", 50.0), ("3B-fast", 8.0))]
    full += [_train_record("650M-head-fast", 90.0, step_s=0.4), _train_record("650M-floor-fast", 80.0, step_s=0.6),
             _train_record("650M-full-fast", 30.0)]
    _write(tmp_path, "train-20260101T000000Z.json", full, "2026-01-01T00:00:00Z")
    newer = [_train_record("650M-fast", 500.0), _train_record("650M-hf-trainer", 1.0),
             _train_record("650M-fp8-fast", 400.0), _train_record("650M-fast-32k", 300.0),  # variants, not sizes
             _train_record("650M-bf16-padded", 0.0, error="RuntimeError: out of memory"),
             _train_record("8M-fast", 999.0, smoke=True), {**_train_record("35M-fast", 9.0), "gpu": "cpu"}]
    _write(tmp_path, "train-20260202T000000Z.json", newer, "2026-02-02T00:00:00Z")
    _write(tmp_path, "train-smoke-20260303T000000Z.json", [_train_record("650M-fast", 7.0)], "2026-03-03T00:00:00Z")
    return tmp_path


def test_measured_leaves_out_smoke_cpu_failed_and_skipped(gpu_dir):
    df = results.measured("train", gpu_dir)
    assert len(df) == 9 + 4  # the older run, and the newer one's four measured GPU records
    assert set(df["file"]) == {"train-20260101T000000Z.json", "train-20260202T000000Z.json"}
    assert "35M-fast" not in set(df["case"]) and "8M-fast" not in set(df["case"])
    assert results.measured("train", gpu_dir / "missing").empty
    assert results.measured("zero-shot", gpu_dir).empty


def test_ablation_comes_from_one_run_with_ratios_inside_it(gpu_dir):
    table = results.ablation_table(results.measured("train", gpu_dir))
    assert table.attrs["file"] == "train-20260101T000000Z.json"  # the newer file holds only 2 of the 5
    assert list(table.index) == ["hf-trainer", "fp32-padded", "bf16-padded", "bf16-packed", "fast"]
    assert table.loc["fast", "× Trainer"] == pytest.approx(50.0 / 10.0)
    assert table.loc["bf16-packed", "× previous"] == pytest.approx(25.0 / 20.0)
    assert set(table["lora_layer"]) == {"peft"}  # records before the field: PEFT's layer
    assert results.ablation_table(pd.DataFrame()).empty


def test_methods_adapter_cost_and_family(gpu_dir):
    df = results.measured("train", gpu_dir)
    methods = results.methods_table(df)
    assert list(methods.index) == ["lora", "head", "full"]
    cost = results.adapter_cost(df)
    assert cost["file"] == "train-20260101T000000Z.json" and cost["adapter_share"] == pytest.approx(1 - 0.6 / 1.0)
    assert cost["lora_layer"] == "peft" and "peft_adapter_share" not in cost  # an old record: PEFT's layer
    both = pd.concat([df, pd.DataFrame([{**_train_record(c, v, step_s=t), "file": "train-20260303T000000Z.json",
                                         "lora_layer": layer} for c, v, t, layer in
                                        (("650M-fast", 120.0, 0.7, "fused"), ("650M-floor-fast", 130.0, 0.6, None),
                                         ("650M-peft-fast", 100.0, 0.8, "peft"))])])
    cost = results.adapter_cost(both)
    assert cost["lora_layer"] == "fused" and cost["adapter_share"] == pytest.approx(1 - 0.6 / 0.7)
    assert cost["peft_adapter_share"] == pytest.approx(1 - 0.6 / 0.8) and cost["peft_tokens_per_s"] == 100.0
    family = results.family_table(df)
    assert list(family.index) == ["650M", "3B"] and family.loc["650M", "tokens_per_s"] == 500.0  # the newest
    assert results.adapter_cost(pd.DataFrame()) is None and results.family_table(pd.DataFrame()).empty


def test_scaling_and_figures(tmp_path):
    dist = [{"case": "650M-ddp", "parallel": "ddp", "world_size": 2, "single_gpu_tokens_per_s": 100.0,
             "tokens_per_s": 90.0, "scaling_efficiency": 0.9, "loss_curve": [1.0, 0.9], "loss_curve_single": [1.0, 0.9]}]
    _write(tmp_path, "train-dist-20260101T000000Z.json", dist, "2026-01-01T00:00:00Z")
    measured = results.measured("train-dist", tmp_path)
    table = results.scaling_table(measured)
    assert table.loc["650M-ddp", "scaling_efficiency"] == 0.9
    assert results.measured("train", tmp_path).empty  # train-dist-* files are not train-<date> files
    for fig in (results.plot_scaling(table, measured), results.plot_ablation(pd.DataFrame()),
                results.plot_scaling(pd.DataFrame(), pd.DataFrame())):
        assert fig.axes
        plt.close(fig)


def test_notebook_runs_newest_per_notebook(tmp_path):
    run = {"notebook": "03_gpu_training", "runtime_s": 400.0, "training": [{"run": "ss-lora", "tokens_per_s": 9.0}]}
    _write(tmp_path, "notebooks-20260101T000000Z.json", [run, {"notebook": "01_esm2_loading", "runtime_s": 80.0}],
           "2026-01-01T00:00:00Z")
    failed = {"notebook": "03_gpu_training", "runtime_s": 10.0, "error": "SafetensorError: No space left on device"}
    _write(tmp_path, "notebooks-20260202T000000Z.json", [failed], "2026-02-02T00:00:00Z")
    table = results.notebook_runs(tmp_path)
    assert table.loc["03_gpu_training", "status"] == "failed" and table.loc["01_esm2_loading", "status"] == "ran"
    assert results.training_runs(results.notebook_runs(tmp_path)).empty  # the failed run is the newest
    (tmp_path / "notebooks-20260202T000000Z.json").unlink()
    runs = results.training_runs(results.notebook_runs(tmp_path))
    assert runs.to_dict("records") == [{"notebook": "03_gpu_training", "run": "ss-lora", "tokens_per_s": 9.0}]
    assert results.notebook_runs(tmp_path / "missing").empty


def test_a_run_stopped_by_the_time_limit_does_not_hide_a_complete_one(tmp_path):
    done = {"notebook": "03_gpu_training", "runtime_s": 400.0}
    stopped = {"notebook": "03_gpu_training", "runtime_s": 330.0, "error": "stopped by signal 15 after the cells the "
               "executed notebook shows"}
    alone = {"notebook": "06_evo2_finetuning", "runtime_s": 300.0, "error": stopped["error"]}
    _write(tmp_path, "notebooks-20260101T000000Z.json", [done], "2026-01-01T00:00:00Z")
    _write(tmp_path, "notebooks-20260202T000000Z.json", [stopped, alone], "2026-02-02T00:00:00Z")
    table = results.notebook_runs(tmp_path)
    assert table.loc["03_gpu_training", "runtime_s"] == 400.0 and table.loc["03_gpu_training", "status"] == "ran"
    assert table.loc["06_evo2_finetuning", "status"] == "stopped (time limit)"


def test_notebook_runs_name_what_ran_at_the_same_time(tmp_path):
    """Two files of one host, started a minute apart: records overlap by their runtimes, summed from each file's
    start (an independent timeline, written out by hand)."""
    first = [{"notebook": "06_evo2_finetuning", "runtime_s": 300.0}, {"notebook": "01_esm2_loading", "runtime_s": 200.0}]
    second = [{"notebook": "03_gpu_training", "runtime_s": 330.0}]  # 00:01:00 to 00:06:30
    later = [{"notebook": "00_environment", "runtime_s": 8.0}]  # long after both
    _write(tmp_path, "notebooks-20260101T000000Z.json", first, "2026-01-01T00:00:00Z")  # 06: 0-300 s, 01: 300-500 s
    _write(tmp_path, "notebooks-20260101T000100Z.json", second, "2026-01-01T00:01:00Z")
    _write(tmp_path, "notebooks-20260101T010000Z.json", later, "2026-01-01T01:00:00Z")
    table = results.notebook_runs(tmp_path)
    assert table.loc["06_evo2_finetuning", "beside"] == ["03_gpu_training"]  # 60-300 s overlap
    assert table.loc["01_esm2_loading", "beside"] == ["03_gpu_training"]  # 300-390 s: 90 s > the 60 s margin
    assert table.loc["03_gpu_training", "beside"] == ["01_esm2_loading", "06_evo2_finetuning"]
    assert table.loc["00_environment", "beside"] == []
    late = [{"notebook": "02_lora_setup", "runtime_s": 60.0, "started": "2026-01-01T00:07:00Z"}]  # after 03 ended
    _write(tmp_path, "notebooks-20260101T000030Z.json", late, "2026-01-01T00:00:30Z")  # the file began with 03
    assert results.notebook_runs(tmp_path).loc["02_lora_setup", "beside"] == []  # `started` wins over the estimate


def test_find_results_dir_from_a_subfolder(tmp_path, monkeypatch):
    (tmp_path / "book" / "results" / "gpu").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert results.find_results_dir() == tmp_path / "book" / "results" / "gpu"
    assert results.find_results_dir(tmp_path) == tmp_path


def test_fp8_pairs_come_from_one_run_with_their_ratio(gpu_dir):
    records = [_train_record(c, v) for c, v in (("650M-fast", 80.0), ("650M-fp8-fast", 60.0), ("3B-fast", 20.0),
                                                ("3B-fp8-fast", 25.0), ("650M-head-fp8-fast", 9.0))]
    _write(gpu_dir, "train-20260404T000000Z.json", records, "2026-04-04T00:00:00Z")
    table = results.fp8_table(results.measured("train", gpu_dir))
    assert table.attrs["file"] == "train-20260404T000000Z.json" and list(table.index) == ["650M", "3B"]
    assert table.loc["3B", "fp8 / bf16"] == pytest.approx(25.0 / 20.0)  # 650M-head has no bf16 pair in that run
    assert results.fp8_table(pd.DataFrame()).empty


def test_attention_pairs_each_case_with_its_fa4_twin_of_one_run(gpu_dir):
    older = [_train_record("650M-fast", 1.0), _train_record("650M-fa4-fast", 9.0)]  # a newer run holds more pairs
    _write(gpu_dir, "train-20260404T000000Z.json", older, "2026-04-04T00:00:00Z")
    records = [_train_record(c, v, tokens_per_s_median=m, loss_last=loss) for c, v, m, loss in (
        ("650M-fast", 100.0, 110.0, 1.10), ("650M-fast-cg", 98.0, 112.0, 1.11), ("650M-floor-fast", 120.0, 121.0, 1.2),
        ("650M-fa4-fast", 99.0, 100.0, 1.10), ("650M-fa4-fast-cg", 117.0, 123.2, 1.11),
        ("650M-floor-fa4-fast", 138.0, 145.2, 1.2), ("3B-fa4-fast", 34.0, 35.0, 1.3))]  # 3B: no varlen twin
    _write(gpu_dir, "train-20260505T000000Z.json", records, "2026-05-05T00:00:00Z")
    table = results.attention_table(results.measured("train", gpu_dir))
    assert table.attrs["file"] == "train-20260505T000000Z.json"
    assert list(table.index) == ["650M", "650M-cg", "650M-floor"]
    assert table.loc["650M-cg", "fa4 / varlen"] == pytest.approx(117.0 / 98.0)
    assert table.loc["650M-cg", "fa4 / varlen, medians"] == pytest.approx(123.2 / 112.0)
    assert table.loc["650M-floor", ["varlen last loss", "fa4 last loss"]].tolist() == [1.2, 1.2]
    assert results.attention_table(pd.DataFrame()).empty


def test_fp8_numerics_figure_reads_one_run(tmp_path):
    curves = {"bf16": [1.0, 0.9, 0.8], "fp8": [1.0, 0.91, 0.79], "bf16-peft": [1.0, 0.9, 0.81], "fp32": [1.0, 0.9]}
    old = [{"case": f"650M-lora-{p}", "precision": p, "loss_curve": [9.0] * 3} for p in ("bf16", "fp8", "fp32")]
    new = [{"case": f"650M-lora-{n}", "run": n, "precision": n.removesuffix("-peft"), "loss_curve": c}
           for n, c in curves.items()]
    new[1] |= {"within_tolerance": False, "end_rel_diff": 0.011}
    new[2] |= {"within_tolerance": True, "end_rel_diff": 0.002}
    _write(tmp_path, "fp8-numerics-20260101T000000Z.json", old, "2026-01-01T00:00:00Z")
    fig, verdicts = results.plot_fp8_numerics(results.measured("fp8-numerics", tmp_path))  # no `run` field
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["bf16", "fp8", "fp32"] and set(verdicts) == {"fp8"}
    plt.close(fig)
    _write(tmp_path, "fp8-numerics-20260202T000000Z.json", new, "2026-02-02T00:00:00Z")
    fig, verdicts = results.plot_fp8_numerics(results.measured("fp8-numerics", tmp_path))
    lines = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].get_lines()}
    assert lines == {("bf16, PEFT's LoRA layer" if k == "bf16-peft" else k): v for k, v in curves.items()}
    assert verdicts["fp8"]["within_tolerance"] is False and verdicts["fp8"]["end_rel_diff"] == 0.011
    assert verdicts["bf16-peft"]["within_tolerance"] is True
    plt.close(fig)
    fig, verdict = results.plot_fp8_numerics(pd.DataFrame())
    assert verdict is None
    plt.close(fig)


def test_cuda_graphs_table_takes_one_run_and_its_ratios(tmp_path):
    rows = [{"case": "650M-hf-trainer", "tokens_per_s": 10.0}, {"case": "650M-fast", "tokens_per_s": 90.0},
            {"case": "650M-fast-cg", "tokens_per_s": 99.0, "setting": 'compile_mode="reduce-overhead"'}]
    _write(tmp_path, "train-20260101T000000Z.json", rows, "2026-01-01T00:00:00Z")
    _write(tmp_path, "train-20260202T000000Z.json", rows[:2], "2026-02-02T00:00:00Z")  # newer, without the case
    table = results.cuda_graphs_table(results.measured("train", tmp_path))
    assert table.attrs["file"] == "train-20260101T000000Z.json"
    assert table.loc["fast-cg", "× fast"] == pytest.approx(1.1) and table.loc["fast", "× Trainer"] == 9.0
    assert results.cuda_graphs_table(results.measured("train", tmp_path / "none")).empty
