"""Faults lose nothing, and unsafe files are refused (issue 7).

* Kill and resume: a LoRA training run (tiny ESM-2, shipped FLIP data, CPU, one thread) is SIGKILLed at
  seeded random points, in forked child processes: before a forward pass, in the middle of writing a checkpoint's
  tensors, while ``latest.json`` is being replaced, and between a checkpoint's rename and the pointer update.
  Each kill is resumed; the losses so far and the final weights equal an uninterrupted run.
* NaN/inf loss stops training naming the step, keeps the last good checkpoint, and a resume finishes the run.
* CUDA out-of-memory is injected (on the CPU) into training, zero-shot scoring, embeddings and variant scoring:
  each halves its budget or batch down to a floor, logging each step down.
* Variant scoring killed mid-run resumes from its cache; damaged cache entries are rescored.
* Unsafe loading: pickles with a payload (it would create a marker file) are refused by every loader and the
  payload never runs; ``trust_remote_code`` is off unless passed; downloads are verified by SHA-256.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import pickle
import random
import re
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bioft_tutorial import checkpoint, data, lora, models, train, zero_shot
from bioft_tutorial.data import DataError
from bioft_tutorial.variants import HFCausalLM, KmerModel, TinyDNALM, WindowCache, score_variants
from bioft_tutorial.variants import cache as cache_module

ROOT = Path(__file__).resolve().parents[1]
FORK = multiprocessing.get_context("fork")
STEPS, SAVE_EVERY = 14, 2
KILL_SEED = int(os.environ.get("BIOFT_KILL_SEED", "2024"))  # another seed, other kill points


pytestmark = pytest.mark.usefixtures("one_thread")  # bitwise-repeatable CPU math


@pytest.fixture(scope="module")
def ss_data():
    """Shipped FLIP chains, cropped to 128 tokens so that a 14-step run takes about two seconds."""
    tok = models.load_tokenizer()
    df = data.load_flip_secondary_structure(max_chains=40, seed=2)
    crop = dict(max_residues=126, overlap=32, as_dataset=False)
    return (data.secondary_structure_examples(df[df.split == "train"], tok, **crop),
            data.secondary_structure_examples(df[df.split == "validation"].head(8), tok, **crop))


def _lora_model(dropout: float = 0.1):
    base = models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=0)
    return lora.prepare_model(base, "lora", lora.esm2_lora_config(dropout=dropout))


def _config(out, resume=False, **kw):
    return train.TrainConfig(**{"output_dir": str(out), "max_steps": STEPS, "learning_rate": 2e-3, "warmup_steps": 2,
                                "token_budget": 512, "min_token_budget": 128, "grad_accum_steps": 2, "eval_every": 4,
                                "save_every": SAVE_EVERY, "keep_checkpoints": 2, "progress": False, "resume": resume,
                                **kw})


def _history(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "history.jsonl").read_text().splitlines()]


def _final(out) -> dict[str, torch.Tensor]:
    tensors, _ = checkpoint.load_checkpoint(Path(out) / "checkpoints" / f"step-{STEPS:06d}")
    return {k: v for k, v in tensors.items() if k.startswith(("model/", "optimizer/"))}


def _assert_same_run(out, reference, upto: int = STEPS) -> None:
    """Losses of steps 1..upto, and (for a finished run) the final weights and AdamW state, equal the reference."""
    got, want = _history(out), _history(reference)
    assert [r["step"] for r in got] == list(range(1, upto + 1))
    for a, b in zip(got, want):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-6, abs_tol=1e-7), (a, b)
    if upto == STEPS:
        mine, theirs = _final(out), _final(reference)
        assert mine.keys() == theirs.keys() and any(k.startswith("model/") for k in mine)
        for name in mine:
            assert torch.allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-7), name


@pytest.fixture(scope="module")
def reference(ss_data, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    train.train(_lora_model(), *ss_data, _config(out))
    return out


# --- kill and resume -------------------------------------------------------------------------------------------
def _child(out, resume: bool, fault: tuple | None, ss_data) -> None:
    """A training run in a forked process, with at most one fault: ``("forward", step, piece)`` SIGKILLs itself
    before that forward pass; ``("tensors" | "pointer" | "rename", step)`` blocks in that phase of the save of
    ``step`` (after writing half the file, for the first two) and waits for the parent's SIGKILL."""
    torch.set_num_threads(1)
    calls: Counter = Counter()

    def hook(step, batch):
        calls[step] += 1
        if fault and fault[0] == "forward" and (step, calls[step]) == fault[1:]:
            os.kill(os.getpid(), signal.SIGKILL)

    def block(path: Path, payload: bytes | None = None) -> None:
        if payload is not None:
            with open(path, "wb") as handle:
                handle.write(payload[: len(payload) // 2])  # a torn write...
                handle.flush()
                os.fsync(handle.fileno())
        (Path(out) / "in-save").write_text(str(os.getpid()))
        time.sleep(120)  # ...and the machine dies here

    if fault and fault[0] == "tensors":
        real = checkpoint.save_file

        def save_file(tensors, filename):
            if f"step-{fault[1]:06d}" in filename:
                real(tensors, filename)
                block(Path(filename), Path(filename).read_bytes())
            real(tensors, filename)
        checkpoint.save_file = save_file
    if fault and fault[0] == "pointer":
        real_json = checkpoint._write_json

        def write_json(path, obj):
            if path.name.startswith(".latest.json") and obj == {"checkpoint": f"step-{fault[1]:06d}"}:
                block(path, json.dumps(obj, indent=1).encode())
            real_json(path, obj)
        checkpoint._write_json = write_json
    if fault and fault[0] == "rename":
        real_mark = checkpoint.mark_latest

        def mark_latest(root, folder):
            if Path(folder).name == f"step-{fault[1]:06d}":
                block(Path(folder))
            real_mark(root, folder)
        checkpoint.mark_latest = mark_latest
    train.train(_lora_model(), *ss_data, _config(out, resume=resume), before_forward=hook)


def _run_child(out, resume, fault, ss_data) -> int:
    marker = Path(out) / "in-save"
    marker.unlink(missing_ok=True)
    proc = FORK.Process(target=_child, args=(out, resume, fault, ss_data))
    proc.start()
    if fault and fault[0] != "forward":  # kill it from outside while it is inside the save
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if marker.exists():
            os.kill(proc.pid, signal.SIGKILL)
    proc.join(180)
    return proc.exitcode


def kill_schedule(seed: int = KILL_SEED) -> list[tuple]:
    """Seeded random kill points: three before a forward pass (step, accumulation piece) and one in each phase
    of a save (at a random save step), in the order a run meets them."""
    rng = random.Random(seed)
    forward = [("forward", s, rng.choice([1, 2])) for s in rng.sample(range(2, STEPS + 1), 3)]
    saves = [(phase, s) for phase, s in zip(("tensors", "pointer", "rename"),
                                            rng.sample(range(SAVE_EVERY, STEPS, SAVE_EVERY), 3))]
    return sorted(forward + saves, key=lambda f: (f[1], f[0] != "forward"))


def test_kill_schedule_is_seeded_and_covers_every_phase():
    schedule = kill_schedule()
    assert schedule == kill_schedule() and len(schedule) == 6
    assert Counter(f[0] for f in schedule) == {"forward": 3, "tensors": 1, "pointer": 1, "rename": 1}
    assert [f[1] for f in schedule] == sorted(f[1] for f in schedule)


def test_killed_runs_resume_to_the_same_weights(ss_data, reference, tmp_path):
    """One run, SIGKILLed at every point of the seeded schedule and resumed after each kill."""
    out = tmp_path / "run"
    for i, fault in enumerate(kill_schedule()):
        code = _run_child(out, i > 0, fault, ss_data)
        assert code == -signal.SIGKILL, (fault, code)
        kind, step = fault[0], fault[1]
        # before step's forward: the last save is the one before it; inside the save of `step`: the one before that
        expected = (step - 1) // SAVE_EVERY * SAVE_EVERY if kind == "forward" else step - SAVE_EVERY
        last = checkpoint.latest_checkpoint(out / "checkpoints")
        if expected == 0:
            assert last is None  # nothing complete yet: the resume starts from step 0
        else:
            assert last.name == f"step-{expected:06d}", (fault, last)
            tensors, state = checkpoint.load_checkpoint(last)  # the previous checkpoint still loads, whole
            assert state["state"]["step"] == expected and all(torch.isfinite(t).all() for t in tensors.values())
        if kind == "forward":  # a step's row is logged when the next is queued, or at once at a save or eval step
            flushed = (step - 1) % SAVE_EVERY == 0 or (step - 1) % 4 == 0
            _assert_same_run(out, reference, upto=step - 1 if flushed else step - 2)
        else:
            # torn tensors: the new folder never appeared; pointer/rename: it is whole, but not yet named latest
            assert (out / "checkpoints" / f"step-{step:06d}").exists() == (kind != "tensors")
            if kind == "tensors":  # half a tensors file, in a temporary folder that resume cleans up
                torn = list((out / "checkpoints").glob(f".step-{step:06d}.*.tmp/tensors.safetensors"))
                assert len(torn) == 1 and 0 < torn[0].stat().st_size
                with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
                    checkpoint.load_checkpoint(torn[0].parent)
            if kind == "pointer":  # the old pointer, whole (or none, at the first save)
                pointer = out / "checkpoints" / "latest.json"
                assert json.loads(pointer.read_text()) == {"checkpoint": last.name} if last else not pointer.exists()
            _assert_same_run(out, reference, upto=step)
    assert _run_child(out, True, None, ss_data) == 0  # the last resume runs to the end
    _assert_same_run(out, reference)
    assert not list((out / "checkpoints").glob(".*.tmp")) and not list((out / "checkpoints").glob(".*tmp"))


# --- NaN / inf --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bad_loss_stops_at_its_step_keeps_the_last_checkpoint_and_resumes(ss_data, reference, tmp_path, monkeypatch,
                                                                         bad):
    model, out, seen = _lora_model(), tmp_path / "run", {}
    real_loss = train.loss_sum

    def hook(step, batch):
        seen.setdefault(step, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        seen["step"] = step

    monkeypatch.setattr(train, "loss_sum", lambda logits, labels: real_loss(logits, labels) + (
        bad if seen["step"] == 5 else 0.0))
    with pytest.raises(FloatingPointError) as err:
        train.train(model, *ss_data, _config(out), before_forward=hook)
    message = str(err.value)
    assert "step 5" in message and f"loss {bad}" in message and "step-000004" in message and "resume=True" in message
    assert [r["step"] for r in _history(out)] == [1, 2, 3, 4]  # nothing logged for the bad step, nothing after
    assert checkpoint.latest_checkpoint(out / "checkpoints").name == "step-000004"
    for name, p in model.named_parameters():  # the bad step updated nothing
        if p.requires_grad:
            assert torch.equal(p.detach(), seen[5][name]), name
    monkeypatch.setattr(train, "loss_sum", real_loss)  # the cause is gone: resume finishes the same run
    train.train(_lora_model(), *ss_data, _config(out, resume=True))
    _assert_same_run(out, reference)


# --- out of memory ------------------------------------------------------------------------------------------------
def _oom(*_):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_training_out_of_memory_halves_the_budget_down_to_the_floor(ss_data, tmp_path, caplog):
    kw = dict(max_steps=3, warmup_steps=0, token_budget=1024, min_token_budget=128, save_every=100, eval_every=100)

    def oom_above_256(step, batch):
        if batch["input_ids"].numel() > 256:
            _oom()

    plain = _lora_model(dropout=0.0)
    train.train(plain, ss_data[0], None, _config(tmp_path / "plain", **kw))
    faulty = _lora_model(dropout=0.0)
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.oom"):
        result = train.train(faulty, ss_data[0], None, _config(tmp_path / "oom", **kw), before_forward=oom_above_256)
    steps_down = re.findall(r"token_budget=(\d+): retrying with (\d+)", caplog.text)
    assert steps_down == [("1024", "512"), ("512", "256")]  # each halving logged
    budgets = list(result.history["token_budget"])
    assert result.token_budget == budgets[-1] == 256 and budgets == sorted(budgets, reverse=True)
    for (name, a), b in zip(plain.named_parameters(), faulty.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name  # the same gradient, summed in smaller pieces
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.oom"):
        with pytest.raises(torch.cuda.OutOfMemoryError, match=r"at step 1 with token_budget=128.*floor of 128"):
            train.train(_lora_model(), ss_data[0], None, _config(tmp_path / "never", **kw),
                        before_forward=lambda step, batch: _oom())
    assert caplog.text.count("retrying with") == 3  # 1024 -> 512 -> 256 -> 128, then the floor


def _old_style_oom(*_):
    raise RuntimeError("CUDA error: out of memory")


class _OomAbove:
    """A forward pre-hook that raises CUDA OOM for batches of more than ``rows`` sequences."""

    def __init__(self, model, rows: int, error=_oom):
        self.rows, self.error, self.sizes = rows, error, []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        n = kwargs["input_ids"].shape[0]
        if n > self.rows:
            self.error()
        self.sizes.append(n)


@pytest.mark.parametrize("method", zero_shot.SCORING_METHODS)
def test_zero_shot_out_of_memory_halves_the_batch(method, caplog):
    model, tok = models.load_esm2("tiny", task="mlm")
    wt = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ"
    mutants = [f"{wt[p - 1]}{p}A" for p in range(2, 40, 3) if wt[p - 1] != "A"]
    expected = zero_shot.score_substitutions(model, tok, wt, mutants, method, batch_size=8, max_residues=20,
                                             progress=False)
    hook = _OomAbove(model, rows=2)
    try:
        with caplog.at_level(logging.WARNING, logger="bioft_tutorial.zero_shot"):
            got = zero_shot.score_substitutions(model, tok, wt, mutants, method, batch_size=8, max_residues=20,
                                                progress=False)
    finally:
        hook.handle.remove()
    assert "batch of 8 sequences; retrying with 4" in caplog.text
    assert "batch of 4 sequences; retrying with 2" in caplog.text
    assert max(hook.sizes) == 2 and np.allclose(got, expected, atol=1e-6)


def test_embeddings_out_of_memory_halves_the_batch_then_gives_up_at_one(caplog):
    model, tok = models.load_esm2("tiny")
    seqs = ["MKTAYIAK", "MKT", "GGGGSGGGGS", "MQIFVKTLTGKTITLEV", "AC"]
    expected = zero_shot.embed(model, tok, seqs, batch_size=4, progress=False)
    hook = _OomAbove(model, rows=1, error=_old_style_oom)  # a RuntimeError that says "out of memory" is retried too
    try:
        with caplog.at_level(logging.WARNING, logger="bioft_tutorial.zero_shot"):
            got = zero_shot.embed(model, tok, seqs, batch_size=4, progress=False)
    finally:
        hook.handle.remove()
    assert caplog.text.count("retrying with") == 2 and np.allclose(got, expected, atol=1e-5)
    hook = _OomAbove(model, rows=0)
    try:
        with pytest.raises(torch.cuda.OutOfMemoryError, match="batch of one sequence: use a smaller"):
            zero_shot.embed(model, tok, seqs, batch_size=4, progress=False)
    finally:
        hook.handle.remove()


@pytest.mark.parametrize("shared", [False, True])
def test_variant_scoring_out_of_memory_halves_the_batch(shared, caplog):
    rng = np.random.default_rng(1)
    genome = {"c": "".join(rng.choice(list("ACGT"), 300))}
    variants = pd.DataFrame([("c", p, genome["c"][p - 1], "A" if genome["c"][p - 1] != "A" else "G")
                             for p in range(5, 300, 23)], columns=["chrom", "pos", "ref", "alt"])
    lm = TinyDNALM(seed=4, max_length=64)
    expected = score_variants(lm, genome, variants, window=32, batch_size=8, shared_prefix=shared, progress=False)
    sizes = []
    name = "log_likelihoods_shared_prefix" if shared else "log_likelihoods"
    real = getattr(lm, name)

    def flaky(seqs, *args, **kw):
        if len(seqs) > 2:
            _oom()
        sizes.append(len(seqs))
        return real(seqs, *args, **kw)
    setattr(lm, name, flaky)
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.variants.scoring"):
        got = score_variants(lm, genome, variants, window=32, batch_size=8, shared_prefix=shared, progress=False)
    what = "reference windows" if shared else "windows"
    assert f"batch of 8 {what}; retrying with 4" in caplog.text and f"batch of 4 {what}; retrying with 2" in caplog.text
    assert max(sizes) == 2
    np.testing.assert_allclose(got[["ref_ll", "alt_ll", "delta_ll"]], expected[["ref_ll", "alt_ll", "delta_ll"]],
                               atol=1e-6)


# --- variant scoring: kill, resume, damaged cache ----------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_variants():
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), 500))
    rows = [("chr1", p, seq[p - 1], b) for p in (1, 2, 50, 120, 250, 251, 400, 499, 500) for b in "ACGT"
            if b != seq[p - 1]]
    return {"chr1": seq}, pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt"])


