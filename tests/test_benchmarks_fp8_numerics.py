"""benchmarks/fp8_numerics.py (FP8 against bf16 loss curves): the smoke run on the CPU, and the comparison and
verdict against hand computations."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import fp8_numerics
from bioft_tutorial import results


@pytest.mark.slow
def test_smoke_run_trains_every_run_on_the_same_batches_fp32_last(tmp_path):
    records = fp8_numerics.main(["--smoke", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("fp8-numerics-smoke-*.json")
    stored = {r["run"]: r for r in json.loads(path.read_text())["results"]}
    assert [r["run"] for r in records] == ["bf16", "fp8", "bf16-peft", "fp32"] and set(stored) == set(fp8_numerics.RUNS)
    assert stored["bf16-peft"]["lora_layer"] == "peft" and stored["bf16"]["lora_layer"] == "fused"
    # the same arithmetic in another order: PEFT's layer follows the fused one to bf16 rounding (8 bits)
    assert stored["bf16-peft"]["loss_curve"][0] == stored["bf16"]["loss_curve"][0]  # B = 0: the same first loss
    assert np.allclose(stored["bf16-peft"]["loss_curve"], stored["bf16"]["loss_curve"], rtol=2e-3)
    assert stored["bf16-peft"]["tolerance"]["max_ratio"] == fp8_numerics.MAX_LAYER_RATIO
    for r in stored.values():
        assert "error" not in r, r
        assert r["smoke"] and r["model"] == "tiny" and r["data"] == "FLIP secondary structure"
        assert len(r["loss_curve"]) == r["steps"] and np.isfinite(r["loss_curve"]).all()
    assert len(stored["fp32"]["loss_curve"]) == 3 and len(stored["fp8"]["loss_curve"]) == 6
    # FP8 is off on the CPU: the fp8 run is the fp32 path, so it starts exactly where fp32 does; no verdict
    assert stored["fp8"]["fp8_layers"] == 0 and stored["fp8"]["within_tolerance"] is None
    assert stored["fp8"]["loss_curve"][:3] == stored["fp32"]["loss_curve"]
    bf16, fp32 = np.array(stored["bf16"]["loss_curve"]), np.array(stored["fp32"]["loss_curve"])
    assert stored["fp32"]["max_rel_diff"] == pytest.approx(np.max(np.abs(fp32 - bf16[:3]) / bf16[:3]))
    assert results.measured("fp8-numerics", tmp_path).empty  # smoke records are never shown as GPU results


def test_relative_differences_against_a_hand_computation():
    compared = fp8_numerics.compare(np.array([1.1, 0.9, 1.0]), np.array([1.0, 1.0, 0.8, 0.7]), first=2)
    assert compared["compared_steps"] == 3
    assert compared["max_rel_diff"] == pytest.approx(0.25)  # |1.0 - 0.8| / 0.8
    assert compared["mean_rel_diff"] == pytest.approx((0.1 + 0.1 + 0.25) / 3)
    assert compared["mean_rel_diff_first"] == pytest.approx(0.1)


def _curves(fp8_offset: float, early_scale: float = 1.0) -> dict[str, np.ndarray]:
    steps = np.arange(60)
    bf16 = 1.0 + 0.1 * np.exp(-steps / 20) + 0.02 * np.sin(steps)  # a decaying loss with batch-to-batch scatter
    fp32 = bf16[:10] * (1 + 1e-3 * (-1) ** np.arange(10))  # 0.1% from bf16 over the first 10 steps
    fp8 = bf16 * (1 + early_scale * 1e-2 * (-1) ** steps) + fp8_offset
    return {"bf16": bf16, "fp32": fp32, "fp8": fp8}


def test_verdict_passes_fp8_that_only_adds_its_rounding():
    judged = fp8_numerics.verdict(_curves(0.0), first=10, window=20)
    assert judged["early_ratio"] == pytest.approx(10.0, rel=1e-3)  # 1% against 0.1%
    assert judged["end_rel_diff"] < 1e-3 and judged["within_tolerance"] is True
    scatter = np.diff(_curves(0.0)["bf16"][-20:]).std() / np.sqrt(2) / _curves(0.0)["bf16"][-20:].mean()
    assert judged["loss_noise"] == pytest.approx(scatter)


@pytest.mark.parametrize("offset, early_scale, failed", [(0.02, 1.0, "end_ok"), (0.0, 4.0, "early_ratio_ok")])
def test_verdict_fails_a_shifted_end_or_an_early_deviation_past_the_ratio(offset, early_scale, failed):
    judged = fp8_numerics.verdict(_curves(offset, early_scale), first=10, window=20)
    assert judged["within_tolerance"] is False and judged["checks"][failed] is False
    curves = _curves(0.0)
    curves["fp8"][5] = np.nan
    assert fp8_numerics.verdict(curves, first=10, window=20)["checks"]["finite"] is False


def test_layer_verdict_uses_its_own_ratio():
    curves = _curves(0.0, early_scale=0.3)  # 0.3% early: 3 times bf16's distance from fp32
    curves["bf16-peft"] = curves.pop("fp8")
    judged = fp8_numerics.verdict(curves, first=10, window=20, candidate="bf16-peft",
                                  max_ratio=fp8_numerics.MAX_LAYER_RATIO)
    assert judged["early_ratio"] == pytest.approx(3.0, rel=1e-3) and judged["checks"]["early_ratio_ok"] is False
    assert judged["end_mean_loss_bf16-peft"] == pytest.approx(curves["bf16-peft"][-20:].mean())


def test_bad_step_counts_and_runs_are_refused():
    with pytest.raises(SystemExit):
        fp8_numerics.parse_args(["--steps", "20", "--fp32-steps", "30"])
    with pytest.raises(SystemExit):
        fp8_numerics.parse_args(["--runs", "fp8,fp32"])  # no bf16 reference
    assert fp8_numerics.parse_args(["--runs", "fp32, bf16-peft,bf16"]).runs == ["bf16", "bf16-peft", "fp32"]
