"""Zero-shot scoring, checked against computations written out by hand (tiny model, CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bioft_tutorial import models, zero_shot
from bioft_tutorial.zero_shot import AMINO_ACIDS, parse_mutant, score_substitutions

WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRL"
ATOL = 1e-5


@pytest.fixture(scope="module")
def mlm():
    return models.load_esm2("tiny", task="mlm")


def _hand_log_probs(model, tokenizer, seq: str, mask_at: int | None = None) -> torch.Tensor:
    """log_softmax over the full vocabulary of one unbatched pass: (len(seq) + 2, vocab); mask_at is 1-based."""
    ids = tokenizer(seq, return_tensors="pt")["input_ids"]
    if mask_at is not None:
        ids[0, mask_at] = tokenizer.mask_token_id  # token index = 1-based position (token 0 is <cls>)
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)


def _hand_score(log_probs: torch.Tensor, tokenizer, token_index: int, wt: str, mt: str) -> float:
    return float(log_probs[token_index, tokenizer.convert_tokens_to_ids(mt)]
                 - log_probs[token_index, tokenizer.convert_tokens_to_ids(wt)])


def _some_singles(seq: str, positions: list[int]) -> list[str]:
    return [f"{seq[p - 1]}{p}{aa}" for p in positions for aa in "AGWP" if aa != seq[p - 1]]


# --- scores ------------------------------------------------------------------------------------------
def test_wt_marginal_equals_one_forward_pass(mlm):
    model, tok = mlm
    mutants = _some_singles(WT, [1, 2, 17, 50, len(WT)])
    log_probs = _hand_log_probs(model, tok, WT)
    expected = [_hand_score(log_probs, tok, int(m[1:-1]), m[0], m[-1]) for m in mutants]
    got = score_substitutions(model, tok, WT, mutants, "wt-marginal", progress=False)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_masked_marginal_equals_masking_each_position_by_hand(mlm):
    model, tok = mlm
    mutants = _some_singles(WT, [1, 9, 33, len(WT)])
    expected = [_hand_score(_hand_log_probs(model, tok, WT, mask_at=int(m[1:-1])), tok, int(m[1:-1]), m[0], m[-1])
                for m in mutants]
    got = score_substitutions(model, tok, WT, mutants, "masked-marginal", batch_size=3, progress=False)
    np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("method", zero_shot.SCORING_METHODS)
def test_multi_mutant_is_the_sum_of_its_singles(mlm, method):
    model, tok = mlm
    singles = ["K2A", "Y5W", "R10G"]
    scores = score_substitutions(model, tok, WT, singles + ["K2A:Y5W", "K2A:Y5W:R10G"], method, progress=False)
    np.testing.assert_allclose(scores[3], scores[0] + scores[1], atol=ATOL)
    np.testing.assert_allclose(scores[4], scores[:3].sum(), atol=ATOL)


def test_scores_do_not_depend_on_batch_size_or_mutant_order(mlm):
    model, tok = mlm
    mutants = _some_singles(WT, [3, 4, 5, 60, 61])
    a = score_substitutions(model, tok, WT, mutants, "masked-marginal", batch_size=1, progress=False)
    b = score_substitutions(model, tok, WT, mutants[::-1], "masked-marginal", batch_size=64, progress=False)
    np.testing.assert_allclose(a, b[::-1], atol=ATOL)


def test_synonymous_substitution_scores_zero(mlm):
    model, tok = mlm
    assert score_substitutions(model, tok, WT, ["K2K"], progress=False)[0] == 0.0


class _RowCounter:
    """Counts forward calls and the sequences they carry (a forward pre-hook)."""

    def __init__(self, model):
        self.calls = self.rows = 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.rows += ids.shape[0]


def test_masked_marginal_runs_one_row_per_distinct_position(mlm):
    model, tok = mlm
    mutants = [f"{WT[p - 1]}{p}{aa}" for p in (3, 8, 21) for aa in AMINO_ACIDS if aa != WT[p - 1]]
    mutants += ["K2A:T3A", "T3W:Q9A"]  # positions 2, 3, 9: two more distinct positions (2, 9)
    counter = _RowCounter(model)
    try:
        score_substitutions(model, tok, WT, mutants, "masked-marginal", batch_size=2, progress=False)
        masked = (counter.calls, counter.rows)
        counter.calls = counter.rows = 0
        score_substitutions(model, tok, WT, mutants, "wt-marginal", progress=False)
        wt = (counter.calls, counter.rows)
    finally:
        counter.handle.remove()
    assert masked == (3, 5)  # 5 distinct positions {2, 3, 8, 9, 21}, batches of 2
    assert wt == (1, 1)


def test_scoring_restores_training_mode(mlm):
    model, tok = mlm
    model.train()
    try:
        score_substitutions(model, tok, WT, ["K2A"], progress=False)
        assert model.training
    finally:
        model.eval()


# --- windows -----------------------------------------------------------------------------------------
def test_window_start_examples():
    # 10 residues, windows of 4 (half = 2): centred on position p means start = p - 1 - 2, kept inside 0..6
    assert [zero_shot.window_start(p, 10, 4) for p in range(1, 11)] == [0, 0, 0, 1, 2, 3, 4, 5, 6, 6]
    assert zero_shot.window_start(700, 1000) == 0  # short enough: whole sequence


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.integers(2, 1100), st.data())
def test_window_start_properties(length, width, data):
    position = data.draw(st.integers(1, length))
    start = zero_shot.window_start(position, length, width)
    if length <= width:
        assert start == 0
        return
    assert 0 <= start <= length - width and start <= position - 1 < start + width
    if width // 2 <= position - 1 <= length - width + width // 2:  # not pushed by an end: exactly centred
        assert position - 1 - start == width // 2


@pytest.mark.parametrize("method", zero_shot.SCORING_METHODS)
def test_long_sequence_is_scored_in_the_documented_windows(mlm, method):
    model, tok = mlm
    seq, width = (WT * 2)[:150], 40
    positions = [1, 15, 21, 22, 75, 130, 131, 150]
    mutants = _some_singles(seq, positions)
    expected = []
    for m in mutants:
        p = int(m[1:-1])
        start = min(max(p - 1 - width // 2, 0), len(seq) - width)  # the rule, written out again
        window, local = seq[start:start + width], p - start  # 1-based position inside the window
        log_probs = _hand_log_probs(model, tok, window, mask_at=local if method == "masked-marginal" else None)
        expected.append(_hand_score(log_probs, tok, local, m[0], m[-1]))
    got = score_substitutions(model, tok, seq, mutants, method, max_residues=width, batch_size=4, progress=False)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_wt_marginal_shares_a_pass_between_positions_of_one_window(mlm):
    model, tok = mlm
    counter = _RowCounter(model)
    try:  # positions 1..5 all get window start 0 near the N-terminus; 150 gets the last window
        score_substitutions(model, tok, (WT * 2)[:150], ["M1A", "K2A", "T3A", "Y5A", "T150A"],
                            max_residues=40, progress=False)
    finally:
        counter.handle.remove()
    assert counter.rows == 2


# --- parsing -----------------------------------------------------------------------------------------
def test_parse_mutant_returns_1_based_substitutions():
    assert parse_mutant("K2A:Y5W", WT) == (zero_shot.Substitution("K", 2, "A"), zero_shot.Substitution("Y", 5, "W"))
    assert parse_mutant("K12A", WT, offset=10) == (zero_shot.Substitution("K", 2, "A"),)


@pytest.mark.parametrize("mutant, offset, fragments", [
    # wrong residue, but the neighbour before has it: numbering one too high
    ("K3A", 0, ["'K3A'", "sequence has 'T' at position 3 (1-based)", "'K' at 2", "offset by one", "offset=1"]),
    # the neighbour after has it (0-based numbering)
    ("A3G", 0, ["'A3G'", "sequence has 'T' at position 3", "'A' at 4", "offset=-1"]),
    # with an offset already set, the suggestion corrects that offset
    ("K13A", 10, ["'K13A'", "'T' at position 3 (1-based; written 13 with offset=10)", "offset=11"]),
    ("W5A", 0, ["'W5A'", "sequence has 'Y' at position 5", "not 'W'", "check that wt_seq"]),
    ("L200A", 0, ["'L200A'", "position 200", "outside", f"1..{len(WT)}", "offset"]),
    ("M0A", 0, ["'M0A'", "position 0", "1-based", "offset=-1"]),
    ("M1X", 0, ["'M1X'", "'X' is not one of the 20 amino acids"]),
    ("B1A", 0, ["'B1A'", "'B' is not one of the 20 amino acids"]),
    ("m1a", 0, ["'m1a'", "upper case"]),
    ("K2A:K2G", 0, ["'K2A:K2G'", "position 2 appears twice"]),
    ("M1", 0, ["'M1'", "not like 'A42G'"]),
    ("K2A;Y5W", 0, ["'K2A;Y5W'", "join several substitutions with ':'"]),
    (None, 0, ["expected text like 'A42G'", "write the wild type as 'WT'"]),
])
def test_parse_errors_say_what_is_wrong_and_how_to_fix_it(mutant, offset, fragments):
    with pytest.raises(ValueError) as err:
        parse_mutant(mutant, WT, offset=offset)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_scoring_errors(mlm):
    model, tok = mlm
    with pytest.raises(ValueError, match="unknown method 'masked'"):
        score_substitutions(model, tok, WT, ["K2A"], "masked")
    with pytest.raises(TypeError, match=r"wrap it: \['K2A'\]"):
        score_substitutions(model, tok, WT, "K2A")
    with pytest.raises(ValueError, match="'a' at position 1.*upper-case"):
        score_substitutions(model, tok, "a" + WT[1:], ["K2A"])
    bare, _ = models.load_esm2("tiny")
    with pytest.raises(ValueError, match="task='mlm'"):
        score_substitutions(bare, tok, WT, ["K2A"], progress=False)


def test_single_mutants_lists_all_19_per_position():
    mutants = zero_shot.single_mutants("MK")
    assert len(mutants) == 38 and mutants[0] == "M1A" and "M1M" not in mutants and mutants[-1] == "K2Y"
