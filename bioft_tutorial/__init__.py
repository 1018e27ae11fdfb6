"""bioft_tutorial: the companion package of the bioft book.

Fine-tune ESM-2 (proteins) and Evo 2 (DNA) with LoRA on a GPU, and score variants with them.
Each module is one concept and can be copied into another project with only torch, transformers
and peft beside it: ``data``, ``models``, ``lora``, ``train``, ``zero_shot``, ``embeddings`` (ESM-2 hidden states
from any layer), ``variants``,
``metrics``, ``intervals`` (confidence intervals), ``leakage`` (identity between splits), ``plots``,
``hf_trainer`` (the Hugging Face Trainer baseline), ``results`` (stored GPU measurements), ``cli`` (the ``bioft``
command line);
``profile`` turns ``BIOFT_PROFILE`` into notebook defaults.
"""
__version__ = "0.1.0"
