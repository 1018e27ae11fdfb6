"""Training loop, batching, masking, metrics and checkpoints on the CPU with the tiny model and shipped data.

The kill-and-resume test runs a training in a subprocess that SIGKILLs itself mid-run, resumes it here,
and compares with an uninterrupted run of the same seed.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from sklearn import metrics as skm

from bioft_tutorial import checkpoint, data, lora, metrics, models, predict, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer()


@pytest.fixture(scope="module")
def ss_small(tokenizer):
    df = data.load_flip_secondary_structure(max_chains=60, seed=1)
    return (data.secondary_structure_examples(df[df.split == "train"], tokenizer),
            data.secondary_structure_examples(df[df.split == "validation"].head(20), tokenizer))


def _tiny(method="full", seed=0, dropout=0.0):
    model = models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=seed)
    cfg = lora.esm2_lora_config(dropout=dropout) if method == "lora" else None
    return lora.prepare_model(model, method, cfg)


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --- masking, crops, batches ---------------------------------------------------------------------------------

def test_unresolved_residues_and_special_tokens_get_no_label(tokenizer):
    df = pd.DataFrame({"id": ["toy"], "sequence": ["MKHE"], "labels": ["CHEC"], "mask": ["1001"]})
    ex = data.secondary_structure_examples(df, tokenizer)[0]
    vocab = tokenizer.get_vocab()
    assert ex["input_ids"] == [tokenizer.cls_token_id, vocab["M"], vocab["K"], vocab["H"], vocab["E"],
                               tokenizer.eos_token_id]
    # <cls>, C(resolved)=2, H(unresolved), E(unresolved), C(resolved)=2, <eos>
    assert ex["labels"] == [-100, 2, -100, -100, 2, -100]
    batch = data.collate_padded([ex, {"input_ids": ex["input_ids"][:3], "labels": ex["labels"][:3]}])
    assert batch["labels"][1].tolist() == [-100, 2, -100, -100, -100, -100]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0]
    # the loss ignores every -100: same as cross-entropy over the two labelled residues only
    logits = torch.randn(1, 6, 3)
    expected = -(torch.log_softmax(logits[0, 1], -1)[2] + torch.log_softmax(logits[0, 4], -1)[2])
    assert torch.allclose(predict.loss_sum(logits, torch.tensor([ex["labels"]])), expected)


@pytest.mark.parametrize("length", [5, 1022, 1023, 1500, 2500, 4000])
def test_crops_own_each_residue_once(length):
    windows = data.crop_windows(length, 1022, 256)
    owned = np.zeros(length, dtype=int)
    for start, end, own_start, own_end in windows:
        assert end - start <= 1022 and start <= own_start < own_end <= end
        owned[own_start:own_end] += 1
    assert (owned == 1).all()


def test_long_chain_is_cropped_with_labels_counted_once(tokenizer):
    seq = "ACDEFGHIKL" * 150  # 1,500 residues
    df = pd.DataFrame({"id": ["long"], "sequence": [seq], "labels": ["H" * 1500], "mask": ["1" * 1500]})
    ds = data.secondary_structure_examples(df, tokenizer)
    assert len(ds) == 2 and max(len(x) for x in ds["input_ids"]) == 1024
    assert sum(sum(y != -100 for y in lab) for lab in ds["labels"]) == 1500


def test_token_budget_batches_respect_budget_and_cover_everything():
    lengths = np.random.default_rng(0).integers(20, 600, size=300)
    batches = data.token_budget_batches(lengths, 2048, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert all(len(b) * lengths[b].max() <= 2048 for b in batches)
    assert batches == data.token_budget_batches(lengths, 2048, seed=3)  # deterministic per seed
    with pytest.raises(ValueError, match="token_budget=500"):
        data.token_budget_batches(lengths, 500)


def test_dms_position_split_has_no_shared_positions():
    df = data.load_blat_dms()
    split = data.dms_split(df, by="position", seed=0)
    positions = {name: set(df.position[split == name]) for name in ("train", "validation", "test")}
    assert not positions["train"] & positions["test"] and not positions["train"] & positions["validation"]
    assert set(data.dms_split(df, by="random").unique()) == {"train", "validation", "test"}


# --- metrics agree with independent computations ---------------------------------------------------------------

def test_metrics_agree_with_independent_computations():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 500), rng.integers(0, 3, 500)
    y[rng.random(500) < 0.2] = -100
    keep = y != -100
    assert metrics.q3_accuracy(y, p) == pytest.approx(np.mean(y[keep] == p[keep]))
    cm = np.zeros((3, 3), int)
    np.add.at(cm, (y[keep], p[keep]), 1)
    assert (metrics.confusion(y, p) == cm).all()
    assert np.allclose(metrics.per_class_accuracy(y, p), np.diag(cm) / cm.sum(1))
    assert metrics.q3_accuracy(y, p) == pytest.approx(skm.accuracy_score(y[keep], p[keep]))
    a, b = rng.normal(size=200), rng.normal(size=200)
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    assert metrics.spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])


def test_evaluate_matches_sklearn_on_model_predictions(ss_small):
    model = _tiny("full")
    _, val = ss_small
    y, pred, _ = predict.collect_predictions(model, val, token_budget=4096)
    scores = predict.evaluate(model, val, token_budget=4096)
    assert scores["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert len(y) == sum(sum(v != -100 for v in lab) for lab in val["labels"])


# --- config validation -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,match", [
    ("learning_rate", 0.0, "learning_rate"), ("learning_rate", -1e-3, "learning_rate"),
    ("max_steps", 0, "max_steps"), ("token_budget", 0, "token_budget"), ("grad_accum_steps", 0, "grad_accum"),
    ("warmup_steps", 10, "warmup_steps"), ("min_token_budget", 10**6, "min_token_budget"),
    ("schedule", "step", "schedule"), ("precision", "fp16", "precision"), ("batching", "bucket", "batching"),
    ("early_stopping_patience", 0, "early_stopping"), ("max_grad_norm", 0.0, "max_grad_norm"),
    ("compile_mode", "reduce-overhead", "needs compile='inductor'"),
])
def test_bad_config_values_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig(**{"max_steps": 10, "warmup_steps": 0, "token_budget": 2048, "min_token_budget": 512,
                             field: value})


def test_compile_mode_is_one_of_torch_compiles_modes():
    with pytest.raises(ValueError, match="compile_mode='graphs'"):
        train.TrainConfig(batching="packed", compile="inductor", compile_mode="graphs")
    assert train.TrainConfig(batching="packed", compile="inductor", compile_mode="reduce-overhead").compile_mode


def test_example_longer_than_the_token_budget_is_refused(ss_small, tmp_path):
    tr, _ = ss_small
    cfg = train.TrainConfig(output_dir=str(tmp_path), max_steps=2, warmup_steps=0, token_budget=64,
                            min_token_budget=32, progress=False)
    with pytest.raises(ValueError, match="more than token_budget=64"):
        train.train(_tiny(), tr, None, cfg)


def test_lr_schedule_warms_up_then_decays():
    f = [train.lr_factor(s, 10, 110, "cosine") for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[60] == pytest.approx(0.5) and f[-1] < 1e-3
    assert train.lr_factor(60, 10, 110, "linear") == pytest.approx(0.5)


# --- learning, faults, resume ------------------------------------------------------------------------------------

def test_loss_decreases_on_a_small_real_subset(ss_small, tmp_path):
    tr, val = ss_small
    cfg = train.TrainConfig(output_dir=str(tmp_path), max_steps=40, learning_rate=3e-3, warmup_steps=5,
                            token_budget=2048, min_token_budget=1024, eval_every=20, save_every=40, progress=False)
    result = train.train(_tiny("full"), tr, val, cfg)
    loss = result.history["loss"].to_numpy()
    assert loss[-10:].mean() < loss[:10].mean() - 0.05
    assert (tmp_path / "history.jsonl").read_text().count("\n") == 40
    assert result.best_step in (20, 40) and (tmp_path / "best" / "tensors.safetensors").exists()


def test_injected_out_of_memory_halves_the_budget_and_keeps_the_gradient(ss_small, tmp_path, caplog):
    tr, _ = ss_small
    kw = dict(max_steps=4, learning_rate=1e-3, warmup_steps=0, token_budget=4096, min_token_budget=1024,
              save_every=100, progress=False)
    fired = []

    def oom_once(step, batch):
        if step == 2 and not fired:
            fired.append(step)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    plain, faulty = _tiny("full"), _tiny("full")
    train.train(plain, tr, None, train.TrainConfig(output_dir=str(tmp_path / "a"), **kw))
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.oom"):
        result = train.train(faulty, tr, None, train.TrainConfig(output_dir=str(tmp_path / "b"), **kw),
                             before_forward=oom_once)
    assert result.token_budget == 2048 and "token_budget=4096: retrying with 2048" in caplog.text
    assert list(result.history["token_budget"]) == [4096, 2048, 2048, 2048]
    for (name, a), b in zip(_trainable(plain).items(), _trainable(faulty).values()):
        assert torch.allclose(a, b, atol=1e-5), name  # same gradient, summed in a different order

    def always_oom(step, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    with pytest.raises(torch.cuda.OutOfMemoryError, match="under the floor of 1024"):
        train.train(_tiny("full"), tr, None, train.TrainConfig(output_dir=str(tmp_path / "c"), **kw),
                    before_forward=always_oom)


def test_nan_loss_stops_at_the_step_and_keeps_the_last_checkpoint(ss_small, tmp_path):
    tr, _ = ss_small
    model = _tiny("full")

    def poison(step, batch):
        if step == 5:
            model.classifier.weight.data.fill_(float("nan"))

    cfg = train.TrainConfig(output_dir=str(tmp_path), max_steps=8, warmup_steps=0, token_budget=2048,
                            min_token_budget=1024, save_every=2, progress=False)
    with pytest.raises(FloatingPointError, match="step 5"):
        train.train(model, tr, None, cfg, before_forward=poison)
    last = checkpoint.latest_checkpoint(tmp_path / "checkpoints")
    assert last.name == "step-000004"
    tensors, state = checkpoint.load_checkpoint(last)
    assert state["state"]["step"] == 4 and all(torch.isfinite(t).all() for t in tensors.values())


def test_early_stopping_and_best_checkpoint(ss_small, tmp_path):
    tr, val = ss_small
    cfg = train.TrainConfig(output_dir=str(tmp_path), max_steps=50, learning_rate=1e-12, warmup_steps=0,
                            token_budget=2048, min_token_budget=1024, eval_every=2, early_stopping_patience=2,
                            progress=False)
    result = train.train(_tiny("full"), tr, val, cfg)
    assert result.stopped == "early_stopping" and len(result.history) == 6 and result.best_step == 2


_RUN = """
import os, signal, sys, torch
torch.set_num_threads(1)
from bioft_tutorial import data, lora, models, train
tok = models.load_tokenizer()
df = data.load_flip_secondary_structure(max_chains=60, seed=1)
tr = data.secondary_structure_examples(df[df.split == "train"], tok)
va = data.secondary_structure_examples(df[df.split == "validation"].head(20), tok)
model = lora.prepare_model(models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=0), "lora",
                           lora.esm2_lora_config(dropout=0.1))
