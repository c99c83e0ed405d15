"""Paired significance (evaluate/significance.py): verdicts that are right about as often as they claim.

The simulated per-origin tables are built like a real evaluation: 10 symbols whose returns share a common factor
(cross-sectional correlation 0.2) with a persistent common volatility (AR(1) log-volatility, phi 0.9), and
forecasters that predict N(0, scale * sigma * noise) with their own independent estimation noise, scored with the
closed-form Gaussian CRPS. The simulation tests use 499 bootstrap replicates instead of the default 2000 to stay
fast; the rates barely depend on it. Measured on the tests' 200 datasets: identical forecasters declared different
in 5.5% (5.0% with 2000 replicates), the 15%-too-wide one declared worse in 88.5% (86%); on 2000 fresh null
datasets 6.0% (DM at 5%: 5.3%), on 1000 fresh wide ones 90.6%.
"""

from __future__ import annotations

import json
import sys
import time
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

from pricegpt.errors import PriceGPTError
from pricegpt.evaluate.metrics import crps_normal
from pricegpt.evaluate.significance import (
    MIN_DATES,
    compare,
    date_block_bootstrap,
    date_losses,
    diebold_mariano,
    headline_verdict,
    model_confidence_set,
    newey_west_lags,
    newey_west_variance,
    politis_white_block_length,
)

SIM_BOOT = 499


def simulated_table(rng: np.random.Generator, scales: dict, n_dates: int = 200, n_symbols: int = 10,
                    rho: float = 0.2, phi: float = 0.9, vol_sd: float = 0.3, noise: float = 0.05) -> pd.DataFrame:
    """Per-origin CRPS of forecasters {name: volatility scale} (1.0 is right) on correlated, clustered returns."""
    shocks = rng.standard_normal(n_dates)
    log_vol = np.empty(n_dates)
    log_vol[0] = vol_sd * shocks[0]
    for t in range(1, n_dates):
        log_vol[t] = phi * log_vol[t - 1] + np.sqrt(1 - phi ** 2) * vol_sd * shocks[t]
    sigma = 0.01 * np.exp(log_vol)[:, None]
    common = rng.standard_normal((n_dates, 1))
    realised = sigma * (np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.standard_normal((n_dates, n_symbols)))
    table = pd.DataFrame({
        "symbol": np.tile([f"S{i:02d}" for i in range(n_symbols)], n_dates),
        "origin": np.repeat(pd.date_range("2021-01-04", periods=n_dates, freq="B", tz="UTC"), n_symbols),
        "horizon": 1})
    for name, scale in scales.items():
        estimation = (np.sqrt(0.5) * rng.standard_normal((n_dates, 1))
                      + np.sqrt(0.5) * rng.standard_normal((n_dates, n_symbols)))
        table[f"crps_{name}"] = crps_normal(0.0, scale * sigma * np.exp(noise * estimation), realised).ravel()
    return table


# ------------------------------------------------------------------------------------------- simulations
def test_identical_forecasters_are_declared_different_about_5_percent_of_the_time():
    rng = np.random.default_rng(20240515)
    verdicts, pvalues = [], []
    for i in range(200):
        table = simulated_table(rng, {"model": 1.0, "twin": 1.0})
        result = compare(table, baselines=["twin"], seed=i, n_boot=SIM_BOOT)["twin"]
        verdicts.append(result["verdict"])
        pvalues.append(result["dm_pvalue"])
    different = np.mean([v != "no significant difference" for v in verdicts])
    assert 0.02 <= different <= 0.09, f"declared different in {different:.1%} of 200 null datasets"
    pvalues = np.array(pvalues)  # uniform-ish under the null
    assert 0.01 <= np.mean(pvalues < 0.05) <= 0.10, np.mean(pvalues < 0.05)
    assert 0.40 <= np.mean(pvalues < 0.5) <= 0.60, np.mean(pvalues < 0.5)


def test_a_forecaster_15_percent_too_wide_is_declared_worse_at_2000_origins():
    rng = np.random.default_rng(7)
    verdicts = []
    for i in range(200):
        table = simulated_table(rng, {"model": 1.15, "right": 1.0})
        assert len(table) == 2000
        verdicts.append(compare(table, baselines=["right"], seed=i, n_boot=SIM_BOOT)["right"]["verdict"])
    worse = np.mean([v == "worse" for v in verdicts])
    assert worse >= 0.80, f"declared worse in only {worse:.1%} of 200 datasets"
    assert "better" not in verdicts


