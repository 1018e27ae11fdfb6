"""Predictions come back in the input's order, whatever the lengths, crops and batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bioft_tutorial import attention, data, models, packing, predict

pytestmark = pytest.mark.usefixtures("one_thread")


def _alone(model, example) -> torch.Tensor:
    """The model on one example, no batching: the independent reference."""
    with torch.no_grad():
        return model(input_ids=torch.as_tensor([example["input_ids"]])).logits[0].float()


@pytest.fixture(scope="module")
def mixed():
    """Chains of very different lengths, in an order that length-sorted batching would change."""
    rng = np.random.default_rng(0)
    lengths = [90, 5, 40, 200, 12, 64, 7, 150]
    return [{"input_ids": [0, *rng.integers(4, 24, n).tolist(), 2], "labels": [-100, *rng.integers(0, 3, n), -100]}
            for n in lengths]


def test_token_logits_and_collected_labels_keep_the_input_order(mixed):
    model = models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=1).eval()
    logits = predict.predict_logits(model, mixed, token_budget=256)
    for ex, got in zip(mixed, logits):
        torch.testing.assert_close(got, _alone(model, ex), rtol=1e-4, atol=1e-5)
    y, pred, _ = predict.collect_predictions(model, mixed, token_budget=256)
    expected_y = np.concatenate([np.array(ex["labels"])[1:-1] for ex in mixed])
    expected_pred = np.concatenate([_alone(model, ex).argmax(-1).numpy()[1:-1] for ex in mixed])
    assert np.array_equal(y, expected_y) and np.array_equal(pred, expected_pred)


def test_packed_prediction_keeps_the_input_order(mixed):
    model = models.random_esm2(models.tiny_esm2_config(), "token", 3, seed=1).eval()
    reference = [_alone(model, ex) for ex in mixed]
    attention.enable_packed_attention(model)
    logits = predict.predict_logits(model, mixed, token_budget=256, padded=False,
                                    collate=lambda ex: packing.collate_packed(ex))
    for want, got in zip(reference, logits):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_regression_values_keep_the_order_and_undo_the_scaling(mixed):
    model = models.random_esm2(models.tiny_esm2_config(), "sequence", 1, seed=2).eval()
    examples = [{"input_ids": ex["input_ids"]} for ex in mixed]
    values = predict.predict_values(model, examples, center=3.0, scale=0.5, token_budget=256)
    expected = [3.0 + 0.5 * _alone(model, ex).item() for ex in examples]
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="regression model with one output"):
        predict.predict_values(models.random_esm2(models.tiny_esm2_config(), "token", 3), examples)


def test_long_chains_are_cropped_and_stitched_in_order():
    model, tok = models.load_esm2("tiny", task="token", num_labels=3, seed=0)
    rng = np.random.default_rng(3)
    seqs = {f"s{i}": "".join(rng.choice(list(data.AMINO_ACIDS), n)) for i, n in enumerate([1500, 30, 700, 2600])}
    out = predict.predict_residue_classes(model, tok, seqs, token_budget=2048)
    assert list(out) == list(seqs) and [len(v) for v in out.values()] == [len(s) for s in seqs.values()]
    short = predict.predict_residue_classes(model, tok, {"s1": seqs["s1"]})  # alone, uncropped
    assert out["s1"] == short["s1"]


def test_an_undefined_spearman_is_nan_not_an_error():
    model = models.random_esm2(models.tiny_esm2_config(), "sequence", 1, seed=2).eval()
    constant = [{"input_ids": [0, 5, 6, 7, 2], "labels": 1.0}, {"input_ids": [0, 5, 8, 2], "labels": 1.0}]
    assert np.isnan(predict.evaluate(model, constant)["spearman"])
