import gzip
import hashlib
import io

import pandas as pd
import pytest

from bioft_tutorial import data
from bioft_tutorial.data import DataError


def _sha_gz(path):
    with gzip.open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.mark.parametrize("folder,name,sha", [
    ("flip_secondary_structure", "sequences.fasta.gz", "cc69cb36650161fa08874c7a3a2ceceb9c3bbab1b6394cb875647c1b8b4a4b03"),
    ("flip_secondary_structure", "sampled.fasta.gz", "d74173c6ecd35339e9455565b45160f7285d401a1fc05e814af67bcb7bb83ad1"),
    ("flip_secondary_structure", "mask.fasta.gz", "6ffafb87ab0d40781103594d3a8fa202d1db741fd49cc00fe6220797bf55897f"),
    ("proteingym_blat", "BLAT_ECOLX_Stiffler_2015.csv.gz", "82835aeecc2001c742434457102e02b5aaf38673274aaba00ac85e07bcd94f35"),
])
def test_shipped_files_match_source_notes(folder, name, sha):
    assert _sha_gz(data.asset_path(folder, name)) == sha
    assert (data.asset_path(folder, "SOURCE.md")).read_text().count(sha) == 1


def test_brca1_files_match_source_notes():
    assert data.sha256_file(data.asset_path("brca1", "GRCh37_chr17_BRCA1_region.fa")) == \
        "6e01225a3312e3617d7892d4b8a336b4e0a64049f11825d830f2f5977c5929a8"
    assert data.sha256_file(data.asset_path("brca1", "41586_2018_461_MOESM3_ESM.xlsx")) == \
        "0100fc651b6ec6015f02a5813660afdcf9cf3969790992104e99e74f7348d0fd"


@pytest.fixture(scope="module")
def flip():
    return data.load_flip_secondary_structure()


def test_flip_counts_and_lengths(flip):
    assert flip["split"].value_counts().to_dict() == {"train": 9712, "validation": 1080, "test": 364}
    assert flip["length"].min() == 20 and flip["length"].max() == 1632
    assert (flip["sequence"].str.len() == flip["labels"].str.len()).all()
    totals = pd.Series(list("".join(flip["labels"]))).value_counts().to_dict()
    assert totals == {"C": 1211931, "H": 1030200, "E": 602963}  # as documented in SOURCE.md
    assert "".join(flip["mask"]).count("0") == 186876


def test_flip_split_subset_is_seeded():
    a = data.load_flip_secondary_structure("validation", max_chains=5, seed=1)
    b = data.load_flip_secondary_structure("validation", max_chains=5, seed=1)
    assert len(a) == 5 and (a["split"] == "validation").all() and a["id"].tolist() == b["id"].tolist()
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        data.load_flip_secondary_structure("valid")


def test_blat_dms_matches_wild_type():
    wt = data.blat_wild_type()
    dms = data.load_blat_dms()
    assert len(wt) == 286 and len(dms) == 4996
    for row in dms.head(200).itertuples():
        assert wt[row.position - 1] == row.wt_aa
        assert row.mutated_sequence == wt[:row.position - 1] + row.mt_aa + wt[row.position:]
    assert dms["DMS_score_bin"].sum() == 2498


def test_parse_fasta_round_trip():
    records = {"a": "MKTAYIAK" * 10, "b": "GG"}
    assert data.parse_fasta(io.StringIO(data.write_fasta(records, width=7))) == records


@pytest.mark.parametrize("text,message", [
    ("MKT\n>a\nMK\n", "before the first '>' header"),
    (">a\nMK\n>a\nGG\n", "duplicate FASTA id 'a'"),
    (">a\n>b\nGG\n", "record 'a' has no sequence"),
    ("", "no FASTA records"),
    (">\nGG\n", "empty FASTA header"),
])
def test_parse_fasta_errors(text, message):
    with pytest.raises(DataError, match=message):
        data.parse_fasta(io.StringIO(text), source="x.fa")


def test_label_length_mismatch_names_chain():
    df = pd.DataFrame({"id": ["p1"], "sequence": ["MKT"], "labels": ["HH"], "mask": ["111"]})
    with pytest.raises(DataError, match=r"chain 'p1' has 3 residues but 2 labels"):
        data.validate_token_labels(df, source="x")