# -------------------------------------------------------------------------------- the comparison contract
def test_comparison_is_json_safe_consistent_with_its_intervals_and_with_the_table():
    rng = np.random.default_rng(3)
    table = simulated_table(rng, {"model": 1.0, "wide": 1.4, "narrow": 0.6, "twin": 1.0}, n_dates=150)
    holes = rng.random(len(table)) < 0.1  # an unbalanced panel: pairwise-dropped rows, unequal counts per date
    table.loc[holes, "crps_wide"] = np.nan
    comparison = compare(table, seed=1)
    json.dumps(comparison, allow_nan=False)
    assert set(comparison) == {"wide", "narrow", "twin"}
    for name, result in comparison.items():
        assert set(result) == {"crps_diff", "crps_diff_ci", "crps_ratio", "crps_ratio_ci", "dm_stat", "dm_pvalue",
                               "verdict", "block_length", "n_dates"}
        pair = table[["crps_model", f"crps_{name}"]].dropna()
        assert result["crps_diff"] == pytest.approx((pair["crps_model"] - pair[f"crps_{name}"]).mean(), rel=1e-9)
        assert result["crps_ratio"] == pytest.approx(pair["crps_model"].mean() / pair[f"crps_{name}"].mean(),
                                                     rel=1e-9)
        lo, hi = result["crps_diff_ci"]
        assert lo <= result["crps_diff"] <= hi
        assert result["crps_ratio_ci"][0] <= result["crps_ratio"] <= result["crps_ratio_ci"][1]
        expected = "better" if hi < 0 else "worse" if lo > 0 else "no significant difference"
        assert result["verdict"] == expected
        # the ratio's interval tells the same story as the difference's
        assert (result["crps_ratio_ci"][1] < 1) == (hi < 0) and (result["crps_ratio_ci"][0] > 1) == (lo > 0)
        assert 1.0 <= result["block_length"] <= result["n_dates"] / 2 and result["n_dates"] == 150
        assert 0.0 <= result["dm_pvalue"] <= 1.0
    assert comparison["wide"]["verdict"] == "better" and comparison["narrow"]["verdict"] == "better"
    assert comparison["twin"]["verdict"] == "no significant difference"
    # a wider interval at a higher level
    wider = compare(table, baselines=["twin"], seed=1, level=0.99)["twin"]["crps_diff_ci"]
    assert wider[0] < comparison["twin"]["crps_diff_ci"][0] and wider[1] > comparison["twin"]["crps_diff_ci"][1]


def test_headline_verdict_is_against_the_baseline_with_the_lowest_mean_crps():
    rng = np.random.default_rng(4)
    table = simulated_table(rng, {"model": 1.0, "wide": 1.4, "close": 1.05}, n_dates=60)
    comparison = compare(table, seed=0)
    means = {name: float(table[f"crps_{name}"].mean()) for name in ("model", "wide", "close")}
    headline = headline_verdict(comparison, means)
    assert headline == {"best_baseline": "close", "verdict": comparison["close"]["verdict"],
                        "crps_ratio": comparison["close"]["crps_ratio"],
                        "crps_ratio_ci": comparison["close"]["crps_ratio_ci"]}
    assert headline_verdict({**comparison, "close": None}, means)["best_baseline"] == "wide"
    assert headline_verdict({"wide": None}, means) == {"best_baseline": None, "verdict": None, "crps_ratio": None,
                                                       "crps_ratio_ci": None}


def test_same_seed_same_output_and_row_order_or_other_baselines_do_not_matter():
    rng = np.random.default_rng(5)
    table = simulated_table(rng, {"model": 1.0, "a": 1.1, "b": 0.9}, n_dates=80)
    first = compare(table, seed=11)
    assert compare(table, seed=11) == first
    assert compare(table.sample(frac=1.0, random_state=0), seed=11) == first
    assert compare(table, baselines=["b"], seed=11)["b"] == first["b"]
    assert compare(table, seed=12)["a"]["crps_diff_ci"] != first["a"]["crps_diff_ci"]