kill_at = int(sys.argv[2])
def hook(step, batch):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
cfg = train.TrainConfig(output_dir=sys.argv[1], max_steps=12, learning_rate=2e-3, warmup_steps=2,
                        token_budget=1536, min_token_budget=1024, grad_accum_steps=2, eval_every=4,
                        save_every=3, progress=False, resume=kill_at == 0)
train.train(model, tr, va, cfg, before_forward=hook)
"""


def test_killed_run_resumes_to_the_same_weights(tmp_path, one_thread, ss_small):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_RUN))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), "8"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert checkpoint.latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-000006"
    # a step's row is logged once the next step is queued (its numbers are read then): killed in step 8's forward
    assert len((tmp_path / "run" / "history.jsonl").read_text().splitlines()) == 6
    resumed = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), "0"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    tr, va = ss_small  # the same run, uninterrupted, in this process (also one thread)
    model = lora.prepare_model(models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=0), "lora",
                               lora.esm2_lora_config(dropout=0.1))
    train.train(model, tr, va, train.TrainConfig(
        output_dir=str(tmp_path / "ref"), max_steps=12, learning_rate=2e-3, warmup_steps=2, token_budget=1536,
        min_token_budget=1024, grad_accum_steps=2, eval_every=4, save_every=3, progress=False))
    rows = [[json.loads(line) for line in (tmp_path / d / "history.jsonl").read_text().splitlines()]
            for d in ("run", "ref")]
    assert [r["step"] for r in rows[0]] == list(range(1, 13))
    for a, b in zip(*rows):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-6, abs_tol=1e-7), (a, b)
    weights = [checkpoint.load_checkpoint(tmp_path / d / "checkpoints" / "step-000012")[0] for d in ("run", "ref")]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        if name.startswith(("model/", "optimizer/")):
            assert torch.allclose(weights[0][name], weights[1][name], rtol=1e-5, atol=1e-7), name




_DDP_RUN = """
import sys, torch
torch.set_num_threads(1)
from bioft_tutorial import data, lora, models, train
tok = models.load_tokenizer()
df = data.load_flip_secondary_structure(max_chains=40, seed=2)
tr = data.secondary_structure_examples(df[df.split == "train"], tok, as_dataset=False)
va = data.secondary_structure_examples(df[df.split == "validation"].head(12), tok, as_dataset=False)
model = lora.prepare_model(models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=0), "full")
cfg = train.TrainConfig(output_dir=sys.argv[1], max_steps=5, learning_rate=2e-3, warmup_steps=1,
                        token_budget=1536, min_token_budget=1024, grad_accum_steps=int(sys.argv[2]),
                        eval_every=5, save_every=5, progress=False, device="cpu")