def _scoring_child(lm, genome, variants, cache_dir, kill_after_calls: int, kill_in_put: int | None) -> None:
    calls = Counter()
    real = lm.log_likelihoods

    def log_likelihoods(seqs, reduce="mean"):
        if calls["batches"] == kill_after_calls:
            os.kill(os.getpid(), signal.SIGKILL)
        calls["batches"] += 1
        return real(seqs, reduce)
    lm.log_likelihoods = log_likelihoods
    if kill_in_put is not None:  # die between writing an entry's temporary file and renaming it
        real_replace = cache_module.os.replace

        def replace(src, dst):
            calls["puts"] += 1
            if calls["puts"] == kill_in_put:
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
        cache_module.os.replace = replace
    score_variants(lm, genome, variants, window=48, batch_size=4, cache_dir=cache_dir, shared_prefix=False,
                   progress=False)


@pytest.mark.parametrize("kill_in_put", [None, 7])
def test_killed_variant_scoring_resumes_from_its_cache(toy_variants, tmp_path, kill_in_put):
    genome, variants = toy_variants
    lm = TinyDNALM(seed=5, max_length=64)
    expected = score_variants(lm, genome, variants, window=48, batch_size=4, shared_prefix=False, progress=False)
    proc = FORK.Process(target=_scoring_child, args=(lm, genome, variants, tmp_path, 3, kill_in_put))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -signal.SIGKILL
    cached = len([p for p in tmp_path.rglob("*.json") if not p.name.startswith(".tmp-")])
    assert cached == (12 if kill_in_put is None else 6)  # three batches of four / six entries renamed
    if kill_in_put is not None:
        assert len(list(tmp_path.rglob(".tmp-*.json"))) == 1  # the entry it was writing never became visible
    out = score_variants(lm, genome, variants, window=48, batch_size=4, cache_dir=tmp_path, shared_prefix=False,
                         progress=False)
    stats = out.attrs["scoring"]
    assert stats["from_cache"] == cached and stats["computed"] == stats["windows"] - cached
    assert stats["corrupted_cache_entries"] == 0
    assert np.array_equal(out[["ref_ll", "alt_ll", "delta_ll"]].to_numpy(),
                          expected[["ref_ll", "alt_ll", "delta_ll"]].to_numpy())