# ---------------------------------------------------------------------------------------------- pieces
def test_newey_west_variance_and_dm_statistic_match_a_hand_computation():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    # deviations -2..2: gamma0 = 10/5 = 2, gamma1 = (2 + 0 + 0 + 2)/5 = 0.8, gamma2 = (0 - 1 + 0)/5 = -0.2
    assert newey_west_variance(x, lags=0) == pytest.approx(2.0)
    assert newey_west_variance(x, lags=1) == pytest.approx(2.0 + 2 * 0.5 * 0.8)
    assert newey_west_variance(x, lags=2) == pytest.approx(2.0 + 2 * (2 / 3 * 0.8 + 1 / 3 * -0.2))
    assert newey_west_lags(100) == 4 and newey_west_lags(1000) == 6 and newey_west_lags(5) == 2
    d = np.array([0.5, -0.1, 0.3, 0.2, 0.4, -0.2, 0.6, 0.1, 0.0, 0.3])  # lag floor(4 * 0.1^(2/9)) = 2
    stat, pvalue = diebold_mariano(d)
    dev = d - d.mean()
    g = [dev[k:] @ dev[:len(d) - k] / len(d) for k in range(3)]
    expected = d.mean() / np.sqrt((g[0] + 2 * (2 / 3 * g[1] + 1 / 3 * g[2])) / len(d))
    assert stat == pytest.approx(expected)
    assert pvalue == pytest.approx(2 * (1 - NormalDist().cdf(abs(expected))))
    assert diebold_mariano(-d) == (-stat, pvalue)


def test_constant_differentials_have_a_defined_dm_test_and_a_degenerate_interval():
    assert diebold_mariano(np.zeros(50)) == (0.0, 1.0)
    assert diebold_mariano(np.full(50, -0.01)) == (None, 0.0)
    table = simulated_table(np.random.default_rng(6), {"model": 1.0}, n_dates=30)
    table["crps_copy"] = table["crps_model"]
    result = compare(table, baselines=["copy"])["copy"]
    assert result["crps_diff"] == 0.0 and result["crps_diff_ci"] == [0.0, 0.0]
    assert result["crps_ratio"] == 1.0 and result["crps_ratio_ci"] == [1.0, 1.0]
    assert (result["dm_stat"], result["dm_pvalue"]) == (0.0, 1.0)
    assert result["verdict"] == "no significant difference" and result["block_length"] == 1.0


def ar1(rng, phi: float, n: int) -> np.ndarray:
    shocks = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = shocks[0] / np.sqrt(1 - phi ** 2)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + shocks[t]
    return x


def test_block_length_is_positive_and_grows_with_autocorrelation():
    rng = np.random.default_rng(8)
    white = politis_white_block_length(rng.standard_normal(1000))
    persistent = politis_white_block_length(ar1(rng, 0.9, 1000))
    assert 0 < white < 3 < 10 < persistent
    assert politis_white_block_length(np.zeros(100)) == 1.0


def test_block_length_agrees_roughly_with_arch():
    arch_bootstrap = pytest.importorskip("arch.bootstrap")
    rng = np.random.default_rng(9)
    for phi in (0.3, 0.6, 0.9):
        for n in (300, 2000):
            x = ar1(rng, phi, n)
            theirs = float(arch_bootstrap.optimal_block_length(x)["stationary"].iloc[0])
            assert 0.6 <= politis_white_block_length(x) / theirs <= 1.5, (phi, n)


def test_bootstrap_spread_matches_the_long_run_variance_of_a_serially_correlated_series():
    rng = np.random.default_rng(10)
    phi, n = 0.6, 4000
    x = ar1(rng, phi, n)
    counts = np.ones(n)
    sums = x[:, None]
    truth = np.sqrt(1 / (1 - phi) ** 2 / n)  # sd of the mean: long-run variance sigma^2 / (1 - phi)^2
    block = politis_white_block_length(x)
    blocks = date_block_bootstrap(sums, counts, block, 2000, seed=0)[:, 0].std()
    iid = date_block_bootstrap(sums, counts, 1.0, 2000, seed=0)[:, 0].std()
    assert 0.8 * truth <= blocks <= 1.2 * truth
    assert iid < 0.6 * truth  # resampling single dates would claim far too much precision
    # one block as long as the sample: every replicate is a rotation of it, with exactly its mean
    rotations = date_block_bootstrap(sums[:50], counts[:50], 1e9, 20, seed=0)
    assert np.allclose(rotations, x[:50].mean())


def test_bootstrap_of_5000_dates_takes_well_under_a_second():
    rng = np.random.default_rng(11)
    sums, counts = rng.gamma(2.0, size=(5000, 2)), np.full(5000, 10.0)
    date_block_bootstrap(sums, counts, 3.0, 100, seed=0)
    timings = []
    for _ in range(3):  # best of three: the test machine is shared
        start = time.perf_counter()
        replicates = date_block_bootstrap(sums, counts, 3.0, 2000, seed=0)
        timings.append(time.perf_counter() - start)
    assert replicates.shape == (2000, 2) and np.isfinite(replicates).all()
    assert min(timings) < 1.0, timings


