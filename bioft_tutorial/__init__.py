"""bioft_tutorial: the companion package of the bioft book.

Fine-tune ESM-2 (proteins) and Evo 2 (DNA) with LoRA on a GPU, and score variants with them. One module per
concept, in the order the data flows; each can be copied into another project with only torch, transformers
and peft beside it:

``profile`` (BIOFT_PROFILE to notebook defaults), ``data`` (readers, examples, batches), ``models`` (loading
ESM-2), ``lora`` (PEFT LoRA, the three methods), ``fp8`` (FP8 frozen linears), ``packing`` (packed rows),
``attention`` (per-chain attention in packed rows), ``loss``, ``oom`` (out-of-memory retries), ``train`` (the
step and the loop), ``train_setup`` (config, state, set-up), ``best_weights``, ``history``, ``checkpoint``,
``distributed`` (DDP, FSDP2), ``predict`` (inference in input order), ``zero_shot`` (substitution scores),
``embeddings`` (ESM-2 hidden states), ``variants`` (DNA variants and language models), ``metrics``,
``intervals`` (bootstrap intervals), ``leakage`` (identity between splits), ``plots``, ``hf_trainer`` (the
Trainer baseline), ``results`` (stored GPU measurements), ``environment``, ``cli`` (the ``bioft`` command).
"""
__version__ = "0.1.0"
