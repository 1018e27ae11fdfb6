"""Run profiles: one switch, ``BIOFT_PROFILE=smoke|full``, turned into every notebook's defaults.

``smoke`` runs offline on a CPU in minutes: tiny random-weight ESM-2 models (the real architecture and
vocabulary, shrunk), the shipped data subsets and a k-mer DNA model. Its numbers show that the code
runs and that a model learns; they are **not** results.

``full`` is what a reader runs on a GPU workstation with internet access: the real checkpoints
(``facebook/esm2_t33_650M_UR50D``, Evo 2 7B through the ``evo2`` package), the full data and CUDA.

Only :func:`get_profile` reads the environment variable; notebooks read it once, in their
``parameters`` cell, and papermill can override any single value.
"""
from __future__ import annotations

import html
import os
from dataclasses import asdict, dataclass, replace

PROFILE_ENV = "BIOFT_PROFILE"
PROFILES = ("smoke", "full")


@dataclass(frozen=True)
class Profile:
    """Defaults for one profile. Field names are the notebooks' parameter names."""

    name: str
    device: str  # "cpu" or "cuda"
    esm_model: str  # "tiny", a hub id or a local folder
    esm_family_sizes: tuple[str, ...]  # sizes shown in the family tables
    evo2_model: str  # "kmer" (smoke) or an Evo 2 checkpoint name for the evo2 package
    # data sizes (None = all)
    n_embed_chains: int
    ss_train_chains: int | None
    ss_eval_chains: int | None
    dms_max_mutants: int | None
    brca1_max_variants: int | None
    # training budget
    max_steps: int
    dms_max_steps: int
    token_budget: int  # tokens per batch (padding included) for length-bucketed batches
    eval_every: int
    learning_rate: float
    lora_learning_rate: float
    # variant scoring
    dna_window: int
    dna_batch_size: int
    seed: int = 0
    trainer_max_steps: int = 40  # notebook 03: steps of the Hugging Face Trainer comparison
    fast_path: bool = False  # notebook 03: packed rows + compiled layers for per-residue training (GPU)
    evo2_finetune_model: str = "tiny"  # notebook 06: "tiny" (random tiny transformer) or an Evo 2 model_name
    evo2_finetune_window: int = 128  # notebook 06: bases per window (embeddings and LoRA)
    evo2_layer_step: int = 1  # notebook 06: the layer sweep probes every n-th block (and the last)
    evo2_lora_steps: int = 40  # notebook 06: LoRA optimizer steps

    def as_dict(self) -> dict:
        """Plain dict, e.g. for a notebook's parameter table."""
        return asdict(self)

    @property
    def is_smoke(self) -> bool:
        return self.name == "smoke"

    def banner(self) -> str:
        """One line for the top of a page: which profile produced the outputs below."""
        if self.is_smoke:
            return (
                "Outputs on this page come from the SMOKE profile: tiny random-weight models of the real architectures "
                "(ESM-2, a small DNA transformer) and a k-mer DNA model, on a CPU. "
                "They show that the code runs and that a model learns; they are not results. "
                "Run with BIOFT_PROFILE=full on a GPU for real numbers."
            )
        return (
            f"Outputs on this page come from the FULL profile: {self.esm_model} on {self.device}, "
            f"Evo 2 model {self.evo2_model}."
        )

    def show(self, **models) -> "ProfileBanner":
        """A display object for notebooks, the last line of a cell: ``profile.show(esm_model=model_name)``
        renders the banner with the model the page really runs (a papermill parameter may have changed it)."""
        return ProfileBanner(replace(self, **models))


class ProfileBanner:
    """What a notebook displays under its title: which profile produced the outputs on the page."""

    def __init__(self, profile: Profile):
        self.profile = profile

    def _repr_html_(self) -> str:
        kind = "warning" if self.profile.is_smoke else "note"
        return (
            f'<div class="admonition {kind} bioft-profile-banner" data-profile="{self.profile.name}">'
            f'<p class="admonition-title">Profile: {self.profile.name}</p>'
            f"<p>{html.escape(self.profile.banner())}</p></div>"
        )

    def __repr__(self) -> str:
        return f"[profile: {self.profile.name}] {self.profile.banner()}"


#: Every knob with its (smoke, full) value, side by side.
_VALUES: dict[str, tuple] = {
    "device": ("cpu", "cuda"),
    "esm_model": ("tiny", "facebook/esm2_t33_650M_UR50D"),
    "esm_family_sizes": (("8M", "35M", "150M", "650M", "3B", "15B"),) * 2,
    "evo2_model": ("kmer", "evo2_7b"),
    "n_embed_chains": (24, 512),
    "ss_train_chains": (2000, None),
    "ss_eval_chains": (200, None),
    "dms_max_mutants": (1200, None),
    "brca1_max_variants": (None, None),
    "max_steps": (150, 3000),
    "dms_max_steps": (40, 1500),
    "token_budget": (4096, 16384),
    "eval_every": (50, 250),
    "learning_rate": (2e-3, 5e-5),
    "lora_learning_rate": (2e-3, 5e-4),
    "dna_window": (8192, 8192),
    "dna_batch_size": (16, 8),
    "trainer_max_steps": (40, 500),
    "fast_path": (False, True),
    "evo2_finetune_model": ("tiny", "evo2_7b"),
    "evo2_finetune_window": (128, 8192),
    "evo2_layer_step": (1, 4),
    "evo2_lora_steps": (40, 300),
}
_SMOKE = Profile(name="smoke", **{field: values[0] for field, values in _VALUES.items()})
_FULL = Profile(name="full", **{field: values[1] for field, values in _VALUES.items()})


def get_profile(name: str | None = None, **overrides) -> Profile:
    """Return the defaults of a profile.

    Args:
        name: ``"smoke"`` or ``"full"``. ``None`` reads ``$BIOFT_PROFILE`` (default ``"smoke"``).
        **overrides: fields to replace, e.g. ``max_steps=50``.

    Raises:
        ValueError: for an unknown profile name or field.
    """
    if name is None:
        name = os.environ.get(PROFILE_ENV, "smoke").strip().lower() or "smoke"
    if name not in PROFILES:
        raise ValueError(
            f"unknown profile {name!r} (from ${PROFILE_ENV} or the 'profile' parameter); "
            f"use one of {PROFILES}, e.g. BIOFT_PROFILE=smoke make book"
        )
    base = _SMOKE if name == "smoke" else _FULL
    unknown = set(overrides) - set(asdict(base))
    if unknown:
        raise ValueError(f"unknown profile field(s) {sorted(unknown)}; known: {sorted(asdict(base))}")
    return replace(base, **overrides)
