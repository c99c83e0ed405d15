"""Baseline forecasts of the H-bar cumulative log return, on exactly the origins the model is scored on.

Inputs are per-symbol arrays of log returns in time order (`returns[symbol]`), the number of leading returns
that belong to the train split (`train_len[symbol]`), and the origins as parallel arrays `(symbols, index)`:
`index` is the position of an origin's first *target* return, so everything a baseline may look at is
`returns[symbol][:index]`. Parameters are fit on `returns[symbol][:train_len]` only.

- random_walk: N(0, sigma_train^2 H), sigma_train the symbol's train-split volatility.
- histvol20:   N(0, sigma_20^2 H), sigma_20 the std of the 20 returns before the origin.
- ewma:        N(0, s^2 H), RiskMetrics s^2_{t+1} = 0.94 s^2_t + 0.06 r_t^2, started at the train variance.
- bootstrap:   S sums of H returns drawn with replacement from the 250 returns before the origin (seeded).
- garch:       GARCH(1,1) with Student-t errors and a constant mean (package `arch`), parameters fit once per
               symbol on the train split; the conditional variance is filtered with the fixed parameters through
               each origin (data up to the origin only); the predictive is a Student-t with the fitted degrees of
               freedom, mean H * mu and variance the sum of the 1..H-step variance forecasts.
A baseline that cannot run is None with the reason in `notes`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .metrics import NormalPredictive, SamplePredictive, StudentTPredictive

BASELINES = ("random_walk", "histvol20", "ewma", "bootstrap", "garch")
HISTVOL_WINDOW = 20
EWMA_LAMBDA = 0.94
BOOTSTRAP_WINDOW = 250
GARCH_MIN_TRAIN = 250
_MIN_STD = 1e-12  # a flat window (constant price) would give a zero-width normal


def baseline_forecasts(returns: dict[str, np.ndarray], train_len: dict[str, int], symbols: np.ndarray,
                       index: np.ndarray, horizon: int, num_samples: int, seed: int = 0):
    """Every baseline's predictive over the origins (symbols (n,), index (n,)) -> (dict name -> predictive or
    None, notes dict name -> reason)."""
    symbols, index = np.asarray(symbols), np.asarray(index, dtype=np.int64)
    for s, i in zip(symbols, index):
        assert 1 <= i <= len(returns[s]) - horizon, f"origin {s}[{i}] has no full {horizon}-bar target"
    notes: dict[str, str] = {}
    preds = {
        "random_walk": random_walk(returns, train_len, symbols, horizon, notes),
        "histvol20": histvol(returns, symbols, index, horizon),
        "ewma": ewma(returns, train_len, symbols, index, horizon),
        "bootstrap": bootstrap(returns, symbols, index, horizon, num_samples, seed),
    }
    try:
        preds["garch"] = garch(returns, train_len, symbols, index, horizon)
    except Exception as err:  # noqa: BLE001 - any failure of the optional baseline is reported, not fatal
        preds["garch"] = None
        notes["garch"] = f"GARCH(1,1)-t unavailable: {type(err).__name__}: {err}"
    return preds, notes


def train_std(returns: dict[str, np.ndarray], train_len: dict[str, int], symbol: str) -> float | None:
    train = returns[symbol][: train_len[symbol]]
    return float(np.std(train, ddof=1)) if len(train) >= 2 else None


def random_walk(returns, train_len, symbols, horizon, notes) -> NormalPredictive:
    pooled = np.concatenate([r[: train_len[s]] for s, r in returns.items()])
    sigma = {}
    for s in np.unique(symbols):
        sigma[s] = train_std(returns, train_len, s)
        if sigma[s] is None:
            sigma[s] = float(np.std(pooled, ddof=1))
            notes.setdefault("random_walk", "")
            notes["random_walk"] += f"{s} has no train data: pooled train volatility used. "
    std = np.array([sigma[s] for s in symbols]) * math.sqrt(horizon)
    return NormalPredictive(np.zeros(len(symbols)), np.maximum(std, _MIN_STD))


def histvol(returns, symbols, index, horizon, window: int = HISTVOL_WINDOW) -> NormalPredictive:
    std = np.empty(len(symbols))
    for k, (s, i) in enumerate(zip(symbols, index)):
        trailing = returns[s][max(0, i - window): i]
        std[k] = np.std(trailing, ddof=1) if len(trailing) >= 2 else abs(trailing[0])
    return NormalPredictive(np.zeros(len(symbols)), np.maximum(std * math.sqrt(horizon), _MIN_STD))


def ewma_variance(r: np.ndarray, initial: float, lam: float = EWMA_LAMBDA) -> np.ndarray:
    """var[t] = forecast of r[t]'s variance from r[:t]: var[0] = initial, var[t+1] = lam var[t] + (1-lam) r[t]^2."""
    var = np.empty(len(r) + 1)
    var[0] = initial
    for t, x in enumerate(r):
        var[t + 1] = lam * var[t] + (1 - lam) * x * x
    return var


def ewma(returns, train_len, symbols, index, horizon) -> NormalPredictive:
    variances = {}
    for s in np.unique(symbols):
        train = returns[s][: train_len[s]]
        initial = float(np.mean(train**2)) if len(train) else float(returns[s][0] ** 2)
        variances[s] = ewma_variance(returns[s], initial)
    std = np.sqrt([variances[s][i] * horizon for s, i in zip(symbols, index)])
    return NormalPredictive(np.zeros(len(symbols)), np.maximum(std, _MIN_STD))


def bootstrap(returns, symbols, index, horizon, num_samples, seed, window: int = BOOTSTRAP_WINDOW):
    rng = np.random.default_rng(seed)
    sums = np.empty((len(symbols), num_samples))
    for k, (s, i) in enumerate(zip(symbols, index)):
        trailing = returns[s][max(0, i - window): i]
        sums[k] = trailing[rng.integers(0, len(trailing), size=(num_samples, horizon))].sum(axis=1)
    return SamplePredictive(sums)


def garch(returns, train_len, symbols, index, horizon) -> StudentTPredictive:
    from arch import arch_model  # optional dependency: the `baselines` extra

    mean, scale, df = np.empty(len(symbols)), np.empty(len(symbols)), np.empty(len(symbols))
    for s in np.unique(symbols):
        n_train = train_len[s]
        if n_train < GARCH_MIN_TRAIN:
            raise ValueError(f"{s} has {n_train} train returns, fewer than the {GARCH_MIN_TRAIN} a GARCH fit needs")
        rows = np.flatnonzero(symbols == s)
        # Percent returns keep the optimiser well scaled; everything is converted back below.
        model = arch_model(100.0 * returns[s], mean="Constant", vol="GARCH", p=1, q=1, dist="t", rescale=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = model.fit(last_obs=n_train, disp="off", show_warning=False)
            # Row j of the forecast uses returns up to and including position start + j.
            start = int(index[rows].min()) - 1
            forecast = fit.forecast(horizon=horizon, start=start, reindex=False)
        if fit.convergence_flag != 0:
            raise RuntimeError(f"the fit for {s} did not converge (flag {fit.convergence_flag})")
        variance = forecast.variance.to_numpy()[index[rows] - 1 - start].sum(axis=1) / 1e4
        nu = float(fit.params["nu"])
        mean[rows] = horizon * float(fit.params["mu"]) / 100.0
        df[rows] = nu
        scale[rows] = np.sqrt(variance * (nu - 2.0) / nu)  # a t with scale c has variance c^2 nu / (nu - 2)
    return StudentTPredictive(mean, np.maximum(scale, _MIN_STD), df)
