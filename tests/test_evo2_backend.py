"""Evo2LM.load: checkpoint names, local files, random weights, and the package's own error when offline.

The ``evo2`` package (and its ``vortex`` runtime) needs CUDA, so these tests put a stand-in ``evo2`` module in
its place whose ``Evo2`` does what the real one does first: ask the Hugging Face Hub for the checkpoint.
"""
from __future__ import annotations

import sys
import types

import pytest

from bioft_tutorial.variants import evo2_backend
from bioft_tutorial.variants.evo2_backend import ARCHITECTURES, Evo2LM, Evo2NotFoundError


@pytest.fixture
def fake_evo2(monkeypatch, tmp_path):
    """An ``evo2`` module whose ``Evo2`` downloads like the real one, with an empty hub cache and the hub offline."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    calls = []

    class Evo2:
        def __init__(self, model_name, local_path=None, use_kernels=False):
            calls.append((model_name, local_path))
            if local_path is None:
                huggingface_hub.snapshot_download(repo_id=f"arcinstitute/{model_name}")
            raise RuntimeError("stand-in: no model to build")

    module = types.ModuleType("evo2")
    module.Evo2 = Evo2
    monkeypatch.setitem(sys.modules, "evo2", module)
    return calls


def test_offline_without_a_cached_checkpoint_gives_our_error(fake_evo2, tmp_path):
    with pytest.raises(Evo2NotFoundError) as info:
        Evo2LM.load("evo2_7b")
    message = str(info.value)
    for part in ("'evo2_7b' is not on this machine", "HF_HUB_OFFLINE=1", str(tmp_path / "hub"),
                 "Evo2('evo2_7b')", "'/path/evo2_7b.pt'", "model_name='evo2_7b:random'"):
        assert part in message, part
    assert info.value.__cause__ is None and "LocalEntryNotFoundError" not in message
    assert fake_evo2 == [("evo2_7b", None)]


def test_local_file_is_named_after_its_checkpoint(fake_evo2, tmp_path):
    weights = tmp_path / "evo2_1b_base.pt"
    weights.write_bytes(b"")
    with pytest.raises(RuntimeError, match="stand-in"):
        Evo2LM.load(str(weights))
    assert fake_evo2 == [("evo2_1b_base", str(weights))]  # the file, never the hub
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Evo2LM.load(str(tmp_path / "evo2_7b.pt.missing/evo2_7b.pt"))
    other = tmp_path / "my_model.pt"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="named after one"):
        Evo2LM.load(str(other))


def test_random_weights_map_each_name_to_its_architecture(monkeypatch):
    built = []

    def from_config(cls, config, *, seed=0, batch_size=8, **overrides):
        built.append(config)
        lm = object.__new__(cls)
        lm.name = config
        return lm

    monkeypatch.setattr(Evo2LM, "from_config", classmethod(from_config))
    assert Evo2LM.load("evo2_7b:random").name == "evo2_7b (random weights)"
    assert Evo2LM.load("evo2_1b_base:random").name == "evo2_1b_base (random weights)"
    assert built == ["evo2-7b-8k", "evo2-1b-8k"]
    with pytest.raises(ValueError, match="unknown Evo 2 model 'evo2_9b:random'"):
        Evo2LM.load("evo2_9b:random")


def test_every_architecture_is_an_evo2_config_name():
    assert all(config.startswith("evo2-") and config.split("-")[-1] in ("8k", "262k", "1m")
               for config in ARCHITECTURES.values())
    assert evo2_backend.PAD_ID == 1
