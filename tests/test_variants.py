"""bioft_tutorial.variants: genome access, windows, readers, validation, LMs, cached scoring.

Numbers are checked against independent computations written here (slicing, dict counting, a direct forward
pass with a hand-written log-softmax), never against the package's own earlier output.
"""
from __future__ import annotations

import gzip
import itertools
import json
import logging
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bioft_tutorial.data import asset_path
from bioft_tutorial.variants import (Genome, HFCausalLM, KmerModel, TinyDNALM, VariantError, WindowCache,
                                     check_variants, expand_info, fit_kmer_background, parse_vcf, read_findlay_xlsx,
                                     read_variants_csv, read_vcf,
                                     reverse_complement, score_variants, variant_window, window_bounds, write_vcf)

FASTA = asset_path("brca1", "GRCh37_chr17_BRCA1_region.fa")
XLSX = asset_path("brca1", "41586_2018_461_MOESM3_ESM.xlsx")
SCORES = ["ref_ll", "alt_ll", "delta_ll"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models run fastest on one thread


@pytest.fixture(scope="module")
def findlay() -> pd.DataFrame:
    return read_findlay_xlsx(XLSX)


@pytest.fixture(scope="module")
def toy():
    """A random 600-bp contig and 21 SNVs, some near both ends (clipped windows)."""
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), 600))
    rows = [("chr1", p, seq[p - 1], b) for p in (1, 3, 40, 41, 300, 598, 600) for b in "ACGT" if b != seq[p - 1]]
    return {"chr1": seq}, pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt"])


