"""The train bench: CPU smoke run, its record schema, batching, FLOP accounting and case selection."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bioft_tutorial import packing
from bioft_tutorial.bench import COMMANDS, results, train_bench, train_workload
from bioft_tutorial.models import esm2_config, tiny_esm2_config

REQUIRED = ("gpu", "torch", "transformers", "date", "model", "method", "path", "tokens_per_s", "step_s",
            "pad_fraction", "peak_mem_gib", "mfu", "compile_s")


@pytest.fixture(scope="module")
def smoke_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    return train_bench.main(["--smoke", "--out", str(out)]), out


def test_registered():
    assert COMMANDS["train"] == "bioft_tutorial.bench.train_bench:main"
    assert COMMANDS["train-dist"] == "bioft_tutorial.bench.train_dist_bench:main"


def test_smoke_run_writes_one_file_with_every_field(smoke_records):
    records, out = smoke_records
    (path,) = out.glob("train-smoke-*.json")  # one file per run, rewritten after each case
    stored = json.loads(path.read_text())
    assert stored["command"] == "train" and len(stored["results"]) == len(records) == 10
    for r in stored["results"]:
        assert "error" not in r, r
        assert r["smoke"] is True and r["model"] == "tiny"
        if r["path"] == "numerics":
            continue
        assert all(k in r for k in REQUIRED), sorted(set(REQUIRED) - set(r))
        assert r["tokens_per_s"] > 0 and 0 <= r["pad_fraction"] < 1
    by_case = {r["case"]: r for r in stored["results"]}
    assert by_case["650M-package"]["baseline_tokens_per_s"] == by_case["650M-naive"]["tokens_per_s"]
    assert by_case["650M-full-package"]["baseline_tokens_per_s"] == by_case["650M-full-naive"]["tokens_per_s"]
    assert by_case["650M-package"]["pad_fraction"] < 0.05 < by_case["650M-naive"]["pad_fraction"]
    assert by_case["3B-package"]["checkpointing"] is True
    head = tiny_esm2_config().hidden_size * 3 + 3  # the classifier (3 classes) is all the head case trains
    assert by_case["650M-head-package"]["trainable_params"] == head
    assert len(by_case["650M-package"]["step_times_ms"]) == by_case["650M-package"]["steps"]
    assert results.load_results("train-smoke-*.json", out)[0]["file"] == path.name


def test_smoke_numerics_packed_fp32_matches(smoke_records):
    (num,) = [r for r in smoke_records[0] if r["path"] == "numerics"]
    assert num["loss_rel_diff_packed_fp32"] < 1e-5 and num["grad_rel_diff_packed_fp32"] < 1e-5
    assert num["grad_rel_diff_packed_bf16"] < 0.1 and num["attention_backend"] == "sdpa"


def test_list_and_select(capsys):
    assert train_bench.main(["--list", "--cases", "650M-*"]) == []
    assert "650M-package" in capsys.readouterr().out
    names = [c.name for c in train_bench.select_cases("650M-package,3B-*")]
    assert names == ["650M-package", "3B-package", "3B-naive", "3B-bf16", "3B-package-nockpt"]
    assert [c.name for c in train_bench.select_cases("all", model="15B")] == ["15B-packed"]
    assert len({c.name for c in train_bench.CASES}) == len(train_bench.CASES)
    with pytest.raises(SystemExit, match="no case matches"):
        train_bench.select_cases("70B-*")


def test_protein_lengths_like_real_proteins():
    lengths = train_workload.protein_lengths(20_000, seed=3)
    assert np.array_equal(lengths, train_workload.protein_lengths(20_000, seed=3))
    assert 285 <= np.median(lengths) <= 315 and lengths.max() == 1022 and lengths.min() >= 30


def test_batches_respect_the_token_budget():
    chains = train_workload.random_chains(train_workload.protein_lengths(600, seed=0), seed=0)
    for batch in train_workload.make_batches(chains, "bucketed", 8192, 10):
        assert batch["input_ids"].numel() <= 8192
    packed = train_workload.make_batches(chains, "packed", 8192, 10)
    assert len(packed) == 10 and len({b["cu_seq_lens_q"].numel() for b in packed}) == 1  # static shapes
    for batch in packed:
        assert batch["input_ids"].shape == (1, 8192)
        assert (batch["cu_seq_lens_q"].numel() - 1) % 8 == 0
        stats = train_workload.batch_stats(batch)
        assert stats["real"] == int((batch["input_ids"] != 1).sum()) > 0.95 * 8192
    naive = train_workload.make_batches(chains, "naive", 0, 3)
    assert [b["input_ids"].shape for b in naive] == [(2, 1024)] * 3


def test_matmul_params_counts_the_encoder_linear_weights():
    from transformers import EsmModel

    with torch.device("meta"):
        model = EsmModel(esm2_config("650M"))
    counted = sum(m.weight.numel() for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))
    assert train_workload.matmul_params("650M") == counted
    assert 640e6 < counted < 660e6


def test_step_flops_by_hand():
    stats = {"real": 1000, "sq": 2 * 500 ** 2}
    n = train_workload.matmul_params("tiny")
    config = tiny_esm2_config()
    attention = 12 * 2 * 500 ** 2 * config.hidden_size * config.num_hidden_layers
    assert train_workload.step_flops("tiny", "lora", stats) == 4 * n * 1000 + attention
    assert train_workload.step_flops("tiny", "full", stats) == 6 * n * 1000 + attention


def test_peak_tflops_names():
    assert train_workload.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert train_workload.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert train_workload.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert train_workload.peak_tflops("cpu") is None


def test_batch_stats_packed_equals_padded():
    chains = train_workload.random_chains(np.array([5, 30, 12]), seed=1)
    padded, packed = packing.collate_padded(chains), packing.collate_packed(chains, pad_to=128)
    a, b = train_workload.batch_stats(padded), train_workload.batch_stats(packed)
    assert (a["real"], a["sq"], a["labelled"]) == (b["real"], b["sq"], b["labelled"])
    assert (a["real"], a["sq"]) == (53, 7 ** 2 + 32 ** 2 + 14 ** 2)
    assert a["total"] == 3 * 32 and b["total"] == 128


def test_gpu_only_without_smoke(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        train_bench.main(["--cases", "650M-naive"])


# --- the performance chapter's tables, from a fake results folder (tests only; never in book/results) ---------
@pytest.fixture(scope="module")
def fake_gpu_dir(smoke_records, tmp_path_factory):
    """The smoke run's records relabelled as if measured on a GPU (same schema the chapter renders)."""
    from bioft_tutorial.bench import train_dist_bench

    out = tmp_path_factory.mktemp("fake")
    dist_records = train_dist_bench.main(["--smoke", "--cases", "650M-ddp", "--out", str(out / "d")])
    assert dist_records and "error" not in dist_records[0]
    (src,) = smoke_records[1].glob("train-smoke-*.json")
    for path, name in ((src, "train-20260101T000000Z.json"),
                       (next((out / "d").glob("*.json")), "train-dist-20260101T000000Z.json")):
        payload = json.loads(path.read_text())
        for r in payload["results"]:
            r.update(gpu="NVIDIA H100 80GB HBM3", smoke=False, model=r["case"].split("-")[0], peak_mem_gib=10.0)
        (out / name).write_text(json.dumps(payload))
    return out