def test_dms_csv_errors(tmp_path):
    wt = "MKTAYIAK"
    path = tmp_path / "d.csv"
    path.write_text("mutant,DMS_score\nK2A,0.1\nA4G,nan\n")
    with pytest.raises(DataError, match=r"row 3.*NaN"):
        data.read_dms_csv(path, wt)
    path.write_text("mutant,DMS_score\nK3A,0.1\n")
    with pytest.raises(DataError, match=r"d.csv, row 2: mutant 'K3A'.*has 'T' at position 3.*Try offset=1"):
        data.read_dms_csv(path, wt)
    path.write_text("mutant,score\nK2A,0.1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['DMS_score'\]"):
        data.read_dms_csv(path, wt)
    path.write_text("mutant,DMS_score\nK2A,high\n")
    with pytest.raises(DataError, match=r"row 2.*'high' is not a number"):
        data.read_dms_csv(path, wt)


def test_fetch_file_verifies_and_caches(tmp_path):
    src = tmp_path / "remote.txt"
    src.write_bytes(b"hello genome\n")
    sha = hashlib.sha256(b"hello genome\n").hexdigest()
    cache = tmp_path / "cache"
    got = data.fetch_file(src.as_uri(), sha, cache_dir=cache)
    assert got.read_bytes() == b"hello genome\n"
    src.unlink()  # now "offline": the verified cache is used
    assert data.fetch_file(src.as_uri(), sha, cache_dir=cache) == got
    got.write_bytes(b"tampered")  # a corrupted cache entry is not trusted
    with pytest.raises(ConnectionError, match=r"(?s)remote.txt.*offline.*SHA-256"):
        data.fetch_file(src.as_uri(), sha, cache_dir=cache)
    assert not got.exists()


def test_fetch_file_rejects_bad_hash(tmp_path):
    src = tmp_path / "remote.txt"
    src.write_bytes(b"payload")
    with pytest.raises(DataError, match="does not match"):
        data.fetch_file(src.as_uri(), "0" * 64, cache_dir=tmp_path / "c")
    assert not any((tmp_path / "c").iterdir())


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "x.bin"
    data.atomic_write_bytes(target, b"abc")
    data.atomic_write_bytes(target, b"defg")
    assert target.read_bytes() == b"defg" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


# --- mutants -------------------------------------------------------------------------------------------
def test_mutants_from_sequences_diffs_against_the_wild_type():
    wt = "MKTAYIAK"
    variants = ["MKTAYIAK", "AKTAEIAK", "MKTAYIAW"]
    assert data.mutants_from_sequences(wt, variants) == ["", "M1A:Y5E", "K8W"]
    assert data.mutants_from_sequences(wt, variants, offset=38) == ["", "M39A:Y43E", "K46W"]
    for mutant, seq in zip(data.mutants_from_sequences(wt, variants, offset=38), variants):
        assert data.apply_mutant(wt, mutant, offset=38) == seq  # parse_mutant reads each back


@pytest.mark.parametrize("sequences, fragments", [
    (["MKTAYIAK", "MKTAY"], ["seqs.csv, row 2", "5 residues", "wild type has 8", "align insertions"]),
    (pd.Series(["MKTAYIAK", "MK*AYIAK"], index=[2, 3]), ["seqs.csv, row 3", "'*' at position 3"]),
    (["MKTAYIAk"], ["row 1", "'k' at position 8", "use upper case"]),
    ([None], ["row 1", "None is not a sequence"]),
])
def test_mutants_from_sequences_errors_name_the_row(sequences, fragments):
    with pytest.raises(ValueError) as err:
        data.mutants_from_sequences("MKTAYIAK", sequences, source="seqs.csv")
    assert all(f in str(err.value) for f in fragments), str(err.value)


@pytest.mark.parametrize("written", ["", "WT", "wt", "_wt", " WT "])
def test_the_wild_type_parses_to_no_substitution(written):
    assert data.parse_mutant(written, "MKT") == () and data.is_wild_type(written)