def _windows(seq: str, pos: int, alt: str, window: int) -> tuple[str, str]:
    """Independent window builder: slice [pos-1-w//2, pos-1-w//2+w) clipped to the contig, swap one base."""
    start = max(pos - 1 - window // 2, 0)
    ref = seq[start:min(pos - 1 - window // 2 + window, len(seq))]
    i = pos - 1 - start
    return ref.upper(), (ref[:i] + alt + ref[i + 1:]).upper()


# ------------------------------------------------------------------------------------ genome and windows
def test_first_brca1_variant_window_matches_the_evo2_notebook(findlay):
    genome = Genome(FASTA)
    first = findlay.iloc[0]
    w = variant_window(genome, first.chrom, first.pos, first.ref, first.alt)
    assert (first.chrom, first.pos, first.ref, first.alt) == ("17", 41276135, "T", "G")
    assert len(w.ref_seq) == 8192 and w.variant_index == 4096
    assert w.ref_seq[4082:4112] == "TGTTCCAATGAACTTTAACACATTAGAAAA"
    assert w.alt_seq[4096] == "G" and sum(a != b for a, b in zip(w.ref_seq, w.alt_seq)) == 1
    assert w.ref_seq == w.ref_seq.upper()


def test_brca1_table_reads_standardised(findlay):
    assert len(findlay) == 3893 and findlay["pos"].nunique() == 1326
    assert findlay.index.name == "row" and findlay.index[0] == 4
    assert {"func.class", "consequence", "CADD.score"} <= set(findlay.columns)
    assert check_variants(Genome(FASTA), findlay).empty  # all 3,893 REF alleles agree with the FASTA


def test_region_fasta_offsets_and_contig_names(tmp_path):
    genome = Genome(FASTA)
    contig = genome.resolve("17")
    assert (contig.name, contig.start, contig.length) == ("NC_000017.10", 41_100_000, 200_000)
    assert genome.find("chr17") == genome.find("NC_000017.10") == contig and genome.find("18") is None
    assert genome.base("chr17", 41_276_135) == "T"
    plain = tmp_path / "region.fa"
    plain.write_text(">brca1_region\n" + "acgtNNNNac\n")
    g = Genome(plain, starts={"brca1_region": 101}, aliases={"17": "brca1_region"})
    assert g.fetch("17", 100, 104) == "ACGT" and g.base("brca1_region", 110) == "C"
    bad = tmp_path / "bad.fa"
    bad.write_text(">chr2:11-30\nACGT\n")
    with pytest.raises(VariantError, match="says it spans 20 bases but holds 4"):
        Genome(bad)


def test_genome_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such FASTA"):
        Genome(tmp_path / "missing.fa")
    (tmp_path / "empty.fa").write_text("")
    with pytest.raises(VariantError, match="empty"):
        Genome(tmp_path / "empty.fa")
    with gzip.open(tmp_path / "g.fa.gz", "wt") as handle:
        handle.write(">c\nACGT\n")
    with pytest.raises(VariantError, match="bgzip"):
        Genome(tmp_path / "g.fa.gz")
    ragged = tmp_path / "ragged.fa"
    ragged.write_text(">c\nACGTACGT\nAC\nACGTACGT\n")
    with pytest.raises(VariantError, match="equal width"):
        Genome(ragged).fetch("c", 0, 10)
    with pytest.raises(VariantError, match=r"unknown contig 'chrZ'.*aliases="):
        Genome({"chr1": "ACGT"}).resolve("chrZ")


def test_window_clipping_rule(toy):
    genome = Genome(toy[0])
    seq = toy[0]["chr1"]
    for pos in (1, 40, 300, 600):
        w = variant_window(genome, "chr1", pos, seq[pos - 1], "A" if seq[pos - 1] != "A" else "C", window=100)
        assert (w.ref_seq, w.alt_seq) == _windows(seq, pos, w.alt, 100)
        assert w.ref_seq[w.variant_index] == seq[pos - 1]
    assert window_bounds(300, 100, 0, 600) == (249, 349)  # variant at index 50 = window // 2
    assert window_bounds(3, 100, 0, 600) == (0, 52)       # clipped at the start: variant at index 2


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=st.text("ACGTacgtN", min_size=1, max_size=300), data=st.data(), window=st.integers(1, 64))
def test_window_builder_properties(seq, data, window):
    pos = data.draw(st.integers(1, len(seq)))
    alt = data.draw(st.sampled_from([b for b in "ACGT" if b != seq[pos - 1].upper()]))
    genome = Genome({"c": seq})
    if seq[pos - 1].upper() not in "ACGT":
        return
    w = variant_window(genome, "c", pos, seq[pos - 1], alt, window=window)
    assert (w.ref_seq, w.alt_seq) == _windows(seq, pos, alt, window)
    assert len(w.ref_seq) <= window and w.ref_seq[w.variant_index] == seq[pos - 1].upper()
    assert w.variant_index == min(window // 2, pos - 1)
    assert reverse_complement(reverse_complement(w.ref_seq)) == w.ref_seq


# ------------------------------------------------------------------------------------------- readers
VCF_TEXT = """##fileformat=VCFv4.2
##INFO=<ID=AF,Number=A,Type=Float,Description="allele frequency">
##INFO=<ID=AD,Number=R,Type=Integer,Description="depths">
#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1
17\t41276135\trs1\tT\tG,c\t50\tPASS\tAF=0.1,0.2;AD=5,6,7;DB\tGT\t0/1

chr17\t41276134\t.\tA\t<DEL>\t.\t.\t.
"""


def test_vcf_multiallelic_split_info_kept(tmp_path):
    df = parse_vcf(VCF_TEXT.splitlines(True), source="x.vcf")
    assert list(df.index) == [5, 5, 7] and df.index.name == "line"
    assert list(df["alt"]) == ["G", "C", "<DEL>"] and list(df["allele"]) == [1, 2, 1]
    assert list(df["info"]) == ["AF=0.1;AD=5,6;DB", "AF=0.2;AD=5,7;DB", "."]
    assert df["qual"].iloc[0] == 50 and math.isnan(df["qual"].iloc[2])
    path = tmp_path / "v.vcf.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(VCF_TEXT)
    assert read_vcf(path)[["chrom", "pos", "ref", "alt"]].equals(df[["chrom", "pos", "ref", "alt"]])


@pytest.mark.parametrize("text, message", [
    ("17\t1\t.\tA\tC\t.\t.\t.\n", "before the '#CHROM"),
    ("##fileformat=VCFv4.2\n", "no '#CHROM' header"),
    ("#CHROM POS ID REF ALT QUAL FILTER INFO\n", "header line must be the 8 tab-separated"),
    ("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n17 5 . A C . . .\n", "spaces instead of tabs"),
    ("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n17\t5x\t.\tA\tC\t.\t.\t.\n", "POS '5x' is not a whole"),
    ("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n17\t5\t.\tA\t\t.\t.\t.\n", "empty ALT"),
    ("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n17\t5\t.\tA\tC\thigh\t.\t.\n", "QUAL 'high'"),
])
def test_vcf_errors_name_file_and_line(text, message):
    with pytest.raises(VariantError, match=message) as info:
        parse_vcf(text.splitlines(True), source="calls.vcf")
    assert "calls.vcf" in str(info.value)
    assert "line" in str(info.value) or "header" in str(info.value)


_names = st.text("ABCXYZ0123456789_chr", min_size=1, max_size=8)
_allele = st.text("ACGT", min_size=1, max_size=4)
_record = st.tuples(_names, st.integers(1, 10**9), _allele, st.lists(_allele, min_size=1, max_size=3),
                    st.dictionaries(st.text("ABCDEFGH", min_size=1, max_size=3), st.integers(0, 99), max_size=3))


@settings(max_examples=60, deadline=None)
@given(records=st.lists(_record, max_size=8))
def test_vcf_parser_round_trip(records):
    lines = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for chrom, pos, ref, alts, info in records:
        text = ";".join(f"{k}={v}" for k, v in info.items()) or "."
        lines.append(f"{chrom}\t{pos}\t.\t{ref}\t{','.join(alts)}\t.\tPASS\t{text}")
    df = parse_vcf([line + "\n" for line in lines])
    expected = [(c, p, r, a) for c, p, r, alts, _ in records for a in alts]
    assert list(zip(df["chrom"], df["pos"], df["ref"], df["alt"])) == expected
    again = parse_vcf(write_vcf(df).splitlines(True))
    assert again[["chrom", "pos", "ref", "alt", "info"]].reset_index(drop=True).equals(
        df[["chrom", "pos", "ref", "alt", "info"]].reset_index(drop=True))


@settings(max_examples=150, deadline=None)
@given(text=st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=300))
def test_vcf_parser_fails_only_with_documented_errors(text):
    body = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + text
    for candidate in (text, body):
        try:
            parse_vcf(candidate.splitlines(True))
        except VariantError:
            pass


def test_csv_reader_aliases_and_missing_columns(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("CHROM,Position,REF,ALT,score\nchr17,41276135,t,g,0.5\n17,41276135,T,C,\n")
    df = read_variants_csv(path)
    assert list(df.index) == [2, 3] and df.index.name == "line" and df["score"].iloc[0] == 0.5
    assert check_variants(Genome(FASTA), df).empty  # lower case alleles and 'chr17' are fine
    (tmp_path / "w.csv").write_text("chrom,position,alt\n17,5,A\n")
    with pytest.raises(VariantError, match=r"no column for \['ref'\]"):
        read_variants_csv(tmp_path / "w.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(VariantError, match="empty"):
        read_variants_csv(tmp_path / "e.csv")


# -------------------------------------------------------------------------------------------- validation
def _brca1_rows(*rows) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["chrom", "pos", "ref", "alt"], index=pd.Index(range(10, 10 + len(rows)),
                                                                                     name="line"))
    df.attrs["source"] = "mine.vcf"
    return df


GOOD = ("17", 41276135, "T", "G")


@pytest.mark.parametrize("row, problem, message", [
    (("17", 41276135, "A", "G"), "ref_mismatch", r"ref_mismatch x1: line 11: 17:41276135 A>G \(genome has T\)"),
    (("chr99", 5, "A", "G"), "unknown_contig", r"unknown contig 'chr99'.*NC_000017.10"),
    (("17", 41_000_000, "A", "G"), "out_of_range", r"holds NC_000017.10:41,100,001-41,300,000"),
    (("17", 41276135, "T", "N"), "non_acgt", "only A, C, G, T alleles"),
    (("17", 41276135, "T", "<DEL>"), "non_acgt", "symbolic alleles"),
    (("17", 41276135, "TA", "T"), "indel", "SNVs only"),
    (("17", 41276135, "T", "T"), "same_allele", "ref and alt are the same"),
    (("17", None, "T", "G"), "bad_position", "whole numbers >= 1"),
    (("17", 0, "T", "G"), "bad_position", "1-based"),
    (("", 41276135, "T", "G"), "missing", "fill in chrom"),
])
def test_every_validation_error_fires_with_its_message(row, problem, message):
    variants = _brca1_rows(GOOD, row)
    problems = check_variants(Genome(FASTA), variants)
    assert list(problems["problem"]) == [problem] and list(problems["row"]) == [11]
    with pytest.raises(VariantError, match=message) as info:
        score_variants(KmerModel(k=2).fit("ACGT"), FASTA, variants, window=64, progress=False)
    assert "mine.vcf: 1 of 2 variants cannot be scored" in str(info.value) and "on_invalid='skip'" in str(info.value)


def test_ref_mismatch_hints(findlay):
    genome = Genome(FASTA)
    rows = findlay.drop_duplicates("pos").head(20)[["chrom", "pos", "ref", "alt"]].copy()
    shifted = rows.assign(pos=rows["pos"] - 1)  # 0-based positions
    with pytest.raises(VariantError, match=r"hint: the REF alleles match the genome one base over: positions look "
                                           r"0-based") as info:
        score_variants(KmerModel(k=2).fit("ACGT"), genome, shifted, window=64, progress=False)
    n_bad = len(check_variants(genome, shifted))
    assert n_bad >= 10 and f"ref_mismatch x{n_bad}: row " in str(info.value)
    assert f"and {n_bad - 5} more" in str(info.value) and "41586_2018_461_MOESM3_ESM.xlsx" in str(info.value)
    other_build = rows.assign(pos=rows["pos"] + 1_000)  # no simple pattern: probably another build
    with pytest.raises(VariantError, match=r"hint: \d+ of 20 checked REF alleles disagree: .* different builds"):
        score_variants(KmerModel(k=2).fit("ACGT"), genome, other_build, window=64, progress=False)
    flipped = rows.assign(ref=[reverse_complement(r) for r in rows["ref"]], alt="A")
    flipped = flipped[flipped["ref"] != "A"]
    with pytest.raises(VariantError, match="minus strand"):
        score_variants(KmerModel(k=2).fit("ACGT"), genome, flipped, window=64, progress=False)


def test_skip_mode_scores_the_rest(toy):
    genome, variants = toy
    bad = pd.concat([variants, pd.DataFrame([("chr1", 5, "AC", "A"), ("chr2", 5, "A", "C")],
                                            columns=variants.columns)], ignore_index=True)
    lm = KmerModel(k=3).fit(genome["chr1"])
    out = score_variants(lm, genome, bad, window=64, on_invalid="skip", progress=False)
    assert list(out["problem"].iloc[-2:]) == ["indel", "unknown_contig"] and out["delta_ll"].iloc[-2:].isna().all()
    clean = score_variants(lm, genome, variants, window=64, progress=False)
    assert np.array_equal(out[SCORES].iloc[:-2].to_numpy(), clean[SCORES].to_numpy())


# ------------------------------------------------------------------------------------ models and scores
def _kmer_brute_force(train: str, seq: str, k: int) -> float:
    """Mean log p(x_i | k-1 previous) with add-one smoothing, both strands counted, by dict counting."""
    counts = Counter()
    for s in (train, reverse_complement(train)):
        counts.update(s[i:i + k] for i in range(len(s) - k + 1))
    logs = []
    for i in range(k - 1, len(seq)):
        ctx = seq[i - k + 1:i]
        total = sum(counts[ctx + b] for b in "ACGT")
        logs.append(math.log((counts[seq[i - k + 1:i + 1]] + 1) / (total + 4)))
    return sum(logs) / len(logs)


def test_kmer_delta_equals_brute_force(toy):
    genome, variants = toy
    lm = KmerModel(k=4).fit(genome["chr1"][:300])
    out = score_variants(lm, genome, variants, window=50, progress=False)
    for row in out.itertuples():
        ref, alt = _windows(genome["chr1"], row.pos, row.alt, 50)
        expected = _kmer_brute_force(genome["chr1"][:300], alt, 4) - _kmer_brute_force(genome["chr1"][:300], ref, 4)
        assert row.delta_ll == pytest.approx(expected, abs=1e-12)


def _tiny_brute_force(lm: TinyDNALM, seq: str) -> float:
    """Mean over t = 1..L-1 of log softmax(logits[t-1])[x_t], from one direct forward pass of the module."""
    ids = torch.tensor([["ACGT".index(b) for b in seq]])
    with torch.no_grad():
        logits = lm.model(ids)[0][0].double()
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    return float(np.mean([logp[t - 1, ids[0, t]].item() for t in range(1, len(seq))]))


@pytest.mark.parametrize("shared", [False, True])
def test_tiny_transformer_delta_equals_brute_force(toy, shared):
    genome, variants = toy
    lm = TinyDNALM(seed=3, max_length=128)
    out = score_variants(lm, genome, variants, window=48, batch_size=4, shared_prefix=shared, progress=False)
    assert out.attrs["scoring"]["shared_prefix"] is shared
    for row in out.itertuples():
        ref, alt = _windows(genome["chr1"], row.pos, row.alt, 48)
        assert row.ref_ll == pytest.approx(_tiny_brute_force(lm, ref), abs=2e-5)
        assert row.delta_ll == pytest.approx(_tiny_brute_force(lm, alt) - _tiny_brute_force(lm, ref), abs=2e-5)


@pytest.mark.parametrize("model", ["kmer", "tiny"])
def test_reference_deduplication_equals_scoring_every_pair(toy, model):
    genome, variants = toy
    # batch 1: every window goes through the same computation either way, so the numbers must be identical
    lm = KmerModel(k=3).fit(genome["chr1"]) if model == "kmer" else TinyDNALM(seed=1, max_length=128, batch_size=1)
    out = score_variants(lm, genome, variants, window=40, batch_size=1, shared_prefix=False, progress=False)
    stats = out.attrs["scoring"]
    assert (stats["ref_windows"], stats["windows"]) == (7, 7 + 21)
    pairs = [lm.log_likelihoods(list(_windows(genome["chr1"], r.pos, r.alt, 40))) for r in variants.itertuples()]
    assert np.array_equal(out[["ref_ll", "alt_ll"]].to_numpy(), np.array(pairs))  # exactly, not approximately
    assert np.array_equal(out["delta_ll"].to_numpy(), np.array([p[1] - p[0] for p in pairs]))


def test_reverse_complement_averaging(toy):
    genome, variants = toy
    lm = KmerModel(k=3, both_strands=False).fit(genome["chr1"][:200])
    out = score_variants(lm, genome, variants.head(4), window=30, reverse_complement=True, progress=False)
    ref, alt = _windows(genome["chr1"], variants.pos.iloc[0], variants.alt.iloc[0], 30)
    fwd = lm.log_likelihoods([ref, alt, reverse_complement(ref), reverse_complement(alt)])
    assert out["ref_ll"].iloc[0] == pytest.approx((fwd[0] + fwd[2]) / 2)
    assert out["alt_ll"].iloc[0] == pytest.approx((fwd[1] + fwd[3]) / 2)


def test_hugging_face_causal_lm_equals_brute_force():
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.processors import TemplateProcessing
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "A": 2, "C": 3, "G": 4, "T": 5, "N": 6}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="N"))
    raw.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), behavior="isolated")
    raw.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", pad_token="<pad>", unk_token="N")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=7, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=1, eos_token_id=1, pad_token_id=0))
    lm = HFCausalLM(model, tok, batch_size=2)
    seqs = ["ACGTTGCA", "GGA", "TTTTACGA"]
    with torch.no_grad():
        expected = []
        for s in seqs:
            ids = torch.tensor([[1] + [vocab[b] for b in s]])
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
            expected.append(np.mean([logp[t - 1, ids[0, t]].item() for t in range(1, ids.shape[1])]))
    assert np.allclose(lm.log_likelihoods(seqs), expected, atol=1e-5)
    assert lm.max_length == 64 and not lm.supports_shared_prefix


