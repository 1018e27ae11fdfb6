"""Evo 2 behind the DNA language-model interface, through the official ``evo2`` package (GPU).

``pip install evo2`` brings ``vtx`` (the ``vortex`` runtime that defines Evo 2's StripedHyena architecture).
Nothing here imports them until an :class:`Evo2LM` is made, so the rest of the package works without them.

Tokens are bytes: Evo 2's ``CharLevelTokenizer(512)`` maps each character to its ASCII code (``A`` = 65),
with 1 as padding and no BOS token; :meth:`Evo2LM.log_likelihoods` matches ``Evo2.score_sequences``
(``prepend_bos=False``) except that the log-softmax is taken in float32 rather than bfloat16.

Without the ``flash-attn`` package. vortex imports the compiled module ``flash_attn_2_cuda`` at import time
even when it will not use it. :func:`prepare_vortex_import` registers an empty stand-in module of that name
(only when the real one is missing), and :func:`use_torch_attention` switches the model's attention layers to
PyTorch's ``scaled_dot_product_attention``, the path vortex takes with ``use_flash_attn=False``.

Shared prefixes (:mod:`.neural`). vortex has no batched way to continue a sequence from a cached state (its
generation path steps one token at a time), so :class:`Evo2LM` keeps, for each reference window, what each
block's sequence mixer reads from the prefix: the whole projected input of the long-filter (``hcl``) Hyena
blocks and of the attention blocks, and only the last 8 or 129 positions of the short- and medium-filter
(``hcs``, ``hcm``) blocks, whose filters have 7 and 128 taps (about 1 GB per 8,192-bp window for 7B). An
alternate suffix then runs the dense layers (projections and MLPs) on its own positions only, and each mixer
on the prefix part it needs plus the suffix. Checked on a CPU with a small random StripedHyena in float32:
the same log-likelihoods as full windows to 4e-6 nats; in bfloat16 both paths differ from float32 by
rounding of the same size. Measured on an H100 with the 7B shapes: a suffix costs about 0.6 of a full pass
(the long convolutions and attention still span the window).

Importing vortex writes an empty ``activations_debug.log`` into the working directory and sets the root
logger to INFO with a rich handler; that is vortex's behaviour, not this package's.
"""
from __future__ import annotations

import importlib.util
import logging
import pkgutil
import sys
import types
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .neural import TorchCausalLM

log = logging.getLogger(__name__)
PAD_ID = 1  # CharLevelTokenizer.pad_id
RANDOM = ":random"
#: The ``evo2`` package config of each checkpoint's architecture, for ``"<name>:random"`` (8,192-bp configs
#: where the checkpoint has a longer-context twin of the same shapes).
ARCHITECTURES = {"evo2_7b": "evo2-7b-8k", "evo2_7b_base": "evo2-7b-8k", "evo2_7b_262k": "evo2-7b-262k",
                 "evo2_7b_microviridae": "evo2-7b-8k", "evo2_1b_base": "evo2-1b-8k", "evo2_20b": "evo2-20b-1m",
                 "evo2_40b": "evo2-40b-8k", "evo2_40b_base": "evo2-40b-8k"}


class Evo2NotFoundError(FileNotFoundError):
    """An Evo 2 checkpoint that is neither in the local Hugging Face cache nor downloadable now."""


def _known(arch: str, given: str) -> str:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown Evo 2 model {given!r}; use a checkpoint name ({', '.join(ARCHITECTURES)}), a "
                         "local file named after one ('/path/evo2_7b.pt'), or '<name>:random' for random weights")
    return arch


def _not_found_message(name: str) -> str:
    from huggingface_hub import constants

    why = "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
    merged = Path(constants.HF_HUB_CACHE).parent / f"{name}.pt"
    return (f"Evo 2 checkpoint {name!r} is not on this machine and cannot be downloaded now ({why}): the evo2 "
            f"package looked for the Hugging Face repository of {name!r} in the cache folder "
            f"{constants.HF_HUB_CACHE} and for a merged {merged}. Fix: download it once with internet "
            f"(python -c \"from evo2 import Evo2; Evo2('{name}')\"; set HF_HOME to choose the folder), or pass a "
            f"local checkpoint file as model_name ('/path/{name}.pt'), or, to time the code only, "
            f"model_name='{name}:random' (the same architecture with random weights: its scores mean nothing)")


def has_flash_attn() -> bool:
    """Whether the compiled flash-attn extension is really installed."""
    module = sys.modules.get("flash_attn_2_cuda")
    if module is not None:
        return not getattr(module, "_bioft_stand_in", False)
    return importlib.util.find_spec("flash_attn_2_cuda") is not None


def prepare_vortex_import() -> None:
    """Register an empty ``flash_attn_2_cuda`` stand-in if flash-attn is missing, so ``import vortex`` works."""
    if not has_flash_attn() and "flash_attn_2_cuda" not in sys.modules:
        stand_in = types.ModuleType("flash_attn_2_cuda")
        stand_in._bioft_stand_in = True
        sys.modules["flash_attn_2_cuda"] = stand_in
        log.info("flash-attn not installed: registered a stand-in 'flash_attn_2_cuda'; attention uses torch SDPA")