def test_report_tables_from_stored_results(fake_gpu_dir):
    from bioft_tutorial.bench import train_report

    runs = train_report.latest(train_report.load_measured("train", fake_gpu_dir))
    assert set(runs["case"]) >= {"650M-naive", "650M-package", "3B-package", "650M-numerics"}
    ablation = train_report.ablation_table(train_report.load_measured("train", fake_gpu_dir))
    assert list(ablation.index) == ["naive", "bf16", "bf16-base", "packed", "package"]
    assert ablation.loc["package", "× naive"] == pytest.approx(
        ablation.loc["package", "tokens_per_s"] / ablation.loc["naive", "tokens_per_s"])
    family = train_report.family_table(runs)
    assert list(family.index) == ["650M", "3B"] and family.loc["3B", "package path"] == "package, checkpointing"
    assert set(train_report.method_table(runs)["method"]) == {"lora", "full"}
    assert train_report.numerics_table(runs).loc["packed_fp32", "gradients"] < 1e-5
    dist = train_report.load_measured("train-dist", fake_gpu_dir)
    scaling = train_report.scaling_table(dist)
    assert scaling.loc["650M-ddp", "strategy"] == "ddp" and scaling.loc["650M-ddp", "world_size"] == 1
    for fig in (train_report.plot_family(family), train_report.plot_ablation(ablation),
                train_report.plot_scaling(scaling, dist)):
        assert fig.axes
    provenance = train_report.provenance(train_report.load_measured("train", fake_gpu_dir))
    assert provenance.loc["train-20260101T000000Z.json", "gpu"] == "NVIDIA H100 80GB HBM3"