def test_hugging_face_loading_is_offline_safe(monkeypatch):
    import transformers

    seen = {}

    def fake(name, **kwargs):
        seen.update(kwargs)
        raise OSError("not in cache")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    with pytest.raises(OSError, match="pass a local folder"):
        HFCausalLM("someone/dna-model")
    assert seen["trust_remote_code"] is False  # off unless the caller passes it


# ------------------------------------------------------------------------------- cache, resume, faults
class Counting:
    """Wraps an LM: counts windows scored, optionally stops after `fail_after` calls or injects OOM."""

    def __init__(self, lm, fail_after: int | None = None, oom_above: int | None = None):
        self.lm, self.fail_after, self.oom_above = lm, fail_after, oom_above
        self.name, self.max_length, self.cache_key = lm.name, lm.max_length, lm.cache_key
        self.calls, self.windows, self.sizes = 0, 0, []

    def log_likelihoods(self, seqs, reduce="mean"):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("interrupted by the test")
        if self.oom_above is not None and len(seqs) > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        self.calls += 1
        self.windows += len(seqs)
        self.sizes.append(len(seqs))
        return self.lm.log_likelihoods(seqs, reduce)


def test_resume_after_interruption_gives_identical_results(toy, tmp_path):
    genome, variants = toy
    lm = TinyDNALM(seed=2, max_length=128)
    full = score_variants(lm, genome, variants, window=40, batch_size=4, shared_prefix=False, progress=False)
    interrupted = Counting(lm, fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        score_variants(interrupted, genome, variants, window=40, batch_size=4, cache_dir=tmp_path, progress=False)
    assert interrupted.windows == 12  # three batches of four were scored and cached
    resumed = Counting(lm)
    out = score_variants(resumed, genome, variants, window=40, batch_size=4, cache_dir=tmp_path, progress=False)
    assert resumed.windows == 28 - 12 and out.attrs["scoring"]["from_cache"] == 12
    assert np.array_equal(out[SCORES].to_numpy(), full[SCORES].to_numpy())
    again = Counting(lm)
    assert np.array_equal(score_variants(again, genome, variants, window=40, cache_dir=tmp_path,
                                         progress=False)[SCORES].to_numpy(), full[SCORES].to_numpy())
    assert again.windows == 0


def test_corrupted_cache_entries_are_rescored(toy, tmp_path, caplog):
    genome, variants = toy
    lm = KmerModel(k=3).fit(genome["chr1"])
    first = score_variants(lm, genome, variants, window=40, cache_dir=tmp_path, progress=False)
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 28
    files[0].write_text(files[0].read_text()[:25])            # a torn write
    entry = json.loads(files[1].read_text())
    entry["score"] += 0.5                                      # a silently changed number
    files[1].write_text(json.dumps(entry))
    files[2].write_bytes(b"\x00\xff" * 10)                     # garbage
    counting = Counting(lm)
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.variants.cache"):
        out = score_variants(counting, genome, variants, window=40, cache_dir=tmp_path, progress=False)
    assert counting.windows == 3 and out.attrs["scoring"]["corrupted_cache_entries"] == 3
    assert caplog.text.count("is damaged") == 3 and "checksum mismatch" in caplog.text
    assert np.array_equal(out[SCORES].to_numpy(), first[SCORES].to_numpy())
    assert WindowCache(tmp_path, lm.cache_key).get(_windows(genome["chr1"], 1, variants.alt[0], 40)[0]) is not None


def test_out_of_memory_halves_the_batch(toy, caplog):
    genome, variants = toy
    lm = KmerModel(k=3).fit(genome["chr1"])
    expected = score_variants(lm, genome, variants, window=40, progress=False)
    oom = Counting(lm, oom_above=3)
    with caplog.at_level(logging.WARNING, logger="bioft_tutorial.oom"):
        out = score_variants(oom, genome, variants, window=40, batch_size=16, progress=False)
    assert "out of memory with a batch of 16 windows; retrying with 8" in caplog.text
    assert "batch of 4 windows; retrying with 2" in caplog.text and max(oom.sizes) == 2
    assert np.array_equal(out[SCORES].to_numpy(), expected[SCORES].to_numpy())
    with pytest.raises(RuntimeError, match="batch of one window: use a shorter window"):
        score_variants(Counting(lm, oom_above=0), genome, variants, window=40, batch_size=4, progress=False)


def test_window_longer_than_the_model_is_refused(toy):
    with pytest.raises(ValueError, match="exceeds tiny-random-transformer-s0's max_length=64"):
        score_variants(TinyDNALM(max_length=64), toy[0], toy[1], window=128, progress=False)


# ---------------------------------------------------------------------------------- end to end
def test_vcf_plus_fasta_end_to_end(tmp_path, findlay):
    region = Genome(FASTA).fetch("17", 41_250_000, 41_290_000)
    fasta = tmp_path / "chr17_slice.fa"
    fasta.write_text(">chr17:41250001-41290000\n" + "\n".join(region[i:i + 70] for i in range(0, len(region), 70)))
    vcf = tmp_path / "mine.vcf"
    write_vcf(findlay.head(9), vcf, contigs={"chr17": 81_195_210})
    variants = read_vcf(vcf)
    lm = KmerModel(k=5).fit([region[:10_000], region[-10_000:]])
    out = score_variants(lm, fasta, variants, window=2000, cache_dir=tmp_path / "cache", progress=False)
    assert len(out) == 9 and out["delta_ll"].notna().all() and list(out.index) == list(range(5, 14))  # 4 header lines
    assert (tmp_path / "chr17_slice.fa.fai").exists()




@pytest.mark.skipif(not torch.cuda.is_available(), reason="vortex runs on CUDA only")
def test_evo2_shared_prefix_matches_full_windows():
    pytest.importorskip("vortex")
    from bioft_tutorial.variants import Evo2LM

    small = dict(hidden_size=128, num_filters=128, num_attention_heads=4, inner_mlp_size=256, hcl_filter_groups=128,
                 hcm_filter_groups=16, hcs_filter_groups=16, num_layers=4, hcs_layer_idxs=[0], hcm_layer_idxs=[1],
                 hcl_layer_idxs=[2], attn_layer_idxs=[3])
    lm = Evo2LM.from_config("evo2-7b-8k", **small)
    rng = np.random.default_rng(0)
    refs = ["".join(rng.choice(list("ACGT"), 512)) for _ in range(2)]
    alts = [r[:256] + ("A" if r[256] != "A" else "C") + r[257:] for r in refs]
    full = lm.log_likelihoods(refs + alts)
    ref_ll, alt_ll = lm.log_likelihoods_shared_prefix(refs, alts, [0, 1], 256)
    assert np.array_equal(ref_ll, full[:2]) and np.allclose(alt_ll, full[2:], atol=0.05)


# ---------------------------------------------------------------------------------- INFO and k-mer background
def test_expand_info_types_columns_from_the_header():
    text = ('##fileformat=VCFv4.2\n##INFO=<ID=AF,Number=A,Type=Float,Description="freq, per ALT">\n'
            '##INFO=<ID=DP,Number=1,Type=Integer,Description="depth">\n##INFO=<ID=DB,Number=0,Type=Flag,Description="">\n'
            '##INFO=<ID=AD,Number=R,Type=Integer,Description="depths">\n'
            "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
            "17\t5\t.\tA\tC,G\t.\t.\tAF=0.1,.;DP=12;DB;AD=5,6,7;CLS=FUNC\n17\t9\t.\tT\tA\t.\t.\tDP=3\n")
    out = expand_info(parse_vcf(text.splitlines(True), source="x.vcf"))
    assert out["AF"].iloc[0] == 0.1 and out["AF"].iloc[1:].isna().all() and out["AF"].dtype == np.float64
    assert out["DP"].tolist() == [12, 12, 3] and str(out["DP"].dtype) == "Int64"
    assert out["DB"].tolist() == [True, True, False]
    assert out["AD"].tolist()[:2] == ["5,6", "5,7"] and out["CLS"].tolist()[:2] == ["FUNC", "FUNC"]
    assert out[["AD", "CLS"]].iloc[2].isna().all()
    assert list(out.index) == [7, 7, 8]


def test_kmer_background_never_sees_the_windows():
    rng = np.random.default_rng(0)
    genome = {"c": "".join(rng.choice(list("ACGT"), 400))}
    variants = pd.DataFrame({"chrom": ["c", "c"], "pos": [100, 110], "ref": ["A", "A"], "alt": ["G", "G"]})
    lm = fit_kmer_background(genome, variants, window=40, k=3)
    # independent count: the contig minus the windows [79, 119) and [89, 129), both strands, k-mers from a dict
    pieces = [genome["c"][:79], genome["c"][129:]]
    counts = Counter(s[i:i + 3] for p in pieces for s in (p, reverse_complement(p)) for i in range(len(s) - 2))
    index = {"".join(kmer): n for n, kmer in enumerate(itertools.product("ACGT", repeat=3))}
    expected = np.zeros(64, dtype=np.int64)
    for kmer, n in counts.items():
        expected[index[kmer]] = n
    assert np.array_equal(lm.counts, expected) and lm.bases_seen == 79 + 271
    with pytest.raises(ValueError, match="cover all the sequence"):
        fit_kmer_background(genome, variants, window=10_000, k=3)
