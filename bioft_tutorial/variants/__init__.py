"""Zero-shot variant effect scoring with DNA language models, and supervised models on their embeddings.

``delta_ll = mean log-likelihood(alternate window) - mean log-likelihood(reference window)`` for each SNV,
with an 8,192-bp window centred on the variant, as in the Evo 2 BRCA1 analysis.

Modules (each small, readable on its own):

* :mod:`.genome`: reference access (indexed FASTA via pyfaidx, or a dict), region FASTAs, contig names;
* :mod:`.windows`: windows around a variant, the clipping rule, reverse complements;
* :mod:`.vcf`: VCF reader (multi-allelic records split, INFO per allele), INFO as typed columns, VCF writer;
* :mod:`.io`: CSV / Findlay-table readers and the standard variant columns;
* :mod:`.checks`: row-by-row validation against the genome, with errors that say what to do;
* :mod:`.interface`: what a DNA language model must offer to score variants (:class:`DNALanguageModel`);
* :mod:`.kmer`: :class:`KmerModel` (pure numpy) and :func:`fit_kmer_background` (fitted outside the windows);
* :mod:`.neural`: torch causal LMs: :class:`TinyDNALM` (random, for tests), :class:`HFCausalLM`;
* :mod:`.evo2_backend`: :class:`Evo2LM` through the ``evo2`` package (GPU);
* :mod:`.cache`, :mod:`.scoring`: :func:`score_variants` with a resumable, checksummed on-disk cache;
* :mod:`.embeddings`, :mod:`.embedding_cache`: block outputs of a DNA model by forward hooks, pooled per window
  and per variant, with a resumable on-disk cache;
* :mod:`.probe`: probes on those embeddings, cross-validation grouped by exon, the layer sweep;
* :mod:`.finetune`: a classification head on a block, LoRA in the blocks, examples for ``train.train``.

Quick start::

    from bioft_tutorial.variants import Genome, fit_kmer_background, read_vcf, score_variants
    genome = Genome("GRCh37_chr17_BRCA1_region.fa")          # '>NC_000017.10:41100001-41300000'
    variants = read_vcf("my_variants.vcf")
    lm = fit_kmer_background(genome, variants, window=8192, k=6)  # never sees the windows it scores
    scored = score_variants(lm, genome, variants, cache_dir="scores_cache")

Scoring depends only on numpy, pandas, torch, tqdm and pyfaidx (plus ``transformers`` for
:class:`HFCausalLM` and ``evo2`` for :class:`Evo2LM`, imported when used); the embedding cache adds
safetensors, the probes scikit-learn and :mod:`bioft_tutorial.intervals`, fine-tuning peft.
"""
from .cache import WindowCache
from .checks import PROBLEMS, check_variants, describe_problems, problem_report, raise_for_problems
from .evo2_backend import Evo2LM, Evo2NotFoundError
from .genome import Contig, Genome, VariantError, as_genome, canonical_contig, parse_region_id
from .io import read_findlay_xlsx, read_variants_csv, standardize_variants
from .interface import DNALanguageModel
from .kmer import KmerModel, encode_bases, fit_kmer_background
from .neural import HFCausalLM, TinyCausalTransformer, TinyDNALM, TorchCausalLM, perplexity, token_log_probs
from .scoring import SCORE_COLUMNS, score_variants
from .vcf import expand_info, parse_vcf, read_vcf, write_vcf
from .windows import (DEFAULT_WINDOW, VariantWindow, outside, reverse_complement, substitute, variant_window,
                      window_bounds)

__all__ = [
    "Contig", "DEFAULT_WINDOW", "DNALanguageModel", "Evo2LM", "Evo2NotFoundError", "Genome", "HFCausalLM", "KmerModel", "PROBLEMS",
    "SCORE_COLUMNS", "TinyCausalTransformer", "TinyDNALM", "TorchCausalLM", "VariantError", "VariantWindow",
    "WindowCache", "as_genome", "canonical_contig", "check_variants", "describe_problems", "encode_bases",
    "expand_info", "fit_kmer_background", "problem_report", "outside", "parse_region_id", "parse_vcf",
    "perplexity", "raise_for_problems", "read_findlay_xlsx", "read_variants_csv", "read_vcf", "reverse_complement",
    "score_variants", "standardize_variants", "substitute", "token_log_probs", "variant_window", "window_bounds",
    "write_vcf",
]