def test_damaged_cache_entries_are_detected_and_rescored(toy_variants, tmp_path, caplog):
    genome, variants = toy_variants
    lm = KmerModel(k=3).fit(genome["chr1"][:300])
    first = score_variants(lm, genome, variants, window=48, cache_dir=tmp_path, progress=False)
    files = sorted(tmp_path.rglob("*.json"))
    entry = json.loads(files[0].read_text())
    entry["score"] = entry["score"] + 1e-9                       # a number changed by one digit, checksum kept
    files[0].write_text(json.dumps(entry))
    files[1].write_bytes(files[2].read_bytes())                  # a valid entry, but for another window
    files[3].write_text("")                                      # renamed but never written (power cut)
    files[4].write_text(files[4].read_text().replace('"score": ', '"score": "') .replace(', "checksum', '", "checksum'))
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.variants.cache"):
        out = score_variants(lm, genome, variants, window=48, cache_dir=tmp_path, progress=False)
    stats = out.attrs["scoring"]
    assert stats["corrupted_cache_entries"] == 4 and stats["computed"] == 4
    assert caplog.text.count("is damaged") == 4 and "another model or sequence" in caplog.text
    assert np.array_equal(out[["ref_ll", "alt_ll", "delta_ll"]].to_numpy(),
                          first[["ref_ll", "alt_ll", "delta_ll"]].to_numpy())
    again = score_variants(lm, genome, variants, window=48, cache_dir=tmp_path, progress=False)
    assert again.attrs["scoring"]["corrupted_cache_entries"] == 0 and again.attrs["scoring"]["computed"] == 0