def use_torch_attention(model: torch.nn.Module) -> int:
    """Switch every vortex ``MHA`` layer of ``model`` to torch SDPA attention; returns how many were switched."""
    from vortex.model.attention import SelfAttention

    switched = 0
    for module in model.modules():
        if type(module).__name__ == "MHA" and getattr(module, "use_flash_attn", False):
            scale = getattr(module.inner_attn, "softmax_scale", None)
            module.inner_attn = SelfAttention(causal=module.causal, softmax_scale=scale, attention_dropout=0.0)
            module.use_flash_attn = False
            switched += 1
    return switched


def evo2_config(config: str | Path = "evo2-7b-8k", **overrides) -> dict:
    """An Evo 2 architecture config: a name from the ``evo2`` package's ``configs/`` or a YAML path.

    ``use_flash_attn`` and ``use_fp8_input_projections`` are switched off when flash-attn / Transformer Engine
    are not installed; ``overrides`` replace any key (e.g. ``num_layers=2`` for a quick check).
    """
    import yaml

    prepare_vortex_import()  # reading evo2's packaged config imports evo2, hence vortex
    path = Path(config)
    if path.suffix in (".yml", ".yaml") and path.exists():
        data = yaml.safe_load(path.read_text())
    else:
        data = yaml.safe_load(pkgutil.get_data("evo2", f"configs/{path.stem}.yml"))
    if not has_flash_attn():
        data["use_flash_attn"] = False
    if importlib.util.find_spec("transformer_engine") is None:
        data["use_fp8_input_projections"] = False
    data.update(overrides)
    return data


def build_evo2_random(config: dict, seed: int = 0, stable_poles: bool = True) -> torch.nn.Module:
    """The StripedHyena architecture of ``config`` with random weights, in Evo 2's dtypes (bf16, fp32 poles).

    For benchmarks and shape checks only: random weights give meaningless scores. vortex draws the long
    filters' ``log_poles`` from a standard normal, so half the filters grow like ``exp(t)`` and overflow;
    ``stable_poles`` redraws them negative (decaying filters) so outputs stay finite. Speed is unaffected.
    """
    prepare_vortex_import()
    from vortex.model.model import StripedHyena
    from vortex.model.utils import dotdict

    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        torch.manual_seed(seed)
        model = StripedHyena(dotdict(config))
        if stable_poles:
            for name, param in model.named_parameters():
                if name.endswith("log_poles"):
                    param.data = -torch.rand_like(param).mul(6.0).sub(4.0).exp()  # rates in e^-4 .. e^2
    model.to_bfloat16_except_pr_lc(to_float32=True)
    return model.eval()


def _history(block: torch.nn.Module) -> int | None:
    """How many positions before the suffix a block's sequence mixer reads (``None``: all of them).

    A Hyena block with finite filters (``hcs``: 7 taps, ``hcm``: 128) applies its 3-tap featurizer filter and
    then its inner filter, so an output depends on the last ``2 + (taps - 1)`` inputs. The long-filter
    (``hcl``) blocks and attention read the whole prefix.
    """
    mixer = getattr(block, "filter", None)
    if mixer is None or getattr(mixer, "fir_inner_filter_length", None) is None:
        return None
    return (mixer.short_filter_length - 1) + (mixer.fir_inner_filter_length - 1)