def test_head_case_backpropagates_through_every_layer():
    """The head case is the floor of a LoRA step only if its backward pass runs through the whole encoder."""
    model = train_workload.build_model("tiny", "head", train_workload.PATHS["naive"], torch.device("cpu"))
    reached = []
    model.esm.encoder.layer[0].register_full_backward_hook(lambda *args: reached.append(True))
    batch = packing.collate_padded(train_workload.random_chains(np.array([20, 30]), 0))
    labels = batch.pop("labels")
    torch.nn.functional.cross_entropy(model(**batch).logits.flatten(0, 1), labels.flatten()).backward()
    assert reached and all(p.grad is None for n, p in model.named_parameters() if not n.startswith("classifier"))


def test_adapter_cost_from_one_run(fake_gpu_dir):
    from bioft_tutorial.bench import train_report

    cost = train_report.adapter_cost(train_report.load_measured("train", fake_gpu_dir))
    stored = {r["case"]: r for r in json.loads((fake_gpu_dir / cost["file"]).read_text())["results"]}
    lora, head = (np.median(stored[c]["step_times_ms"]) for c in ("650M-package", "650M-head-package"))
    assert cost["lora_step_ms"] == pytest.approx(lora) and cost["head_step_ms"] == pytest.approx(head)
    assert cost["adapter_share"] == pytest.approx(1 - head / lora)
    assert train_report.adapter_cost(pd.DataFrame()) is None


def test_report_without_results(tmp_path):
    from bioft_tutorial.bench import train_report

    assert train_report.load_measured("train", tmp_path).empty
    (tmp_path / "train-smoke-20260101T000000Z.json").write_text(json.dumps({"results": [{"smoke": True}]}))
    assert train_report.load_measured("train", tmp_path).empty  # smoke runs are never shown
    empty = pd.DataFrame()
    assert train_report.family_table(empty).empty and train_report.ablation_table(empty).empty
    for fig in (train_report.plot_family(empty), train_report.plot_ablation(empty),
                train_report.plot_scaling(empty, empty)):
        assert "No GPU measurement" in fig.axes[0].texts[0].get_text()


def test_ablation_comes_from_one_run(fake_gpu_dir, tmp_path):
    """A newer file that re-measured only some paths must not be mixed into the ablation's factors."""
    from bioft_tutorial.bench import train_report

    payload = json.loads((fake_gpu_dir / "train-20260101T000000Z.json").read_text())
    complete = {r["path"]: r["tokens_per_s"] for r in payload["results"] if r.get("model") == "650M" and r.get("method") == "lora" and "tokens_per_s" in r}
    partial = {**payload, "results": [{**r, "tokens_per_s": 10 * r["tokens_per_s"]} for r in payload["results"]
                                      if r.get("model") == "650M" and r.get("path") in ("naive", "package")]}
    for name, body in (("train-20260101T000000Z.json", payload), ("train-20260202T000000Z.json", partial)):
        (tmp_path / name).write_text(json.dumps(body))
    ablation = train_report.ablation_table(train_report.load_measured("train", tmp_path))
    assert ablation.attrs["file"] == "train-20260101T000000Z.json"
    assert ablation["tokens_per_s"].to_dict() == {p: complete[p] for p in ablation.index}
