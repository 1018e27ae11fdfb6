"""Property tests (hypothesis) for the parsers and the window builders (issue 7).

Round trips where a writer exists (FASTA, VCF), and "no crash other than the documented error" on arbitrary
input (FASTA, mutant strings, VCF lines, protein text, variant tables, damaged cache files). Window rules are
checked against the rule written out again here, not against the package's own output.
"""
from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bioft_tutorial import data
from bioft_tutorial.data import DataError
from bioft_tutorial.variants import (Genome, KmerModel, VariantError, WindowCache, parse_vcf, score_variants,
                                     variant_window, window_bounds, write_vcf)
from bioft_tutorial.zero_shot import AMINO_ACIDS, Substitution, parse_mutant

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ANY_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200)
_ids = st.text(st.characters(codec="ascii", min_codepoint=33, max_codepoint=126), min_size=1, max_size=12).filter(
    lambda s: not s.startswith(">"))
_protein = st.text(AMINO_ACIDS + "XBZUO", min_size=1, max_size=300)


# ------------------------------------------------------------------------------------------------------ FASTA
@FAST
@given(records=st.dictionaries(_ids, _protein, min_size=1, max_size=6), width=st.integers(1, 80))
def test_fasta_write_then_parse_is_the_identity(records, width):
    text = data.write_fasta(records, width=width)
    assert data.parse_fasta(io.StringIO(text), source="x.fa") == records
    assert all(len(line) <= width for line in text.splitlines() if not line.startswith(">"))


@settings(max_examples=25, deadline=None)
@given(records=st.dictionaries(_ids, _protein, min_size=1, max_size=4))
def test_fasta_files_plain_and_gzip_round_trip(records):
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "x.fa"
        data.write_fasta(records, plain, width=50)
        packed = Path(folder) / "x.fa.gz"
        packed.write_bytes(gzip.compress(plain.read_bytes()))
        assert data.read_fasta(plain) == data.read_fasta(packed) == records


@settings(max_examples=100, deadline=None)
@given(text=ANY_TEXT)
def test_fasta_parser_fails_only_with_data_error(text):
    for candidate in (text, ">a\n" + text, text.replace("\n", "\n>")):
        try:
            records = data.parse_fasta(io.StringIO(candidate), source="x.fa")
        except DataError as err:
            assert str(err).startswith("x.fa")  # every message names the source
            continue
        assert records and all(rid and seq for rid, seq in records.items())
        assert all(not any(c.isspace() for c in rid) for rid in records)


@settings(max_examples=100, deadline=None)
@given(seq=ANY_TEXT)
def test_encode_protein_accepts_exactly_the_vocabulary(seq):
    vocab = {aa: i for i, aa in enumerate(AMINO_ACIDS + "XBZUO")}
    try:
        ids = data.encode_protein(seq, vocab, source="s")
    except DataError as err:
        assert not seq or any(aa not in vocab for aa in seq.upper()), seq
        assert "s: " in str(err)
        return
    assert ids == [vocab[aa] for aa in seq.upper()]


# ------------------------------------------------------------------------------------------------ mutants
_wt = st.text(AMINO_ACIDS, min_size=1, max_size=60)


@settings(max_examples=100, deadline=None)
@given(mutant=ANY_TEXT, wt_seq=_wt, offset=st.integers(-5, 5))
def test_mutant_parser_fails_only_with_value_error(mutant, wt_seq, offset):
    try:
        subs = parse_mutant(mutant, wt_seq, offset)
    except ValueError as err:
        assert repr(mutant) in str(err)  # names the offending string
        return
    positions = [s.position for s in subs]
    assert len(set(positions)) == len(positions)
    for s in subs:
        assert 1 <= s.position <= len(wt_seq) and wt_seq[s.position - 1] == s.wt and s.mt in AMINO_ACIDS


@FAST
@given(wt_seq=_wt, data_=st.data(), offset=st.integers(-30, 30))
def test_written_mutants_parse_back(wt_seq, data_, offset):
    positions = data_.draw(st.lists(st.integers(1, len(wt_seq)), min_size=1, max_size=5, unique=True))
    subs = [Substitution(wt_seq[p - 1], p, data_.draw(st.sampled_from(AMINO_ACIDS))) for p in positions]
    text = ":".join(f"{s.wt}{s.position + offset}{s.mt}" for s in subs)
    assert parse_mutant(text, wt_seq, offset) == tuple(subs)