def test_cache_entries_of_another_model_are_never_returned(tmp_path):
    a, b = WindowCache(tmp_path, "model-a"), WindowCache(tmp_path, "model-b")
    a.put("ACGT", -1.25)
    assert a.get("ACGT") == -1.25 and b.get("ACGT") is None
    b.path("ACGT").parent.mkdir(parents=True, exist_ok=True)
    b.path("ACGT").write_bytes(a.path("ACGT").read_bytes())  # copied across by hand
    assert b.get("ACGT") is None and b.corrupted == 1


# --- unsafe loading ------------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs ``open(marker, "w")``: the proof that a loader executed code from a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD-RAN"
    pickle.loads(pickle.dumps(Payload(path))).close()  # the payload works when unpickled...
    assert path.exists()
    path.unlink()
    yield path
    assert not path.exists(), "a loader executed a pickled payload"  # ...and no loader below ran it


def test_checkpoint_loaders_refuse_a_pickle(tmp_path, marker, ss_data):
    run = tmp_path / "run"
    train.train(_lora_model(), ss_data[0], None, _config(run, max_steps=2, warmup_steps=0, eval_every=100))
    last = checkpoint.latest_checkpoint(run / "checkpoints")
    tensors, _ = checkpoint.load_checkpoint(last)
    torch.save({k: Payload(marker) for k in tensors}, last / "tensors.safetensors")  # torch.save's zip pickle
    with pytest.raises(ValueError, match="not a valid safetensors file.*never unpickled"):
        checkpoint.load_checkpoint(last)
    (last / "tensors.safetensors").write_bytes(pickle.dumps(Payload(marker)))  # a plain pickle
    with pytest.raises(ValueError, match="never unpickled"):
        train.train(_lora_model(), ss_data[0], None, _config(run, resume=True, max_steps=4, warmup_steps=0,
                                                            eval_every=100))


