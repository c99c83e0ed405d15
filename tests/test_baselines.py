"""Baselines: none sees a bar at or after its origin, each recovers what was planted in simulated data, and one
that cannot run says why."""

from __future__ import annotations

import numpy as np
import pytest

from pricegpt.evaluate.baselines import BASELINES, baseline_forecasts, garman_klass
from pricegpt.evaluate.metrics import NormalPredictive, coverage_and_width

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def weekday_times(n_days: int, freq: str = "30min", start: str = "2021-01-04") -> np.ndarray:
    """End times of the bars of every weekday (FX-like, around the clock) as datetime64[ns]."""
    stamps = np.arange(np.datetime64(start, "ns"), np.datetime64(start, "ns") + np.timedelta64(n_days, "D"),
                       np.timedelta64(int(freq.removesuffix("min")), "m")) + np.timedelta64(30, "m")
    weekday = (stamps.astype("datetime64[D]").astype(np.int64) + 3) % 7
    return stamps[weekday < 5]


def ohlc_bars(bar_std: np.ndarray, gap_std: float, rng, substeps: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(log returns (n,), ohlc (n, 4)) of bars with an opening gap N(0, gap_std^2) and a random walk of
    `substeps` steps with total std bar_std[k] from open to close; high/low are the path's extremes."""
    n = len(bar_std)
    steps = rng.normal(0.0, 1.0, (n, substeps)) * (bar_std / np.sqrt(substeps))[:, None]
    path = np.cumsum(steps, axis=1)
    gap = rng.normal(0.0, gap_std, n)
    returns = gap + path[:, -1]
    log_close = np.cumsum(returns)
    log_open = log_close - returns + gap
    log_high = log_open + np.maximum(path.max(axis=1), 0.0)
    log_low = log_open + np.minimum(path.min(axis=1), 0.0)
    return returns, np.exp(np.stack([log_open, log_high, log_low, log_close], axis=1))


def intraday_pattern(n_days: int, seed: int, loud: float = 3.0, sigma: float = 1e-3):
    """30-minute weekday bars whose volatility is `loud` times higher in the first six hours (UTC) of each day:
    (times, returns, ohlc, the true std of each bar)."""
    times = weekday_times(n_days)
    hour = (times - times.astype("datetime64[D]")).astype("timedelta64[m]").astype(np.int64) / 60
    bar_std = sigma * np.where(hour <= 6, loud, 1.0)
    returns, ohlc = ohlc_bars(bar_std, 0.0, np.random.default_rng(seed))
    return times, returns, ohlc, bar_std


def test_origins(n: int, train_len: int, horizon: int, step: int) -> np.ndarray:
    return np.arange(train_len, n - horizon + 1, step)


test_origins.__test__ = False  # a helper, not a test


def quantiles(pred) -> np.ndarray:
    out = np.stack([np.asarray(pred.quantile(q), dtype=np.float64) for q in QUANTILES], axis=1)
    return np.concatenate([out, pred.samples], axis=1) if hasattr(pred, "samples") else out


# --------------------------------------------------------------------------------------------- look-ahead
@pytest.fixture(scope="module")
def two_symbols():
    pytest.importorskip("arch")
    data = {}
    for k, s in enumerate(("EURUSD", "USDJPY")):
        data[s] = intraday_pattern(40, seed=10 + k, loud=2.0 + k)[:3]
    times = {s: d[0] for s, d in data.items()}
    returns = {s: d[1] for s, d in data.items()}
    ohlc = {s: d[2] for s, d in data.items()}
    train_len = {s: 500 for s in data}
    symbols, index = [], []
    for s in data:
        idx = test_origins(len(returns[s]), 600, 4, 9)
        symbols += [s] * len(idx)
        index += idx.tolist()
    return returns, train_len, times, ohlc, np.array(symbols, dtype=object), np.array(index)


def test_no_baseline_sees_a_bar_at_or_after_its_origin(two_symbols):
    returns, train_len, times, ohlc, symbols, index = two_symbols
    horizon, samples = 4, 64

    def forecast(rets, bars):
        preds, notes = baseline_forecasts(rets, train_len, symbols, index, horizon, samples, seed=5, times=times,
                                          ohlc=bars)
        assert notes == {}, notes
        return {name: quantiles(preds[name]) for name in BASELINES}

    base = forecast(returns, ohlc)
    rows_a = np.flatnonzero(symbols == "EURUSD")
    cut = int(index[rows_a[len(rows_a) // 2]])
    rng = np.random.default_rng(1)
    rets, bars = dict(returns), dict(ohlc)
    # the bars from the cut on become louder and wilder, their ranges too
    rets["EURUSD"] = returns["EURUSD"].copy()
    rets["EURUSD"][cut:] = rng.standard_t(3, len(rets["EURUSD"]) - cut) * 0.01
    bars["EURUSD"] = ohlc["EURUSD"].copy()
    bars["EURUSD"][cut:, 1] *= np.exp(rng.uniform(0.0, 0.05, len(rets["EURUSD"]) - cut))
    changed = forecast(rets, bars)
    unseen = (symbols != "EURUSD") | (index <= cut)
    for name in BASELINES:
        np.testing.assert_array_equal(base[name][unseen], changed[name][unseen],
                                      err_msg=f"{name} looked at bars at or after EURUSD[{cut}]")
        if name != "random_walk":  # everything else follows recent bars, so the check above can fail
            assert not np.array_equal(base[name][~unseen], changed[name][~unseen]), name


def test_simulated_baselines_do_not_depend_on_the_other_origins(two_symbols):
    returns, train_len, times, ohlc, symbols, index = two_symbols
    full, _ = baseline_forecasts(returns, train_len, symbols, index, 3, 32, seed=2)
    some = np.arange(len(index))[::5]
    part, _ = baseline_forecasts(returns, train_len, symbols[some], index[some], 3, 32, seed=2)
    for name in ("fhs", "garch"):
        np.testing.assert_array_equal(full[name].samples[some], part[name].samples, err_msg=name)
    other, _ = baseline_forecasts(returns, train_len, symbols[some], index[some], 3, 32, seed=3)
    assert not np.array_equal(other["fhs"].samples, part["fhs"].samples)


# ------------------------------------------------------------------------------------------ known answers
def test_seasonal_profile_beats_histvol_on_a_planted_intraday_pattern():
    times, returns, _, bar_std = intraday_pattern(120, seed=0)
    n, train, horizon = len(returns), int(0.6 * len(returns)), 4
    index = test_origins(n, train, horizon, horizon)
    symbols = np.array(["EURUSD"] * len(index), dtype=object)
    preds, notes = baseline_forecasts({"EURUSD": returns}, {"EURUSD": train}, symbols, index, horizon, 64,
                                      times={"EURUSD": times})
    assert "seasonal" not in notes
    y = np.array([returns[i:i + horizon].sum() for i in index])
    crps = {name: float(np.mean(preds[name].crps(y))) for name in ("seasonal", "histvol20", "ewma")}
    true_std = np.sqrt([np.sum(bar_std[i:i + horizon] ** 2) for i in index])
    crps["oracle"] = float(np.mean(NormalPredictive(np.zeros(len(y)), true_std).crps(y)))
    # within 3% of knowing the true volatility, while the trailing-window forecasts lag the daily cycle
    assert crps["seasonal"] < 1.03 * crps["oracle"], crps
    assert crps["seasonal"] < 0.95 * crps["histvol20"] and crps["seasonal"] < 0.95 * crps["ewma"], crps
    # it has learnt the planted pattern: targets in the loud hours get about three times the std of quiet ones
    # (a little less: thin times of day are shrunk toward the overall mean), where HistVol20 cannot tell them apart
    loud = np.array([np.all(bar_std[i:i + horizon] > bar_std.min()) for i in index])
    quiet = np.array([np.all(bar_std[i:i + horizon] == bar_std.min()) for i in index])
    for name, low, high in (("seasonal", 2.4, 3.3), ("histvol20", 0.7, 1.3)):
        std = preds[name].std
        assert low < np.mean(std[loud]) / np.mean(std[quiet]) < high, name
    assert 0.86 < coverage_and_width(preds["seasonal"], y, 0.9)[0] < 0.94


def test_range_ewma_recovers_a_constant_volatility_with_an_opening_gap():
    rng = np.random.default_rng(7)
    sigma, gap = 0.01, 0.006  # 36% of each bar's variance is the opening gap
    intraday = np.sqrt(sigma**2 - gap**2)
    returns, ohlc = ohlc_bars(np.full(3000, intraday), gap, rng, substeps=1000)
    # the estimator itself, gap included, reads the bar variance (a little low: the path is sampled discretely)
    assert np.mean(garman_klass(ohlc, returns)) == pytest.approx(sigma**2, rel=0.08)
    horizon, train = 5, 1500
    index = test_origins(3000, train, horizon, horizon)
    symbols = np.array(["X"] * len(index), dtype=object)
    preds, notes = baseline_forecasts({"X": returns}, {"X": train}, symbols, index, horizon, 16,
                                      ohlc={"X": ohlc})
    assert "range_ewma" not in notes
    per_bar = preds["range_ewma"].std / np.sqrt(horizon)
    assert np.mean(per_bar) == pytest.approx(sigma, rel=0.1)
    assert np.all(np.abs(per_bar / sigma - 1) < 0.3)
    # the range is a sharper volatility reading than the squared return: EWMA of it wanders less
    ewma_bar = preds["ewma"].std / np.sqrt(horizon)
    assert np.std(per_bar / sigma) < 0.6 * np.std(ewma_bar / sigma)


def test_fhs_covers_iid_normal_returns_at_the_nominal_rate():
    returns = np.random.default_rng(11).normal(0.0, 0.01, 6000)
    horizon, train = 4, 3000
    index = test_origins(6000, train, horizon, horizon)
    symbols = np.array(["X"] * len(index), dtype=object)
    preds, _ = baseline_forecasts({"X": returns}, {"X": train}, symbols, index, horizon, 512, seed=0)
    y = np.array([returns[i:i + horizon].sum() for i in index])
    for level, low, high in ((0.9, 0.87, 0.93), (0.5, 0.45, 0.55)):
        assert low < coverage_and_width(preds["fhs"], y, level)[0] < high
    assert np.mean(np.std(preds["fhs"].samples, axis=1)) == pytest.approx(0.01 * np.sqrt(horizon), rel=0.1)


def simulate_garch_t(n: int, omega: float, alpha: float, beta: float, nu: float, rng) -> np.ndarray:
    shocks = rng.standard_t(nu, n) * np.sqrt((nu - 2) / nu)
    returns, var = np.empty(n), omega / (1 - alpha - beta)
    for t in range(n):
        returns[t] = np.sqrt(var) * shocks[t]
        var = omega + alpha * returns[t] ** 2 + beta * var
    return returns


@pytest.fixture(scope="module")
def heavy_tailed_garch():
    pytest.importorskip("arch")
    returns = simulate_garch_t(3000, 1e-6, 0.08, 0.9, 4.0, np.random.default_rng(0))
    index = np.arange(2000, 2900, 3)
    return {"X": returns}, {"X": 2000}, np.array(["X"] * len(index), dtype=object), index


def standardised(pred) -> np.ndarray:
    """Samples pooled over origins in units of the closed form's scale (same mean, same variance)."""
    return ((pred.samples - pred.mean[:, None]) / pred.scale[:, None]).ravel()


def test_garch_simulation_is_the_closed_form_at_one_bar(heavy_tailed_garch):
    from scipy import stats

    returns, train_len, symbols, index = heavy_tailed_garch
    preds, notes = baseline_forecasts(returns, train_len, symbols, index, 1, 2000, seed=0)
    garch = preds["garch"]
    assert "garch" not in notes and 3 < garch.df[0] < 8
    levels = np.array([0.005, 0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975, 0.995])
    np.testing.assert_allclose(np.quantile(standardised(garch), levels), stats.t.ppf(levels, garch.df[0]),
                               atol=0.05)
    # per origin: the sample quantiles sit within Monte-Carlo error of the closed form's
    closed = garch.closed_form()
    for q in (0.05, 0.5, 0.95):
        gap = (garch.quantile(q) - closed.quantile(q)) / garch.scale
        assert np.max(np.abs(gap)) < 0.35 and abs(np.mean(gap)) < 0.02


def test_garch_simulation_of_eight_bars_is_nearer_normal_than_one_t(heavy_tailed_garch):
    from scipy import stats

    returns, train_len, symbols, index = heavy_tailed_garch
    preds, _ = baseline_forecasts(returns, train_len, symbols, index, 8, 2000, seed=0)
    garch = preds["garch"]
    z, nu = standardised(garch), garch.df[0]
    # same variance as the closed form (both sum the same 1..H-step variances) ...
    assert np.var(z) == pytest.approx(nu / (nu - 2), rel=0.03)
    # ... but a sum of eight shocks has thinner extreme tails and wider shoulders than a single t
    assert np.quantile(np.abs(z), 0.99) < 0.93 * stats.t.ppf(0.995, nu)
    assert np.quantile(np.abs(z), 0.90) > 1.02 * stats.t.ppf(0.95, nu)
    assert np.quantile(np.abs(z), 0.50) > 1.05 * stats.t.ppf(0.75, nu)


# --------------------------------------------------------------------------------------- cannot run
def test_baselines_that_cannot_run_are_none_with_a_reason():
    rng = np.random.default_rng(3)
    daily = np.arange(np.datetime64("2015-01-02", "ns"), np.datetime64("2017-01-02", "ns"), np.timedelta64(1, "D"))
    returns = {"SPY": rng.normal(0, 0.01, len(daily)), "QQQ": rng.normal(0, 0.01, len(daily))}
    train = {s: 400 for s in returns}
    index = np.array([500, 520, 540])
    symbols = np.array(["SPY", "QQQ", "SPY"], dtype=object)
    preds, notes = baseline_forecasts(returns, train, symbols, index, 2, 16, times={s: daily for s in returns})
    assert preds["seasonal"] is None and "no intraday bars" in notes["seasonal"]
    assert preds["range_ewma"] is None and "open/high/low" in notes["range_ewma"]
    preds, notes = baseline_forecasts(returns, train, symbols, index, 2, 16)
    assert preds["seasonal"] is None and "times" in notes["seasonal"]
    _, bars = ohlc_bars(np.full(len(daily), 0.01), 0.0, rng)
    preds, notes = baseline_forecasts(returns, train, symbols, index, 2, 16, ohlc={"SPY": bars, "QQQ": None})
    assert preds["range_ewma"] is None and "QQQ" in notes["range_ewma"]
    preds, notes = baseline_forecasts(returns, train, symbols, index, 2, 16, ohlc={"SPY": bars, "QQQ": bars})
    assert preds["range_ewma"] is not None and preds["fhs"] is not None and "fhs" not in notes
    # too little train data for the profile or the residuals
    preds, notes = baseline_forecasts(returns, {s: 30 for s in returns}, symbols, index, 2, 16)
    assert preds["fhs"] is None and "30 train bars" in notes["fhs"]