def test_read_dms_csv_reads_multi_mutants_offsets_and_the_wild_type(tmp_path):
    wt = "VDGVAKGL"  # residues 39..46 of a longer numbering: offset 38
    path = tmp_path / "gb1.csv"
    path.write_text("mutant,fitness\nV39A:D40F,0.5\nWT,1.0\n,0.9\nG41C,0.1\n")
    df = data.read_dms_csv(path, wt, score_column="fitness", offset=38)
    assert df.index.tolist() == [2, 3, 4, 5] and df.index.name == "row"
    assert df["mutant"].tolist() == ["V39A:D40F", "WT", "", "G41C"]
    assert df["n_mutations"].tolist() == [2, 0, 0, 1]
    assert df["position"].isna().tolist() == [True, True, True, False] and df["position"].iloc[3] == 3
    assert df["mutated_sequence"].tolist() == ["AFGVAKGL", wt, wt, "VDCVAKGL"]
    with pytest.raises(DataError, match=r"gb1.csv, row 2: mutant 'V39A:D40F'.*outside.*offset"):
        data.read_dms_csv(path, wt, score_column="fitness")  # forgot the offset


def test_read_dms_csv_checks_a_given_mutated_sequence(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("mutant\tDMS_score\tmutated_sequence\nK2A\t0.1\tMATAY\nY5W\t0.2\tMKTAF\n")
    with pytest.raises(DataError, match=r"d.tsv, row 3: column 'mutated_sequence'.*'Y5W'.*position 5 has 'F', "
                                        r"expected 'W'"):
        data.read_dms_csv(path, "MKTAY")


# --- FLIP-style split FASTA ----------------------------------------------------------------------------
def test_read_flip_fasta_gives_splits_and_targets(tmp_path):
    path = tmp_path / "four_mutations.fasta"
    path.write_text(">Sequence0 TARGET=1.5 SET=train VALIDATION=False\nMKT\nAY\n"
                    ">Sequence1 TARGET=-0.25 SET=train VALIDATION=True\nMKTAW\n>Sequence2 TARGET=0 SET=test\nMKTAA\n")
    df = data.read_flip_fasta(path)
    assert df["id"].tolist() == ["Sequence0", "Sequence1", "Sequence2"] and df.index.tolist() == [1, 4, 6]
    assert df["sequence"].tolist() == ["MKTAY", "MKTAW", "MKTAA"]
    assert df["split"].tolist() == ["train", "validation", "test"] and df["target"].tolist() == [1.5, -0.25, 0.0]


def test_flip_secondary_structure_splits_come_from_the_headers():
    flip = data.read_flip_fasta(data.asset_path("flip_secondary_structure", "sampled.fasta.gz"))
    assert "target" not in flip.columns and set(flip["sequence"].iloc[0]) <= set("HEC")
    with gzip.open(data.asset_path("flip_secondary_structure", "sampled.fasta.gz"), "rt") as handle:
        headers = [line.split() for line in handle if line.startswith(">")]
    expected = ["test" if "SET=test" in h else "validation" if "VALIDATION=True" in h else "train" for h in headers]
    assert flip["split"].tolist() == expected


def test_read_dms_csv_diffs_a_table_of_full_length_variants(tmp_path):
    wt = "MKTAYIAK"
    path = tmp_path / "gb1.csv"
    path.write_text("sequence,target,set\nMKTAYIAK,1.0,train\nAKTAYIAW,0.2,train\nMKTAYIAK,0.9,test\n")
    df = data.read_dms_csv(path, wt, score_column="target")
    assert df["mutant"].tolist() == ["", "M1A:K8W", ""] and df["n_mutations"].tolist() == [0, 2, 0]
    assert df.attrs["added_columns"] == ["mutant", "n_mutations", "position", "wt_aa", "mt_aa", "mutated_sequence"]
    assert data.read_dms_csv(path, wt, score_column=None)["target"].tolist() == [1.0, 0.2, 0.9]
    path.write_text("sequence\nMKTAYIAK\nMKTAYIA\n")
    with pytest.raises(DataError, match=r"gb1.csv, row 3: 7 residues, but the wild type has 8"):
        data.read_dms_csv(path, wt, score_column=None)