train.train(model, tr, va, cfg)
"""


def test_two_processes_under_torchrun_match_one_with_the_same_global_batch(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(_DDP_RUN))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name, cmd in {"two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              str(script), str(tmp_path / "two"), "1"],
                      "one": [sys.executable, str(script), str(tmp_path / "one"), "2"]}.items():
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (name, done.stderr[-3000:])
    rows = [[json.loads(line) for line in (tmp_path / d / "history.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    assert len(rows[0]) == len(rows[1]) == 5
    for a, b in zip(*rows):  # same global batch each step: same loss, up to the order of the all-reduce
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-5), (a, b)
    assert math.isclose(rows[0][-1]["eval_accuracy"], rows[1][-1]["eval_accuracy"], rel_tol=1e-6)


def test_prediction_of_a_long_chain_with_bf16_frozen_weights(tokenizer):
    model = models.cast_frozen(lora.prepare_model(models.random_esm2(models.tiny_esm2_config(), "token", 3), "lora",
                                                lora.esm2_lora_config()))
    seq = ("MKVLAAGHEEKLLWSTPRQ" * 80)[:1500]  # two crops
    out = predict.predict_residue_classes(model, tokenizer, {"long": seq, "short": "MKV"}, token_budget=2048)
    assert len(out["long"]) == 1500 and len(out["short"]) == 3 and set(out["long"]) <= set("HEC")


def test_static_collate_uses_few_row_sizes():
    from bioft_tutorial import packing

    collate = packing.static_collate(token_budget=4096, max_chains=40)
    shapes = set()
    for n_chains, length in ((1, 30), (3, 500), (9, 450), (40, 22), (2, 1024)):
        batch = collate([{"input_ids": [0] + [5] * (length - 2) + [2], "labels": [-100] * length}] * n_chains)
        assert batch["input_ids"].shape[1] >= n_chains * length  # the row holds every chain
        assert int(batch["cu_seq_lens_q"][-1]) == batch["input_ids"].shape[1]
        shapes.add((batch["input_ids"].shape[1], batch["cu_seq_lens_q"].shape[0]))
    assert {s[0] for s in shapes} <= {1024, 2048, 4096} and len({s[1] for s in shapes}) == 1
    with pytest.raises(ValueError, match="max_chains=0"):
        packing.static_collate(4096, 0)


def test_packed_batches_hold_at_most_one_chain_per_128_tokens(tmp_path):
    """Rows of many short chains are cut at packing.chains_per_row, so that cu_seq_lens stays short; every
    chain is still trained on, and the compiled path sees one cu_seq_lens size."""
    from bioft_tutorial import packing

    lengths = np.r_[np.full(300, 12), np.full(20, 900)]  # many tiny chains and a few long ones
    batches = data.token_budget_batches(lengths, 4096, padded=False, seed=1, max_examples=32)
    assert max(len(b) for b in batches) == 32 and sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(lengths[b].sum() <= 4096 for b in batches)
    assert packing.chains_per_row(16384) == 128 and packing.chains_per_row(64) == 1
    chains = [{"input_ids": [0, *([5] * (n - 2)), 2], "labels": [-100, *([1] * (n - 2)), -100]} for n in lengths]
    model = _tiny("lora")
    config = train.TrainConfig(output_dir=str(tmp_path), max_steps=3, warmup_steps=0, token_budget=4096,
                               min_token_budget=1024, eval_every=None, save_every=None, batching="packed",
                               compile="aot_eager", progress=False, device="cpu")
    result = train.train(model, chains, None, config)
    assert result.history["loss"].notna().all() and len(result.history) == 3


def test_compile_needs_packed_batches(tmp_path):
    with pytest.raises(ValueError, match=r"compile='inductor' needs batching='packed'"):
        train.TrainConfig(output_dir=str(tmp_path), compile="inductor")


@pytest.mark.slow
def test_compiled_packed_training_matches_eager(tmp_path):
    """The compiled, static-shape path (aot_eager backend on the CPU: same graphs, no C++ build) trains to the
    same weights as the eager packed path, with activation checkpointing on."""
    flip = data.load_flip_secondary_structure("train", max_chains=24, seed=0)
    tok = models.load_tokenizer()
    examples = data.secondary_structure_examples(flip, tok, as_dataset=False)
    finals = []
    torch._dynamo.reset()
    for compile_backend in (None, "aot_eager"):
        model, _ = models.load_esm2("tiny", task="token", num_labels=3, seed=0)
        model = lora.prepare_model(model, "lora", lora.esm2_lora_config(r=4, dropout=0.0))
        cfg = train.TrainConfig(output_dir=str(tmp_path / str(compile_backend)), max_steps=3, warmup_steps=1,
                                token_budget=2048, eval_every=100, save_every=100, batching="packed",
                                compile=compile_backend, checkpointing=True, progress=False, device="cpu")
        result = train.train(model, examples, None, cfg)
        finals.append(({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                       result.history["loss"].to_numpy()))
    assert torch._dynamo.utils.counters["frames"]["ok"] >= 1, "nothing was compiled"
    (eager, eager_loss), (compiled, compiled_loss) = finals
    np.testing.assert_allclose(compiled_loss, eager_loss, rtol=1e-4)
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-4, atol=1e-5)


def test_prediction_halves_the_batch_on_out_of_memory(caplog):
    """An injected CUDA OOM on batches of more than one sequence: predictions are made in halves, logged,
    and equal the predictions made without the fault."""
    model, tok = models.load_esm2("tiny", task="token", num_labels=3, seed=0)
    flip = data.load_flip_secondary_structure("validation", max_chains=6, seed=0)
    examples = data.secondary_structure_examples(flip, tok, as_dataset=False)
    y_ref, p_ref, _ = predict.collect_predictions(model, examples, token_budget=8192)
    forward = model.forward

    def flaky(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return forward(*args, **kwargs)

    model.forward = flaky
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.oom"):
        y, p, _ = predict.collect_predictions(model, examples, token_budget=8192)
    assert np.array_equal(y, y_ref) and np.array_equal(p, p_ref)
    assert any("sequences; retrying with" in r.message for r in caplog.records)


@pytest.mark.slow
# torch's default limit, whatever ran before, and an error instead of a silent fall-back to eager; restored after
# (monkeypatch would delete the options from torch's config module on undo, failing every later compile)
@torch._dynamo.config.patch(recompile_limit=8, fail_on_recompile_limit_hit=True)
def test_three_compiled_models_in_one_process_stay_compiled(tmp_path, ss_small):
    """Head only, LoRA, then full fine-tuning, each compiled, in one process (as chapter 3 does): every layer call
    of every model runs a compiled graph, and the second and third models add only their own few graphs (row
    sizes x training/evaluation). With torch._dynamo's default limit of 8 graphs per function, set here, the
    three models together need more than that: without compile_layers raising the limit this test fails."""
    from collections import Counter

    torch._dynamo.reset()
    graphs, calls = [], Counter()

    def counting_backend(gm, example_inputs):  # a backend that counts graphs and their runs
        graphs.append(gm)

        def run(*args):
            calls["compiled"] += 1
            return gm.forward(*args)
        return run

    new_graphs, per_call = [], []
    for method in ("head", "lora", "full"):
        model, before, forwards = _tiny(method), len(graphs), Counter()
        model.register_forward_pre_hook(lambda *_: forwards.update(["model"]))
        calls.clear()
        config = train.TrainConfig(output_dir=str(tmp_path / method), max_steps=4, warmup_steps=0, token_budget=4096,
                                   eval_every=2, save_every=None, batching="packed", compile=counting_backend,
                                   progress=False, device="cpu")
        train.train(model, *ss_small, config)
        layers = models.tiny_esm2_config().num_hidden_layers
        per_call.append(calls["compiled"] / (layers * forwards["model"]))  # graphs run per layer call
        new_graphs.append(len(graphs) - before)
    # every layer call of every model ran the same number of compiled pieces (the CPU's per-chain attention
    # splits a layer into a few graphs); none ran eagerly
    assert per_call[0] >= 1 and per_call == [per_call[0]] * 3, per_call
    assert sum(new_graphs) > 8 and max(new_graphs[1:]) <= 24, new_graphs  # CPU attention: a few pieces per shape
    torch._dynamo.reset()


# --- data that does not fit the model: our errors, before any work -----------------------------------------------
def _seq_examples(labels):
    return [{"input_ids": [0, 5 + i % 10, 6, 7, 2], "labels": y} for i, y in enumerate(labels)]


@pytest.mark.parametrize("task,num_labels,examples,match", [
    ("token", 3, _seq_examples([0.5, 1.5, 2.0]), "one label per sequence but EsmForTokenClassification"),
    ("sequence", 1, [{"input_ids": [0, 5, 2], "labels": [-100, 1, -100]}] * 3, "one label per token but"),
    ("sequence", 1, _seq_examples([0, 1, 1]), r"integer labels \(e.g. 0\).*num_labels=1"),
    ("sequence", 3, _seq_examples([0.5, 1.5, 2.0]), "float targets .* num_labels=3"),
    ("token", 3, [{"input_ids": [0, 5, 2], "labels": [-100, 7, -100]}] * 3, r"labels \(e.g. 7\).*num_labels=3"),
    ("token", 3, [], "train_data is empty"),
    ("token", 3, [{"input_ids": [0, 5, 6, 2], "labels": [-100, 1, -100]}], r"train_data\[0\]: 3 labels for 4 tokens"),
])
def test_data_that_does_not_fit_the_model_gets_our_error(task, num_labels, examples, match, tmp_path):
    model = lora.prepare_model(models.random_esm2(models.tiny_esm2_config(), task, num_labels), "full")
    with pytest.raises(ValueError, match=match):
        train.train(model, examples, None, train.TrainConfig(output_dir=str(tmp_path), max_steps=2, warmup_steps=0,
                                                             progress=False))


def test_a_nan_evaluation_never_becomes_the_best(tmp_path, caplog):
    """Constant validation targets: Spearman is undefined. The run warns up front and at each evaluation, keeps
    no 'best' weights, and does not restore the weights of an early step at the end."""
    model = lora.prepare_model(models.random_esm2(models.tiny_esm2_config(), "sequence", 1, seed=0), "full")
    train_set = _seq_examples(np.linspace(-1, 1, 12).tolist())
    constant = _seq_examples([0.25] * 4)
    config = train.TrainConfig(output_dir=str(tmp_path), max_steps=4, warmup_steps=0, eval_every=2, save_every=None,
                               learning_rate=1e-2, progress=False)
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.train"):
        result = train.train(model, train_set, constant, config)
    assert "constant targets" in caplog.text and "not kept as the best" in caplog.text
    assert result.best_step is None and result.best_metric is None
    assert result.history.loc[[1, 3], "eval_spearman"].isna().all()  # evaluated at steps 2 and 4, both NaN
    final = _trainable(model)
    assert not (tmp_path / "best").exists() and final  # nothing restored, nothing written


@pytest.mark.parametrize("padded", [False, True])
def test_split_batch_keeps_a_fitting_batch_and_cuts_an_oversized_one_in_order(padded):
    from types import SimpleNamespace

    from bioft_tutorial.data import Examples
    from bioft_tutorial.train_setup import split_batch

    lengths = [5, 9, 3, 7, 2, 8]
    examples = Examples([{"input_ids": [0] * n, "labels": 1} for n in lengths])
    run, batch = SimpleNamespace(padded=padded), [4, 2, 0, 3, 5, 1]
    cost = (lambda b: len(b) * max(lengths[i] for i in b)) if padded else (lambda b: sum(lengths[i] for i in b))
    assert split_batch(batch, examples, cost(batch), run) == [batch]
    pieces = split_batch(batch, examples, 12, run)
    assert [i for p in pieces for i in p] == batch and len(pieces) > 1
    assert all(cost(p) <= 12 for p in pieces)


# --- the step never waits for the device; a bad step is skipped on the device ------------------------------------
def _one_batch(tokenizer):
    chains = [{"input_ids": tokenizer(s)["input_ids"]} for s in ("MKTAYIAKQR", "MVLSPADKTNV")]
    for c in chains:
        c["labels"] = [-100] + [i % 3 for i in range(len(c["input_ids"]) - 2)] + [-100]
    return data.collate_padded(chains, tokenizer.pad_token_id), sum(len(c["input_ids"]) - 2 for c in chains)


def test_train_step_reads_nothing_back_and_skips_a_bad_update_on_the_device(tokenizer, monkeypatch):
    model = _tiny("lora")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    batch, n = _one_batch(tokenizer)

    def no_read(self):
        raise AssertionError("train_step read a number back from the device")
    with monkeypatch.context() as m:  # with fused AdamW the step queues its work and returns
        m.setattr(torch.Tensor, "item", no_read)
        loss, grad_norm = train.train_step(model, optimizer, scheduler, [dict(batch)], n, bf16=False)
    assert loss.dim() == 0 and math.isfinite(loss.item()) and grad_norm.item() > 0
    head = next(p for name, p in model.named_parameters() if p.requires_grad and "classifier" in name)
    head.data[0] = float("nan")  # a weight gone bad: this step's loss is NaN
    before = {k: v.nan_to_num() for k, v in _trainable(model).items()}
    loss, _ = train.train_step(model, optimizer, scheduler, [dict(batch)], n, bf16=False)
    assert math.isnan(loss.item()) and optimizer.found_inf.item() == 1.0
    assert all(torch.equal(before[k], p.nan_to_num()) for k, p in _trainable(model).items())  # nothing updated
    head.data.nan_to_num_()  # the cause is gone; the flag stays set, so the next step is skipped too
    loss, _ = train.train_step(model, optimizer, scheduler, [dict(batch)], n, bf16=False)
    assert math.isfinite(loss.item())
    assert all(torch.equal(before[k], p) for k, p in _trainable(model).items())


def test_train_step_without_a_fused_optimizer_refuses_a_bad_step_on_the_host(tokenizer):
    model = _tiny("full")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, foreach=False)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    batch, n = _one_batch(tokenizer)
    model.classifier.weight.data.fill_(float("nan"))
    before = _trainable(model)
    with pytest.raises(FloatingPointError, match="loss nan"):
        train.train_step(model, optimizer, scheduler, [batch], n, bf16=False)
    assert all(torch.equal(before[k].nan_to_num(), p.nan_to_num()) for k, p in _trainable(model).items())


def test_to_host_later_gives_the_numbers_in_order():
    numbers = train.to_host_later(torch.tensor(2.5), torch.tensor(float("nan"), dtype=torch.bfloat16))
    loss, norm = numbers()
    assert loss == 2.5 and math.isnan(norm)


def test_train_step_puts_every_submodule_in_training_mode(tokenizer):
    """A wrapper (e.g. a classifier around Evo 2) can be in training mode with a model inside it in eval mode;
    the step must reach that one too (Evo 2's rotary cache, built in eval mode, cannot be saved for backward)."""
    model = _tiny("full")
    model.esm.eval()  # the inner model left in eval mode, the wrapper not
    assert model.training and not model.esm.encoder.training
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    batch, n = _one_batch(tokenizer)
    train.train_step(model, optimizer, scheduler, [batch], n, bf16=False)
    assert all(m.training for m in model.modules())
