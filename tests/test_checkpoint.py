"""Checkpoints that fit a workstation: only what trains is stored, at most the latest and the best are kept, and a
full disk gives a clear error while the previous checkpoint stays loadable."""
from __future__ import annotations

import errno
import json
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from bioft_tutorial import checkpoint, data, lora, models, predict, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def chains():
    df = data.load_flip_secondary_structure(max_chains=30, seed=3)
    crop = dict(max_residues=62, overlap=16, as_dataset=False)
    tok = models.load_tokenizer()
    return (data.secondary_structure_examples(df[df.split == "train"], tok, **crop),
            data.secondary_structure_examples(df[df.split == "validation"].head(6), tok, **crop))


def _model(method: str):
    base = models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=0)
    return lora.prepare_model(base, method, lora.esm2_lora_config(dropout=0.0) if method == "lora" else None)


def _config(out, **kw):
    return train.TrainConfig(**{"output_dir": str(out), "max_steps": 6, "warmup_steps": 0, "token_budget": 512,
                                "min_token_budget": 128, "eval_every": 2, "save_every": 2, "progress": False,
                                "device": "cpu", **kw})


def test_lora_checkpoints_hold_only_the_adapters_and_the_head(chains, tmp_path):
    model = _model("lora")
    train.train(model, *chains, _config(tmp_path))
    tensors, _ = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path / "checkpoints"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {k[len("model/"):] for k in tensors if k.startswith("model/")} == trainable
    assert all("lora_" in n or "classifier" in n for n in trainable)
    stored = sum(t.numel() for k, t in tensors.items() if k.startswith("model/"))
    assert stored < 0.25 * sum(p.numel() for p in model.parameters())  # tiny model; 650M: 0.7% of the weights


def test_full_fine_tuning_keeps_the_latest_and_the_best_only(chains, tmp_path):
    train.train(_model("full"), *chains, _config(tmp_path, save_every=1, eval_every=1))
    assert [p.name for p in sorted((tmp_path / "checkpoints").glob("step-*"))] == ["step-000006"]
    assert (tmp_path / "best" / "tensors.safetensors").is_file()
    assert not list(tmp_path.rglob("*.tmp"))


def test_best_weights_are_written_with_checkpoints_not_at_every_evaluation(chains, tmp_path, monkeypatch):
    writes = []
    real = checkpoint.save_checkpoint

    def counting(folder, *args, **kwargs):
        writes.append(Path(folder).name)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", counting)
    result = train.train(_model("lora"), *chains, _config(tmp_path, eval_every=1, save_every=None))
    assert writes == ["best"]  # six evaluations, no checkpoints: the best weights are written once, at the end
    assert not (tmp_path / "checkpoints").exists()
    best_scores = json.loads((tmp_path / "best" / "state.json").read_text())["scores"]
    assert best_scores["accuracy"] == pytest.approx(result.best_metric)
    assert (tmp_path / "best" / "adapter" / "adapter_config.json").is_file()


def test_too_little_free_disk_is_refused_before_writing(chains, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train.train(_model("full"), *chains, _config(out, max_steps=2))
    previous = checkpoint.latest_checkpoint(out / "checkpoints")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(checkpoint.DiskFullError) as err:
        train.train(_model("full"), *chains, _config(out, max_steps=4, resume=True))
    message = str(err.value)
    assert str(out) in message and "1,000 bytes" in message and "needs" in message and "resume=True" in message
    assert err.value.errno == errno.ENOSPC and err.value.needed > err.value.free == 1000
    assert checkpoint.latest_checkpoint(out / "checkpoints") == previous
    checkpoint.load_checkpoint(previous)  # still whole


def test_disk_full_during_a_save_leaves_the_previous_checkpoint(chains, tmp_path, monkeypatch):
    """ENOSPC half-way through writing the tensors of step 4: our error, no temporary folder left behind, and
    latest.json still names step 2, which loads and resumes."""
    out = tmp_path / "run"
    real = checkpoint.save_file

    def fills_the_disk(tensors, filename):
        if "step-000004" in filename:
            Path(filename).write_bytes(b"\0" * 100)  # part of the file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename)

    monkeypatch.setattr(checkpoint, "save_file", fills_the_disk)
    with pytest.raises(checkpoint.DiskFullError, match=r"not enough free disk to write .*step-000004"):
        train.train(_model("lora"), *chains, _config(out))
    assert checkpoint.latest_checkpoint(out / "checkpoints").name == "step-000002"
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(checkpoint, "save_file", real)
    result = train.train(_model("lora"), *chains, _config(out, resume=True))
    assert list(result.history["step"]) == list(range(1, 7))


def test_a_safetensors_error_about_space_is_a_disk_full_error(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def broken(tensors, filename):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(checkpoint.DiskFullError):
        checkpoint.save_checkpoint(tmp_path / "ckpt", {"w": torch.ones(3)}, {"step": 1})
    assert not list(tmp_path.iterdir())


def test_save_best_false_writes_nothing_and_still_restores_the_best(chains, tmp_path):
    model = _model("full")
    result = train.train(model, *chains, _config(tmp_path, eval_every=1, save_every=None, save_best=False))
    assert not (tmp_path / "best").exists() and not (tmp_path / "checkpoints").exists()
    assert result.best_step is not None
    again = predict.evaluate(model, chains[1], token_budget=512)["accuracy"]  # the restored best weights
    assert again == pytest.approx(result.best_metric)
