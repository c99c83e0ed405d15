"""Forecast metrics: the CRPS estimators, coverage, PIT, the Wilson interval and direction scoring."""

from __future__ import annotations

import numpy as np
import pytest

from pricegpt.evaluate.metrics import (
    NormalPredictive,
    SamplePredictive,
    StudentTPredictive,
    crps_normal,
    crps_samples,
    crps_student_t,
    direction_hits,
    pit_histogram,
    score,
    wilson_interval,
)


def _crps_brute_force(samples: np.ndarray, y: float, fair: bool) -> float:
    S = len(samples)
    pairs = np.abs(samples[:, None] - samples[None, :]).sum()
    return np.mean(np.abs(samples - y)) - 0.5 * pairs / (S * (S - 1) if fair else S * S)


@pytest.mark.parametrize("fair", [True, False])
def test_sorted_crps_equals_the_pairwise_definition(fair):
    rng = np.random.default_rng(1)
    samples = rng.standard_t(3, size=(5, 37))
    y = rng.normal(size=5)
    fast = crps_samples(samples, y, fair=fair)
    slow = [_crps_brute_force(samples[i], y[i], fair) for i in range(5)]
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


def test_sample_crps_matches_the_normal_closed_form():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=50), rng.uniform(0.5, 2.0, size=50)
    y = mean + std * rng.normal(size=50) * 1.5
    samples = mean[:, None] + std[:, None] * rng.normal(size=(50, 20000))
    estimate, exact = crps_samples(samples, y), crps_normal(mean, std, y)
    # per origin the estimator's Monte Carlo error is ~1% here; its mean over origins is much tighter
    np.testing.assert_allclose(estimate, exact, rtol=0.05)
    assert abs(estimate.mean() / exact.mean() - 1) < 0.005


def test_normal_crps_known_value_and_minimum():
    # CRPS(N(0,1), 0) = 2 phi(0) - 1/sqrt(pi) = (sqrt(2) - 1) / sqrt(pi)
    assert crps_normal(0.0, 1.0, 0.0) == pytest.approx((np.sqrt(2) - 1) / np.sqrt(np.pi), rel=1e-12)
    # a proper score: the true sigma beats a too narrow and a too wide one on average
    rng = np.random.default_rng(2)
    y = rng.normal(size=20000)
    scores = {s: crps_normal(0.0, s, y).mean() for s in (0.5, 1.0, 2.0)}
    assert scores[1.0] < scores[0.5] and scores[1.0] < scores[2.0]


def test_student_t_crps_matches_samples():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(3)
    y = np.array([-1.0, 0.0, 0.3, 2.5])
    samples = 0.1 + 0.7 * rng.standard_t(4, size=(4, 200000))
    np.testing.assert_allclose(crps_samples(samples, y), crps_student_t(0.1, 0.7, 4.0, y), rtol=0.02)


def _chi_square(counts) -> float:
    counts = np.asarray(counts, dtype=float)
    expected = counts.sum() / len(counts)
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("kind", ["normal", "samples"])
def test_correct_forecasts_have_nominal_coverage_and_uniform_pit(kind):
    rng = np.random.default_rng(4)
    n = 4000
    mean, std = rng.normal(size=n) * 0.01, rng.uniform(0.005, 0.03, size=n)
    y = mean + std * rng.normal(size=n)
    pred = (NormalPredictive(mean, std) if kind == "normal"
            else SamplePredictive(mean[:, None] + std[:, None] * rng.normal(size=(n, 400))))
    result = score(pred, y)
    # binomial sd of a coverage over 4000 origins is <= 0.008; allow ~4 sd
    assert abs(result["coverage_50"] - 0.5) < 0.035
    assert abs(result["coverage_90"] - 0.9) < 0.025
    # 10 bins: chi-square with 9 dof; 27.9 is its 99.9% quantile
    assert _chi_square(result["pit_histogram"]) < 27.9
    assert result["width_90"] > result["width_50"] > 0


def test_overconfident_forecasts_undercover_and_have_a_u_shaped_pit():
    rng = np.random.default_rng(5)
    y = rng.normal(size=4000)
    result = score(NormalPredictive(np.zeros(4000), 0.5 * np.ones(4000)), y)
    assert result["coverage_90"] < 0.75
    hist = result["pit_histogram"]
    assert hist[0] > 2 * hist[5] and hist[-1] > 2 * hist[4]
    assert _chi_square(hist) > 100


def test_sample_pit_counts_ties_as_half():
    pred = SamplePredictive(np.array([[0.0, 1.0, 1.0, 2.0]]))
    assert pred.cdf(np.array([1.0]))[0] == pytest.approx(0.5)
    assert pred.cdf(np.array([-1.0]))[0] == 0.0 and pred.cdf(np.array([3.0]))[0] == 1.0
    assert pit_histogram(np.array([0.0, 0.05, 0.5, 1.0]), bins=2) == [2, 2]


def test_wilson_interval_known_values_and_coverage():
    lo, hi = wilson_interval(60, 100)
    assert lo == pytest.approx(0.502002, abs=1e-5) and hi == pytest.approx(0.690599, abs=1e-5)
    lo, hi = wilson_interval(0, 20)  # unlike the Wald interval, not degenerate at 0 successes
    assert lo == 0.0 and 0.15 < hi < 0.17
    # the 95% interval covers the true p about 95% of the time
    rng = np.random.default_rng(6)
    p, n = 0.55, 200
    covered = [lo <= p <= hi for lo, hi in (wilson_interval(k, n) for k in rng.binomial(n, p, size=2000))]
    assert 0.93 < np.mean(covered) < 0.97


def test_directional_accuracy_and_its_interval():
    assert direction_hits(np.array([1.0, -1.0, 0.0, 2.0]), np.array([0.5, 0.5, 3.0, 0.0])).tolist() == [1, 0, .5, .5]
    rng = np.random.default_rng(7)
    y = rng.normal(size=1000)
    # a forecast that knows the sign 70% of the time
    right = rng.random(1000) < 0.7
    median = np.where(right, np.sign(y), -np.sign(y)) * 0.01
    result = score(SamplePredictive(median[:, None] + 1e-3 * rng.normal(size=(1000, 64))), y)
    lo, hi = result["directional_accuracy_ci95"]
    assert lo < result["directional_accuracy"] < hi
    assert lo < 0.7 < hi and hi - lo < 0.07
    assert result["directional_accuracy"] == pytest.approx(right.mean(), abs=0.01)
    # zero-drift forecasts are a coin flip exactly
    zero = score(NormalPredictive(np.zeros(1000), np.ones(1000)), y)
    assert zero["directional_accuracy"] == 0.5


def test_student_t_predictive_quantiles_and_pit():
    pytest.importorskip("scipy")
    rng = np.random.default_rng(8)
    y = 0.2 + 0.5 * rng.standard_t(5, size=3000)
    result = score(StudentTPredictive(0.2, 0.5, 5.0), y)
    assert abs(result["coverage_90"] - 0.9) < 0.03
    assert _chi_square(result["pit_histogram"]) < 27.9
