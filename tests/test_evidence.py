"""The evidence of an evaluation: origins.csv holds every aggregate of metrics.json, the verdicts agree with their
intervals and with that table, calibration (reliability, volatility regimes, VaR tests, P(up)) has known answers,
several horizons are scored in one evaluation, and the CLI headline puts verdicts first."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from pricegpt.cli.text import headline_table
from pricegpt.errors import ConfigError
from pricegpt.evaluate import calibration, origins_frame
from pricegpt.evaluate.baselines import BASELINES
from pricegpt.evaluate.metrics import RELIABILITY_LEVELS, NormalPredictive, per_origin
from pricegpt.evaluate.origins import write_csv
from pricegpt.evaluate.run import resolve_horizons
from pricegpt.evaluate.significance import MIN_DATES, VERDICTS, compare
from test_evaluate import SCRIPT_SYMBOL, tiny_run  # noqa: F401  (the fixture: a real run trained for 30 steps)

HORIZONS = [2, 1, 4]
EVAL = {"horizons": HORIZONS, "num_samples": 32, "max_origins": 15, "seed": 0}
SCORE_KEYS = {"crps", "coverage_50", "coverage_90", "directional_accuracy", "mae_median"}
COMPARISON_KEYS = {"crps_diff", "crps_diff_ci", "crps_ratio", "crps_ratio_ci", "dm_stat", "dm_pvalue", "verdict"}


@pytest.fixture(scope="module")
def evidence(tiny_run, tmp_path_factory):  # noqa: F811
    from pricegpt.evaluate import evaluate_run

    run, csv, _ = tiny_run
    out = tmp_path_factory.mktemp("evidence") / "eval"
    metrics = evaluate_run(run, data=str(csv), out=out, **EVAL)
    table = pd.read_csv(out / "origins.csv")
    return metrics, table, out


def _ran(forecast: dict) -> list[str]:
    return [name for name in ("model", *BASELINES) if forecast[name] is not None]


# ---------------------------------------------------------------------------------------------- the contract
def test_every_contract_key_is_present(evidence):
    metrics, _, out = evidence
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert {"split", "train_end", "val_end", "n_symbols", "n_tokens", "tokens", "forecast"} <= set(metrics)
    assert metrics["horizons"] == HORIZONS and list(metrics["forecasts_by_horizon"]) == ["2", "1", "4"]
    assert metrics["forecast"] == metrics["forecasts_by_horizon"]["2"]
    for horizon, fc in metrics["forecasts_by_horizon"].items():
        assert fc["horizon_bars"] == int(horizon) and fc["num_samples"] == 32 and fc["n_origins"] == 30
        assert {"comparison", "verdict", "by_regime", "reliability", "var_tests", "p_up", "mcs"} <= set(fc)
        for name in ("model", *BASELINES):
            assert name in fc
            if fc[name] is None:
                assert name in fc["notes"] and fc["comparison"][name] is None
            else:
                assert set(fc[name]) >= SCORE_KEYS
        assert fc["seasonal"] is None  # daily bars
        assert set(fc["comparison"]) == set(BASELINES)
        for name in _ran(fc)[1:]:
            entry = fc["comparison"][name]
            assert set(entry) >= COMPARISON_KEYS and entry["verdict"] in VERDICTS
            assert len(entry["crps_diff_ci"]) == 2 and len(entry["crps_ratio_ci"]) == 2
        assert set(fc["verdict"]) == {"best_baseline", "verdict", "crps_ratio", "crps_ratio_ci"}
        assert fc["verdict"]["verdict"] in VERDICTS
        assert set(fc["reliability"]["coverage"]) == {"model", *BASELINES}
        assert set(fc["by_regime"]["regimes"]) == {"low", "mid", "high"}
        assert set(fc["var_tests"]) == {"model", "garch", "fhs"} and set(fc["var_tests"]["model"]) == {"1%", "5%"}
        assert {"brier", "brier_climatology", "brier_train_frequency", "bss_climatology", "bss_train_frequency",
                "reliability"} <= set(fc["p_up"])


# ------------------------------------------------------------------------------------- origins.csv recomputes
def test_origins_csv_recomputes_every_aggregate(evidence):
    metrics, table, _ = evidence
    assert list(table.columns[:4]) == ["symbol", "origin", "horizon", "realised"]
    assert set(table["symbol"]) == {SCRIPT_SYMBOL, "MSFT"}
    for horizon, fc in metrics["forecasts_by_horizon"].items():
        rows = table[table["horizon"] == int(horizon)]
        y = rows["realised"].to_numpy()
        assert len(rows) == fc["n_origins"]
        assert fc["n_dates"] == pd.to_datetime(rows["origin"]).dt.floor("D").nunique()
        for name in _ran(fc):
            m = fc[name]
            lo90, hi90, lo50, hi50 = (rows[f"{q}_{name}"].to_numpy() for q in ("q05", "q95", "q25", "q75"))
            # the hits are the intervals of the quantile columns
            np.testing.assert_array_equal(rows[f"hit90_{name}"], (y >= lo90) & (y <= hi90))
            np.testing.assert_array_equal(rows[f"hit50_{name}"], (y >= lo50) & (y <= hi50))
            assert m["crps"] == pytest.approx(rows[f"crps_{name}"].mean(), rel=1e-12)
            assert m["coverage_90"] == pytest.approx(rows[f"hit90_{name}"].mean(), rel=1e-12)
            assert m["coverage_50"] == pytest.approx(rows[f"hit50_{name}"].mean(), rel=1e-12)
            assert m["width_90"] == pytest.approx(np.mean(hi90 - lo90), rel=1e-12)
            median = rows[f"q50_{name}"].to_numpy()
            assert m["mae_median"] == pytest.approx(np.mean(np.abs(median - y)), rel=1e-12)
            hits = np.where((np.sign(median) == 0) | (np.sign(y) == 0), 0.5, np.sign(median) == np.sign(y))
            assert m["directional_accuracy"] == pytest.approx(hits.mean(), rel=1e-12)
            assert m["pit_histogram"] == np.histogram(rows[f"pit_{name}"], bins=10, range=(0, 1))[0].tolist()
            assert fc["reliability"]["coverage"][name] == pytest.approx(
                [np.mean(rows[f"level_{name}"] <= L) for L in RELIABILITY_LEVELS], rel=1e-12)
            if name != "model":
                ratio = rows["crps_model"].mean() / rows[f"crps_{name}"].mean()
                assert fc["comparison"][name]["crps_ratio"] == pytest.approx(ratio, rel=1e-12)
        for symbol, entry in fc["per_symbol"].items():
            mine = rows[rows["symbol"] == symbol]
            assert entry["n_origins"] == len(mine)
            assert entry["crps_model"] == pytest.approx(mine["crps_model"].mean(), rel=1e-12)
        # P(up) and the VaR tests from their columns
        up = (y > 0).astype(float)
        assert fc["p_up"]["brier"] == pytest.approx(np.mean((rows["p_up_model"] - up) ** 2), rel=1e-12)
        assert fc["p_up"]["brier_train_frequency"] == pytest.approx(np.mean((rows["p_up_train"] - up) ** 2))
        for name in ("model", "garch", "fhs"):
            for label, q in (("1%", "q01"), ("5%", "q05")):
                assert fc["var_tests"][name][label]["exceedances"] == int(np.sum(y < rows[f"{q}_{name}"]))
        # volatility regimes: pooled terciles of the horizon's vol20
        t1, t2 = np.quantile(rows["vol20"], [1 / 3, 2 / 3])
        assert fc["by_regime"]["thresholds"] == pytest.approx([t1, t2], rel=1e-12)
        expected = np.where(rows["vol20"] <= t1, "low", np.where(rows["vol20"] <= t2, "mid", "high"))
        np.testing.assert_array_equal(rows["regime"], expected)
        for regime, entry in fc["by_regime"]["regimes"].items():
            mine = rows[rows["regime"] == regime]
            assert entry["n"] == len(mine)
            assert entry["model_coverage_90"] == pytest.approx(mine["hit90_model"].mean(), rel=1e-12)
            assert entry["crps_ratio"]["histvol20"] == pytest.approx(
                mine["crps_model"].mean() / mine["crps_histvol20"].mean(), rel=1e-12)


def test_verdicts_agree_with_their_intervals_and_with_the_per_origin_table(evidence):
    metrics, table, _ = evidence
    for horizon, fc in metrics["forecasts_by_horizon"].items():
        rows = table[table["horizon"] == int(horizon)]
        compared = [name for name in _ran(fc)[1:]]
        for name in compared:
            entry = fc["comparison"][name]
            lo, hi = entry["crps_diff_ci"]
            assert entry["verdict"] == ("better" if hi < 0 else "worse" if lo > 0 else "no significant difference")
            assert lo <= entry["crps_diff"] <= hi
            assert entry["crps_ratio_ci"][0] <= entry["crps_ratio"] <= entry["crps_ratio_ci"][1]
            diff = rows["crps_model"].mean() - rows[f"crps_{name}"].mean()
            assert entry["crps_diff"] == pytest.approx(diff, rel=1e-9, abs=1e-15)
        # the headline is the comparison with the baseline of lowest mean CRPS
        best = min(compared, key=lambda n: fc[n]["crps"])
        assert fc["verdict"]["best_baseline"] == best
        assert fc["verdict"]["crps_ratio_ci"] == fc["comparison"][best]["crps_ratio_ci"]
        # the file alone reproduces the intervals and verdicts
        again = compare(rows, "model", compared, seed=EVAL["seed"])
        assert again == {name: fc["comparison"][name] for name in compared}


# ------------------------------------------------------------------------------------------- several horizons
def test_several_horizons_in_one_evaluation(evidence):
    metrics, table, _ = evidence
    assert sorted(table["horizon"].unique()) == [1, 2, 4]
    origins = {h: table[table["horizon"] == h][["symbol", "origin"]].reset_index(drop=True) for h in HORIZONS}
    # a shorter horizon reuses the main horizon's origins (the first bar of the same paths); a longer one has its own
    pd.testing.assert_frame_equal(origins[1], origins[2])
    assert not origins[4].equals(origins[2])
    for h in HORIZONS:
        per_symbol = table[table["horizon"] == h].groupby("symbol")["origin"]
        assert all(pd.to_datetime(o).is_monotonic_increasing for _, o in per_symbol)
    assert "first 1 bar" in metrics["forecasts_by_horizon"]["1"]["origins_rule"]
    assert resolve_horizons(None, None, 4) == [4, 1] and resolve_horizons(None, None, 1) == [1]
    assert resolve_horizons(3, None, 4) == [3] and resolve_horizons(None, [16, 1, 16, 4], 4) == [16, 1, 4]
    for horizon, horizons, fragment in ((2, [1], "not both"), (None, [], "empty"), (None, "1,4", "list"),
                                        (None, [1, 0], "--horizons")):
        with pytest.raises(ConfigError, match=fragment):
            resolve_horizons(horizon, horizons, 4)


def test_origins_frame_is_the_csv_as_a_data_frame(evidence, tiny_run):  # noqa: F811
    from pricegpt.forecast import Forecaster

    _, table, _ = evidence
    run, csv, _ = tiny_run
    frame = origins_frame(Forecaster.from_run(run), str(csv), **EVAL)
    assert str(frame["origin"].dt.tz) == "UTC"
    written = frame.assign(origin=frame["origin"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                           context_end=frame["context_end"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    pd.testing.assert_frame_equal(written.reset_index(drop=True), table, check_dtype=False)


def test_symbols_in_origins_csv_cannot_become_spreadsheet_formulas(tmp_path):
    stamp = pd.DatetimeIndex(["2024-01-02"]).tz_localize("UTC")
    table = pd.DataFrame({"symbol": ["=HYPERLINK(1)"], "origin": stamp, "horizon": [1], "realised": [0.1],
                          "context_end": stamp})
    write_csv(tmp_path / "origins.csv", table)
    assert pd.read_csv(tmp_path / "origins.csv")["symbol"].tolist() == ["'=HYPERLINK(1)"]
    assert "2024-01-02T00:00:00Z" in (tmp_path / "origins.csv").read_text()


# ----------------------------------------------------------------------------------------- small test sets
def test_a_test_set_of_few_dates_has_no_verdict_and_says_why(tiny_run, tmp_path):  # noqa: F811
    from pricegpt.evaluate import evaluate_run

    run, csv, _ = tiny_run
    metrics = evaluate_run(run, data=str(csv), horizon=2, num_samples=8, max_origins=3, out=tmp_path / "eval")
    fc = metrics["forecast"]
    assert fc["n_dates"] < MIN_DATES and list(metrics["forecasts_by_horizon"]) == ["2"]
    assert all(entry is None for entry in fc["comparison"].values())
    assert f"only {fc['n_dates']} dates" in fc["notes"]["comparison histvol20"]
    assert fc["verdict"] == {"best_baseline": None, "verdict": None, "crps_ratio": None, "crps_ratio_ci": None}
    assert fc["mcs"] is None and fc["notes"]["mcs"]
    text = headline_table(metrics)
    assert "verdict vs best baseline: n/a" in text and "histvol20" in text


# ------------------------------------------------------------------------------------------------ headline
def test_headline_shows_verdicts_first_then_ratios_with_intervals(evidence):
    metrics, _, _ = evidence
    lines = headline_table(metrics).splitlines()
    fc, verdict = metrics["forecast"], metrics["forecast"]["verdict"]
    start = next(k for k, line in enumerate(lines) if line.startswith("verdict vs best baseline"))
    lo, hi = verdict["crps_ratio_ci"]
    assert lines[start] == (f"verdict vs best baseline ({verdict['best_baseline']}): {verdict['verdict']} — CRPS "
                            f"ratio {verdict['crps_ratio']:.3f} [{lo:.3f}, {hi:.3f}]")
    assert "CRPS" in lines[start + 1] and "verdict" in lines[start + 1]
    garch = next(line for line in lines if line.strip().startswith("garch"))
    assert fc["comparison"]["garch"]["verdict"] in garch and f"{fc['comparison']['garch']['crps_ratio']:.3f}" in garch
    assert any(line.startswith("1-bar verdict vs best baseline") for line in lines)
    assert any(line.strip().startswith("seasonal") and "n/a" in line for line in lines)


# ------------------------------------------------------------------------------------------------ calibration
def test_var_tests_match_a_hand_computation():
    # 10 origins, 3 exceedances at p = 0.1: LR_uc = 2 [7 ln 0.7 + 3 ln 0.3 - 7 ln 0.9 - 3 ln 0.1]
    assert calibration.kupiec(10, 3, 0.1) == pytest.approx(3.07327173607597, rel=1e-12)
    assert calibration.kupiec(100, 5, 0.05) == 0.0
    # clustered exceedances 0001110000: n00 5, n01 1, n10 1, n11 2; pi0 = 1/6, pi1 = 2/3, pi = 1/3
    sequence = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0])
    assert calibration.transitions([sequence]) == (5, 1, 1, 2)
    assert calibration.christoffersen(5, 1, 1, 2) == pytest.approx(2.231435513142097, rel=1e-12)
    assert calibration.christoffersen(4, 2, 2, 1) == pytest.approx(0.0, abs=1e-12)  # pi0 = pi1 = pi
    # pairs never span two symbols
    assert calibration.transitions([np.array([1]), np.array([1])]) == (0, 0, 0, 0)
    result = calibration.var_test([sequence], 0.1)
    assert result["exceedances"] == 3 and result["rate"] == 0.3
    assert result["kupiec_pvalue"] == pytest.approx(math.erfc(math.sqrt(3.07327173607597 / 2)))
    assert result["conditional_lr"] == pytest.approx(3.07327173607597 + 2.231435513142097)
    stats = pytest.importorskip("scipy.stats")
    for x in (0.0, 0.5, 3.84, 20.0):
        assert calibration.chi2_sf(x, 1) == pytest.approx(stats.chi2.sf(x, 1), rel=1e-10)
        assert calibration.chi2_sf(x, 2) == pytest.approx(stats.chi2.sf(x, 2), rel=1e-10)


def test_p_up_brier_scores_and_reliability_curve_known_answer():
    table = pd.DataFrame({"p_up_model": [0.9, 0.2, 0.6, 0.5], "p_up_train": [0.5, 0.5, 0.6, 0.6],
                          "realised": [0.01, -0.02, -0.01, 0.0]})  # a zero return is not up
    result = calibration.p_up(table)
    assert result["brier"] == pytest.approx((0.01 + 0.04 + 0.36 + 0.25) / 4)
    assert result["brier_climatology"] == 0.25 and result["bss_climatology"] == pytest.approx(1 - 0.165 / 0.25)
    assert result["brier_train_frequency"] == pytest.approx((0.25 + 0.25 + 0.36 + 0.36) / 4)
    assert result["bss_train_frequency"] == pytest.approx(1 - 0.165 / 0.305)
    curve = result["reliability"]
    assert curve["counts"] == [0, 0, 1, 0, 0, 1, 1, 0, 0, 1]
    assert curve["mean_predicted"][9] == 0.9 and curve["observed_frequency"][9] == 1.0
    assert curve["observed_frequency"][2] == 0.0 and curve["mean_predicted"][0] is None


def test_reliability_is_nominal_for_a_calibrated_forecast_and_monotone():
    rng = np.random.default_rng(0)
    n = 4000
    std = rng.uniform(0.5, 2.0, n)
    y = std * rng.standard_normal(n)
    columns = per_origin(NormalPredictive(np.zeros(n), std), y)
    table = pd.DataFrame({f"{k}_model": v for k, v in columns.items()})
    coverage = calibration.reliability(table, ["model", "absent"])["coverage"]
    assert coverage["absent"] is None
    assert np.all(np.diff(coverage["model"]) >= 0)
    np.testing.assert_allclose(coverage["model"], np.array(RELIABILITY_LEVELS) / 100, atol=0.03)
    assert coverage["model"][RELIABILITY_LEVELS.index(90)] == columns["hit90"].mean()


def test_reliability_at_50_and_90_is_the_coverage(evidence):
    metrics, _, _ = evidence
    fc = metrics["forecast"]
    for name in _ran(fc):
        curve = fc["reliability"]["coverage"][name]
        assert np.all(np.diff(curve) >= 0)
        assert curve[RELIABILITY_LEVELS.index(90)] == fc[name]["coverage_90"]
        assert curve[RELIABILITY_LEVELS.index(50)] == fc[name]["coverage_50"]


def test_volatility_regimes_are_pooled_terciles():
    vol = np.array([0.3, 0.1, np.nan, 0.5, 0.2, 0.9, 0.4])
    labels, thresholds = calibration.volatility_regimes(vol)
    t1, t2 = np.quantile(vol[np.isfinite(vol)], [1 / 3, 2 / 3])
    assert thresholds == pytest.approx([t1, t2])
    assert labels.tolist() == ["mid", "low", "", "high", "low", "high", "mid"]


# ----------------------------------------------------------------------------------------------- speed
def test_significance_and_calibration_of_5000_origins_take_seconds():
    from pricegpt.evaluate.run import _significance

    rng = np.random.default_rng(1)
    n_dates, n_symbols = 500, 10
    y = 0.01 * rng.standard_normal(n_dates * n_symbols)
    stamps = pd.date_range("2020-01-01", periods=n_dates, freq="D", tz="UTC")
    table = {"symbol": np.tile([f"S{k}" for k in range(n_symbols)], n_dates), "origin": np.repeat(stamps, n_symbols),
             "horizon": 1, "realised": y}
    names = ["model", *BASELINES]
    for k, name in enumerate(names):
        columns = per_origin(NormalPredictive(np.zeros(len(y)), 0.01 * (1 + 0.02 * k)), y)
        table.update({f"{c}_{name}": v for c, v in columns.items()})
    table = pd.DataFrame({**table, "vol20": rng.uniform(0.005, 0.02, len(y)), "p_up_model": rng.random(len(y)),
                          "p_up_train": 0.5})
    start = time.perf_counter()
    block = {name: {"crps": table[f"crps_{name}"].mean()} for name in names}
    notes = {}
    result = _significance(table, block, names, seed=0, notes=notes)
    calibration.reliability(table, names)
    calibration.by_regime(table, names)
    calibration.var_tests(table)
    calibration.p_up(table)
    elapsed = time.perf_counter() - start
    assert result["verdict"]["best_baseline"] == "random_walk"
    assert elapsed < 15, f"{elapsed:.1f} s"  # about 2 s on an idle 2-core machine