def test_model_loader_refuses_a_pickled_bin_and_prefers_safetensors(tmp_path, marker):
    model, tok = models.load_esm2("tiny", task="token", num_labels=3)
    folder = tmp_path / "esm2"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    state = dict(model.state_dict(), payload=Payload(marker))
    torch.save(state, folder / "pytorch_model.bin")
    again, _ = models.load_esm2(str(folder), task="token", num_labels=3)  # model.safetensors wins; .bin untouched
    assert torch.equal(again.classifier.weight, model.classifier.weight)
    (folder / "model.safetensors").unlink()
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load .*not unpickled.*model\.safetensors"):
        models.load_esm2(str(folder), task="token", num_labels=3)


def test_adapter_and_dna_model_loaders_refuse_a_pickled_bin(tmp_path, marker):
    adapter = tmp_path / "adapter"
    _lora_model().save_pretrained(str(adapter))
    (adapter / "adapter_model.safetensors").unlink()
    torch.save({"payload": Payload(marker)}, adapter / "adapter_model.bin")
    with pytest.raises(pickle.UnpicklingError, match=r"refused to load the adapter in .*not unpickled.*safetensors"):
        lora.load_adapter(models.random_esm2(models.tiny_esm2_config(), "token", 3), str(adapter))
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        lora.load_adapter(models.random_esm2(models.tiny_esm2_config(), "token", 3), str(tmp_path))
    from transformers import GPT2Config, GPT2LMHeadModel

    dna = tmp_path / "dna"
    GPT2LMHeadModel(GPT2Config(vocab_size=8, n_positions=16, n_embd=8, n_layer=1, n_head=2)).save_pretrained(dna)
    (dna / "model.safetensors").unlink()
    torch.save({"payload": Payload(marker)}, dna / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match="refused to load .*not unpickled"):
        HFCausalLM(str(dna), tokenizer=object())