@FAST
@given(wt_seq=_wt.filter(lambda s: len(s) >= 3), data_=st.data())
def test_off_by_one_suggests_the_offset_that_fixes_it(wt_seq, data_):
    """A mutant numbered one too high (or low) names the offset that makes it parse."""
    p = data_.draw(st.integers(2, len(wt_seq) - 1))
    shift = data_.draw(st.sampled_from([-1, 1]))
    written = p + shift
    assume(wt_seq[written - 1] != wt_seq[p - 1])
    mutant = f"{wt_seq[p - 1]}{written}A"
    with pytest.raises(ValueError) as err:
        parse_mutant(mutant, wt_seq)
    if "offset=" in str(err.value):
        suggested = int(str(err.value).rsplit("offset=", 1)[1].split()[0].rstrip(".,;"))
        assert parse_mutant(mutant, wt_seq, offset=suggested)[0].wt == wt_seq[written - suggested - 1]


# ----------------------------------------------------------------------------------------------------- VCF
_chrom = st.text("ABCXYZ0123456789_chr", min_size=1, max_size=8)
_allele = st.text("ACGTN", min_size=1, max_size=5)
_vcf_row = st.tuples(_chrom, st.integers(1, 10**9), st.one_of(st.just("."), st.text("rs0123456789", min_size=1,
                                                                                      max_size=8)),
                     _allele, st.lists(_allele, min_size=1, max_size=3),
                     st.one_of(st.just(float("nan")), st.floats(0, 1e4, allow_nan=False).map(lambda q: round(q, 2))),
                     st.sampled_from(["PASS", ".", "q10"]))


@FAST
@given(rows=st.lists(_vcf_row, max_size=8))
def test_vcf_write_then_read_is_the_identity(rows):
    records = [(c, p, i, r, a, q, f) for c, p, i, r, alts, q, f in rows for a in alts]
    df = pd.DataFrame(records, columns=["chrom", "pos", "id", "ref", "alt", "qual", "filter"])
    df["info"] = "."
    again = parse_vcf(write_vcf(df).splitlines(True), source="w.vcf")
    assert list(again["allele"]) == [1] * len(df)  # one record per ALT allele
    for column in ("chrom", "pos", "id", "ref", "alt", "filter", "info"):
        assert list(again[column]) == list(df[column]), column
    assert np.allclose(again["qual"].to_numpy(float), df["qual"].to_numpy(float), equal_nan=True)


_field = st.text(st.characters(codec="utf-8", exclude_characters="\t\n\r", exclude_categories=["Cs"]), max_size=12)


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.lists(st.one_of(_field, st.sampled_from(["17", "5", ".", "A", "C,T", "PASS", "AF=0.1,0.2"])),
                               max_size=10).map("\t".join), max_size=6))
def test_vcf_parser_on_arbitrary_tab_separated_lines(lines):
    """Arbitrary records after a valid header: parsed rows or a VariantError naming the file and line."""
    text = "##fileformat=VCFv4.2\n##INFO=<ID=AF,Number=A>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    try:
        df = parse_vcf((text + "\n".join(lines) + "\n").splitlines(True), source="f.vcf")
    except VariantError as err:
        assert "f.vcf, line " in str(err)
        return
    assert df["pos"].dtype == np.int64 and (df["pos"] >= 0).all() and df.index.name == "line"
    assert (df["allele"] >= 1).all()


# --------------------------------------------------------------------------------------------------- windows
@st.composite
def _region_genome(draw):
    """A region record placed at a chromosome offset, a variant inside it, and a window length."""
    seq = draw(st.text("ACGT", min_size=1, max_size=400))
    first = draw(st.integers(1, 10**6))  # 1-based chromosome position of the record's first base
    pos = draw(st.integers(first, first + len(seq) - 1))
    window = draw(st.integers(1, 600))
    return seq, first, pos, window


@settings(max_examples=100, deadline=None)
@given(case=_region_genome(), by_header=st.booleans())
def test_window_rule_on_region_records(case, by_header):
    seq, first, pos, window = case
    record = f"chrZ:{first}-{first + len(seq) - 1}" if by_header else "piece"
    genome = Genome({record: seq}, starts=None if by_header else {"piece": first},
                    aliases=None if by_header else {"chrZ": "piece"})
    ref = seq[pos - first]
    alt = "A" if ref != "A" else "C"
    w = variant_window(genome, "chrZ", pos, ref, alt, window=window)
    # the rule, written out again: ideal span [pos-1-W//2, pos-1-W//2+W), clipped to the record, never shifted
    ideal = pos - 1 - window // 2
    lo, hi = max(ideal, first - 1), min(ideal + window, first - 1 + len(seq))
    assert (w.start, w.end) == (lo, hi) == window_bounds(pos, window, first - 1, first - 1 + len(seq))
    assert w.ref_seq == seq[lo - (first - 1):hi - (first - 1)] and len(w.ref_seq) <= window
    assert w.variant_index == pos - 1 - lo and w.ref_seq[w.variant_index] == ref
    if ideal >= first - 1:
        assert w.variant_index == window // 2  # not clipped on the left: the documented index
    if ideal >= first - 1 and ideal + window <= first - 1 + len(seq):
        assert len(w.ref_seq) == window  # not clipped at all: full length
    assert w.alt_seq[w.variant_index] == alt and sum(a != b for a, b in zip(w.ref_seq, w.alt_seq)) == 1


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 400), data_=st.data())
def test_positions_outside_the_record_raise_variant_error(length, data_):
    genome = Genome({"c": "A" * length})
    pos = data_.draw(st.one_of(st.integers(-5, 0), st.integers(length + 1, length + 50)))
    with pytest.raises(VariantError, match=rf"c:{pos}\b.*1-based"):
        variant_window(genome, "c", pos, "A", "C", window=8)