def test_date_losses_group_all_symbols_of_a_date_and_weight_by_origins():
    table = pd.DataFrame({
        "symbol": ["A", "B", "A", "B", "A"],
        "origin": ["2024-01-02T00:00:00+00:00", "2024-01-02T14:30:00Z", "2024-01-01", "2024-01-01T23:00:00Z",
                   "2024-01-03"],
        "crps_model": [1.0, 2.0, 3.0, 4.0, np.nan], "crps_b": [1.0, 1.0, 1.0, 1.0, 1.0]})
    losses = date_losses(table, ["model", "b"])
    assert [str(d.date()) for d in losses.dates] == ["2024-01-01", "2024-01-02"]
    assert losses.sums.tolist() == [[7.0, 2.0], [3.0, 2.0]] and losses.counts.tolist() == [2.0, 2.0]
    assert losses.means.tolist() == [2.5, 1.0] and losses.series.mean(axis=0).tolist() == [2.5, 1.0]
    assert date_losses(table, ["model", "b"], unit="origin").n_dates == 4


# ---------------------------------------------------------------------------------------------- edge cases
def test_single_symbol_tables_compare_over_its_origins():
    table = simulated_table(np.random.default_rng(12), {"model": 1.0, "wide": 1.5}, n_dates=400, n_symbols=1)
    result = compare(table)["wide"]
    assert result["n_dates"] == 400 and result["verdict"] == "better"


def test_baselines_that_cannot_be_compared_are_none_with_a_reason():
    table = simulated_table(np.random.default_rng(13), {"model": 1.0, "short": 1.0, "empty": 1.0}, n_dates=40)
    table["crps_empty"] = np.nan
    table.loc[table["origin"] > table["origin"].iloc[10 * (MIN_DATES - 2)], "crps_short"] = np.nan
    notes = {}
    comparison = compare(table, notes=notes)
    assert comparison["empty"] is None and "crps_empty" in notes["empty"]
    assert comparison["short"] is None and f"only {MIN_DATES - 1} dates" in notes["short"]
    assert headline_verdict(comparison, {"short": 0.1, "empty": 0.1})["verdict"] is None


@pytest.mark.parametrize("change, fragment", [
    (lambda t: t.drop(columns="crps_base"), "crps_base"),
    (lambda t: t.drop(columns="origin"), "origin"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "repeated (symbol, origin)"),
    (lambda t: t.assign(horizon=np.arange(len(t)) % 2 + 1), "mixes horizons"),
    (lambda t: t.assign(crps_base=np.where(np.arange(len(t)) == 3, np.inf, t["crps_base"])), "infinite"),
    (lambda t: t.assign(crps_model=np.nan), "no finite loss"),
    (lambda t: t.assign(origin="yesterday"), "origin"),
])
def test_tables_that_cannot_be_paired_raise_a_clear_error(change, fragment):
    table = simulated_table(np.random.default_rng(14), {"model": 1.0, "base": 1.0}, n_dates=20)
    with pytest.raises(PriceGPTError) as err:
        compare(change(table), baselines=["base"])
    assert fragment in str(err.value)


# ---------------------------------------------------------------------------------- model confidence set
def test_model_confidence_set_keeps_the_true_best_forecaster():
    pytest.importorskip("arch")
    table = simulated_table(np.random.default_rng(15), {"model": 1.0, "wide": 1.5, "narrow": 0.6, "far": 2.5},
                            n_dates=300)
    result = model_confidence_set(table, size=0.1, seed=0)
    assert "model" in result["included"] and "far" not in result["included"]
    assert set(result["pvalues"]) == {"model", "wide", "narrow", "far"} and result["size"] == 0.1
    assert result["pvalues"]["model"] == 1.0
    assert model_confidence_set(table, size=0.1, seed=0) == result
    json.dumps(result, allow_nan=False)


def test_model_confidence_set_without_arch_is_none_with_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "arch.bootstrap", None)  # makes `from arch.bootstrap import ...` fail
    table = simulated_table(np.random.default_rng(16), {"model": 1.0, "wide": 1.5}, n_dates=30)
    notes = {}
    assert model_confidence_set(table, notes=notes) is None
    assert "arch is not installed" in notes["model_confidence_set"]