def test_package_source_never_unpickles():
    """Weights load through safetensors or torch.load(weights_only=True); nothing calls pickle.load."""
    offenders = []
    for path in (ROOT / "bioft_tutorial").rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\((?P<args>[^)]*)\)", text):
            if "weights_only=True" not in match["args"]:
                offenders.append(f"{path.name}: {match[0]}")
        unsafe = (r"pickle\.loads?\(|np\.load\([^)]*allow_pickle=True|pd\.read_pickle\(|joblib\.load\("
                  r"|weights_only=False\s*[,)]")
        offenders += [f"{path.name}: {m[0]}" for m in re.finditer(unsafe, text)]
    assert not offenders, offenders


def test_trust_remote_code_is_off_unless_passed(monkeypatch):
    import transformers

    seen = []

    def fake(name, *args, **kwargs):
        seen.append((name, kwargs.get("trust_remote_code", "not passed")))
        raise OSError("offline (test)")

    monkeypatch.setattr(models.EsmForMaskedLM, "from_pretrained", classmethod(lambda cls, n, *a, **k: fake(n, *a, **k)))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    for call in (lambda: models.load_esm2("someone/esm2-like", task="mlm"),
                 lambda: HFCausalLM("someone/dna-model")):
        with pytest.raises(OSError):
            call()
    assert seen == [("someone/esm2-like", False), ("someone/dna-model", False)]
    seen.clear()
    with pytest.raises(OSError):
        models.load_esm2("someone/esm2-like", task="mlm", trust_remote_code=True)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda n, **k: seen.append(
        (n, k["trust_remote_code"])) or GPT2())
    with pytest.raises(OSError):  # the model loads, then the (fake, offline) tokenizer fails
        HFCausalLM("someone/dna-model", trust_remote_code=True)
    assert seen == [("someone/esm2-like", True), ("someone/dna-model", True), ("someone/dna-model", True)]