@settings(max_examples=100, deadline=None)
@given(length=st.integers(1, 5000), max_residues=st.integers(16, 1100), data_=st.data())
def test_protein_crops_own_every_residue_once(length, max_residues, data_):
    overlap = data_.draw(st.integers(0, max_residues - 1))
    crops = data.crop_windows(length, max_residues, overlap)
    owned = np.zeros(length, dtype=int)
    for start, end, own_start, own_end in crops:
        assert 0 <= start <= own_start < own_end <= end <= length and end - start <= max_residues
        owned[own_start:own_end] += 1
        if length > max_residues:
            assert end - start == max_residues  # a long chain is cut into full-size crops only
    assert (owned == 1).all()


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(1, 500), max_size=80), budget=st.integers(1, 3000), padded=st.booleans(),
       seed=st.integers(0, 3))
def test_token_budget_batches_cover_everything_within_budget(lengths, budget, padded, seed):
    lengths = np.asarray(lengths, dtype=np.int64)
    try:
        batches = data.token_budget_batches(lengths, budget, padded=padded, seed=seed)
    except ValueError as err:
        assert lengths.max() > budget and f"token_budget={budget}" in str(err)
        return
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        cost = len(b) * lengths[b].max() if padded else lengths[b].sum()
        assert cost <= budget


# ------------------------------------------------------------------------------------- variant tables, cache
_table_row = st.tuples(st.sampled_from(["c", "chrc", "x", "", "17"]),
                       st.one_of(st.integers(-3, 80), st.just(None), st.sampled_from(["7", "two", "3.0", "nan"])),
                       st.sampled_from(["A", "C", "G", "T", "a", "N", "AT", "", "<DEL>", "*"]),
                       st.sampled_from(["A", "C", "G", "T", "g", "N", "TT", "", "."]))
_GENOME = {"c": "ACGTTGCAAC" * 6}  # 60 bases
_LM = KmerModel(k=2).fit(_GENOME["c"])


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(_table_row, min_size=1, max_size=8))
def test_scoring_arbitrary_variant_tables(rows):
    """Any table: 'raise' gives scores or one VariantError; 'skip' scores what it can and flags the rest."""
    variants = pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt"])
    try:
        strict = score_variants(_LM, _GENOME, variants, window=16, progress=False)
    except VariantError as err:
        assert "cannot be scored" in str(err) and "on_invalid='skip'" in str(err)
        strict = None
    out = score_variants(_LM, _GENOME, variants, window=16, on_invalid="skip", progress=False)
    assert len(out) == len(variants) and list(out.index) == list(variants.index)
    flagged = out["problem"] != ""
    assert out.loc[flagged, "delta_ll"].isna().all() and np.isfinite(out.loc[~flagged, "delta_ll"]).all()
    assert (strict is None) == bool(flagged.any())


@settings(max_examples=60, deadline=None)
@given(seq=st.text("ACGT", min_size=1, max_size=50), score=st.floats(-50, 0), data_=st.data())
def test_a_damaged_cache_entry_is_never_trusted(seq, score, data_):
    """Change any byte of an entry (or cut it short): get() returns the true score or None, never another."""
    with tempfile.TemporaryDirectory() as folder:
        cache = WindowCache(folder, "model-a")
        cache.put(seq, score)
        path = cache.path(seq)
        original = json.loads(path.read_text())
        raw = bytearray(path.read_bytes())
        if data_.draw(st.booleans()):
            i = data_.draw(st.integers(0, len(raw) - 1))
            raw[i] = data_.draw(st.integers(0, 255).filter(lambda b: b != raw[i]))
        else:
            raw = raw[:data_.draw(st.integers(0, len(raw) - 1))]
        path.write_bytes(bytes(raw))
        got = cache.get(seq)
        assert got is None or got == score
        if got is None:
            assert cache.corrupted == 1
        else:  # only a change that JSON reads the same (whitespace, 'e' for 'E') can keep an entry valid
            assert json.loads(bytes(raw)) == original
