"""Readers for the book's data, validated on load, and a verified download cache.

Shipped with the package (see ``bioft_tutorial/assets/*/SOURCE.md`` for origin and licence):

* FLIP secondary structure (NetSurfP-2.0 chains, H/E/C labels, resolved-residue mask):
  :func:`load_flip_secondary_structure`.
* ProteinGym BLAT_ECOLX_Stiffler_2015 DMS (4,996 single substitutions of TEM-1):
  :func:`load_blat_dms`, :func:`blat_wild_type`.
* The Findlay et al. 2018 BRCA1 SGE table and the hg19 chr17 region FASTA: :func:`asset_path`.

Every reader raises :class:`DataError` (a ``ValueError``) naming the file, line or row and the fix.
"""
from __future__ import annotations

from .batching import IGNORE_INDEX, MAX_RESIDUES, Examples, collate_padded, padding_fraction, token_budget_batches
from .examples import (crop_windows, dms_split, encode_protein, secondary_structure_examples,
                       sequence_regression_examples)
from .files import (DataError, asset_path, atomic_write_bytes, default_cache_dir, fetch_file, parse_fasta,
                    read_fasta, read_fasta_headers, read_table, sha256_file, write_fasta)
from .mutants import (AMINO_ACIDS, WILD_TYPE_NAMES, Substitution, apply_mutant, is_wild_type,
                      mutants_from_sequences, parse_mutant, single_mutants)
from .sets import (BLAT_N_MUTANTS, FLIP_SS_COUNTS, SS_LABELS, blat_wild_type, load_blat_dms,
                   load_flip_secondary_structure, read_dms_csv, read_flip_fasta, validate_token_labels)

__all__ = [
    "AMINO_ACIDS",
    "BLAT_N_MUTANTS",
    "DataError",
    "Examples",
    "FLIP_SS_COUNTS",
    "IGNORE_INDEX",
    "MAX_RESIDUES",
    "SS_LABELS",
    "Substitution",
    "WILD_TYPE_NAMES",
    "apply_mutant",
    "asset_path",
    "atomic_write_bytes",
    "blat_wild_type",
    "collate_padded",
    "crop_windows",
    "default_cache_dir",
    "dms_split",
    "encode_protein",
    "fetch_file",
    "is_wild_type",
    "load_blat_dms",
    "load_flip_secondary_structure",
    "mutants_from_sequences",
    "padding_fraction",
    "parse_fasta",
    "parse_mutant",
    "read_dms_csv",
    "read_fasta",
    "read_fasta_headers",
    "read_flip_fasta",
    "read_table",
    "secondary_structure_examples",
    "sequence_regression_examples",
    "sha256_file",
    "single_mutants",
    "token_budget_batches",
    "validate_token_labels",
    "write_fasta",
]