def GPT2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=8, n_positions=16, n_embd=8, n_layer=1, n_head=2))


def test_downloads_are_verified_and_a_mismatch_is_deleted(tmp_path):
    source = tmp_path / "remote" / "weights.safetensors"
    source.parent.mkdir()
    source.write_bytes(b"genuine bytes")
    good = hashlib.sha256(b"genuine bytes").hexdigest()
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        data.fetch_file(source.as_uri(), "ab" * 32, cache_dir=cache)
    assert source.as_uri() in str(err.value) and good in str(err.value) and "deleted" in str(err.value)
    assert not any(cache.iterdir())  # nothing unverified is left behind, not even a partial file
    got = data.fetch_file(source.as_uri(), good, cache_dir=cache)
    assert got.read_bytes() == b"genuine bytes"
    got.write_bytes(b"tampered in the cache")  # a cached copy is re-verified on every call and re-downloaded
    assert data.fetch_file(source.as_uri(), good, cache_dir=cache).read_bytes() == b"genuine bytes"
    source.write_bytes(b"changed upstream")
    got.unlink()
    with pytest.raises(DataError, match="does not match"):
        data.fetch_file(source.as_uri(), good, cache_dir=cache)
    assert not any(cache.iterdir())


def test_these_tests_cannot_reach_the_network():
    from conftest import NetworkBlocked

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(NetworkBlocked):
        socket.getaddrinfo("pypi.org", 443)