class Evo2LM(TorchCausalLM):
    """Evo 2 as a DNA language model (``log_likelihoods``, shared-prefix scoring, block outputs).

    Make one with :meth:`load` (a checkpoint name, a local file, or random weights for timing).

    Args:
        model_name: an ``evo2`` checkpoint name (``"evo2_7b"``, ``"evo2_1b_base"``, ``"evo2_40b"``, ...),
            loaded with ``evo2.Evo2`` (downloads from the Hugging Face Hub unless cached or ``local_path``).
        local_path: a local ``.pt`` checkpoint (offline hosts).
        model: an already built vortex ``StripedHyena`` (then ``model_name`` is only a label).
        batch_size: windows per forward pass (8,192-bp windows: 8 fit the 7B model on an 80 GB GPU).
        use_kernels: vortex's opt-in Triton Hyena kernels (``Evo2(use_kernels=True)``).
        max_length: longest sequence (default: the config's ``max_seqlen``).
    """

    def __init__(self, model_name: str = "evo2_7b", *, local_path: str | Path | None = None,
                 model: torch.nn.Module | None = None, batch_size: int = 8, use_kernels: bool = False,
                 max_length: int | None = None):
        if model is None:
            prepare_vortex_import()
            from evo2 import Evo2

            model = Evo2(model_name, local_path=None if local_path is None else str(local_path),
                         use_kernels=use_kernels).model
        if not has_flash_attn() and use_torch_attention(model):
            log.info("flash-attn not installed: attention layers switched to torch SDPA")
        self.model = model.eval()
        self.device = model.embedding_layer.weight.device
        self.hidden_size, self.pad_id = int(model.embedding_layer.weight.shape[1]), PAD_ID
        self.name, self.batch_size = model_name, batch_size
        self.max_length = max_length or int(model.config.get("max_seqlen", 8192))
        self.cache_key = f"evo2:{model_name}:{local_path or 'hub'}"

    @classmethod
    def load(cls, model_name: str | Path = "evo2_7b", *, batch_size: int = 8, use_kernels: bool = False,
             seed: int = 0) -> "Evo2LM":
        """Evo 2 from a checkpoint name, a local checkpoint file, or an architecture with random weights.

        Args:
            model_name: ``"evo2_7b"`` (any name of :data:`ARCHITECTURES`: from the Hugging Face cache, or
                downloaded), ``"/path/evo2_7b.pt"`` (a local file named after its checkpoint, for offline
                hosts), or ``"evo2_7b:random"`` (that architecture, :data:`ARCHITECTURES`, with random weights:
                for timing only, its scores mean nothing).
            batch_size: windows per forward pass; use_kernels: vortex's Triton Hyena kernels;
            seed: seed of random weights.

        Raises:
            Evo2NotFoundError: offline (or no network) and the checkpoint is not cached: the message says
                where it looked and the three ways out.
            ValueError: an unknown name; FileNotFoundError: a local file that does not exist.
        """
        name = str(model_name)
        if name.endswith(RANDOM):
            arch = _known(name[:-len(RANDOM)], name)
            lm = cls.from_config(ARCHITECTURES[arch], seed=seed, batch_size=batch_size)
            lm.name = f"{arch} (random weights)"
            return lm
        path = Path(name).expanduser()
        if path.suffix == ".pt" or "/" in name:
            if not path.is_file():
                raise FileNotFoundError(f"Evo 2 checkpoint file {name!r} does not exist ({path.resolve()}); check the "
                                        f"path, or pass a checkpoint name such as 'evo2_7b'")
            return cls(_known(path.stem, name), local_path=path, batch_size=batch_size, use_kernels=use_kernels)
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        try:
            return cls(_known(name, name), batch_size=batch_size, use_kernels=use_kernels)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled):  # raised by the hub inside evo2
            raise Evo2NotFoundError(_not_found_message(name)) from None

    @classmethod
    def from_config(cls, config: str | Path = "evo2-7b-8k", *, seed: int = 0, batch_size: int = 8,
                    **overrides) -> "Evo2LM":
        """The architecture of ``config`` with **random weights** (benchmarks only), see :func:`evo2_config`."""
        model = build_evo2_random(evo2_config(config, **overrides), seed=seed)
        lm = cls(model=model, model_name=f"{Path(str(config)).stem} (random weights)", batch_size=batch_size)
        lm.cache_key += f":seed{seed}"
        return lm

    def encode(self, seqs: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = np.array([len(s) for s in seqs])
        ids = np.full((len(seqs), int(lengths.max())), PAD_ID, dtype=np.uint8)
        for i, seq in enumerate(seqs):
            ids[i, :len(seq)] = np.frombuffer(seq.encode("ascii"), dtype=np.uint8)
        return (torch.from_numpy(ids).to(self.device, non_blocking=True).long(),
                torch.from_numpy(lengths).to(self.device))

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)[0]

    # --------------------------------------------------------------- shared prefix: a walk over the blocks
    def _blocks(self, x: torch.Tensor, prefix: list | None, parent: torch.Tensor | None, split: int,
                keep: bool) -> tuple[torch.Tensor, list]:
        """Run every block. ``prefix`` given: ``x`` is a suffix and each mixer sees ``prefix[i][parent]`` first."""
        kept = []
        for i, block in enumerate(self.model.blocks):
            x = self.model.cross_device_transfer(x, i)
            attention = hasattr(block, "inner_mha_cls")
            mixed_in = block.pre_norm(x) if attention else block.proj_norm(x)
            if keep:
                history = _history(block)
                kept.append(mixed_in[:, 0 if history is None else max(0, split - history):split].clone())
            full = mixed_in if prefix is None else torch.cat([prefix[i][parent.to(x.device)], mixed_in], dim=1)
            if attention:
                y = block.inner_mha_cls(full, inference_params=None)
                x = y[:, full.shape[1] - x.shape[1]:] + x
                x = block.mlp(block.post_norm(x)) + x
            else:
                y, _ = block.filter(full, inference_params=None, padding_mask=None)
                x = block.res_mlp_norm(block.out_filter_dense(y[:, full.shape[1] - x.shape[1]:]) + x)
        return x, kept

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.model.block_idx_to_device[0])
        return self.model.unembed(self.model.norm(x))

    def _forward_with_cache(self, ids, split):
        x, kept = self._blocks(self.model.embedding_layer(ids), None, None, split, keep=True)
        return self._head(x), kept

    def _forward_suffix(self, ids, cache, parent, split):
        x, _ = self._blocks(self.model.embedding_layer(ids), cache, parent, split, keep=False)
        return self._head(x)
