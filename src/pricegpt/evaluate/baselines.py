"""Baseline forecasts of the H-bar cumulative log return, on exactly the origins the model is scored on.

Inputs are per-symbol arrays of log returns in time order (`returns[symbol]`), the number of leading returns
that belong to the train split (`train_len[symbol]`), and the origins as parallel arrays `(symbols, index)`:
`index` is the position of an origin's first *target* return, so everything a baseline may look at is
`returns[symbol][:index]`. Parameters are fit on `returns[symbol][:train_len]` only. Optional inputs of the same
bars: `times[symbol]` (n,) datetime64[ns] UTC, the end of the bar of each return (the target bars' times are the
calendar, known in advance), and `ohlc[symbol]` (n, 4) [open, high, low, close] of the bar of each return.

- random_walk: N(0, sigma_train^2 H), sigma_train the symbol's train-split volatility.
- histvol20:   N(0, sigma_20^2 H), sigma_20 the std of the 20 returns before the origin.
- ewma:        N(0, s^2 H), RiskMetrics s^2_{t+1} = 0.94 s^2_t + 0.06 r_t^2, started at the train variance.
- bootstrap:   S sums of H returns drawn with replacement from the 250 returns before the origin (seeded).
- garch:       GARCH(1,1)-t with a constant mean (package `arch`), fit once per symbol on the train split, its
               variance filtered with the fixed parameters up to each origin; S paths of H returns simulated with
               unit-variance Student-t shocks through the GARCH recursion, summed.
- seasonal:    intraday only: N(0, L * sum of p over the target bars' own slots), p the train mean squared return
               per day-of-week x time-of-day slot over the overall one (thin slots shrunk toward their time of
               day, thin times of day toward the overall mean), L an EWMA (0.94) of r^2 / p.
- range_ewma:  N(0, c g H) when open/high/low exist, g an EWMA (0.94) of Garman-Klass bar variances with the
               opening gap, started at their train mean; c = train mean r^2 / train mean Garman-Klass variance.
- fhs:         filtered historical simulation: S sums of H returns s z, z drawn from the train returns divided
               by their EWMA volatility, s^2 starting at the origin's EWMA variance and updated with each
               simulated return by the RiskMetrics recursion.
A baseline that cannot run is None with the reason in `notes`. The simulated baselines (garch, fhs) draw from one
generator per origin, seeded by (seed, baseline, symbol, index): an origin's samples do not depend on which other
origins are forecast with it.

Why range_ewma is rescaled by c: Garman-Klass reads the range of the recorded highs and lows, which is too narrow
when prices are sampled discretely and too wide with bid-ask bounce; c puts the level back on the returns' own
(train) variance, which is what the CRPS of the H-bar return rewards, and keeps the range's faster reaction.
"""

from __future__ import annotations

import math
import warnings
import zlib

import numpy as np

from ..data.calendar import bar_slots, seasonal_profile
from .metrics import NormalPredictive, SamplePredictive, StudentTPredictive

BASELINES = ("random_walk", "histvol20", "ewma", "bootstrap", "garch", "seasonal", "range_ewma", "fhs")
HISTVOL_WINDOW = 20
EWMA_LAMBDA = 0.94
BOOTSTRAP_WINDOW = 250
GARCH_MIN_TRAIN = 250
MIN_TRAIN = 50  # train bars seasonal, range_ewma and fhs need per symbol
SIM_CHUNK_VALUES = 2**22  # shocks simulated at once (32 MB of float64): origins are simulated in chunks
_DAY_NS = 86_400 * 10**9
_MIN_STD = 1e-12  # a flat window (constant price) would give a zero-width normal
_GK_CLOSE = 2.0 * math.log(2.0) - 1.0


class Unavailable(Exception):
    """A baseline that cannot run on these data; the message is its one-line note."""


def baseline_forecasts(returns: dict[str, np.ndarray], train_len: dict[str, int], symbols: np.ndarray,
                       index: np.ndarray, horizon: int, num_samples: int, seed: int = 0, *,
                       times: dict[str, np.ndarray] | None = None, ohlc: dict[str, np.ndarray] | None = None):
    """Every baseline's predictive over the origins (symbols (n,), index (n,)) -> (dict name -> predictive or
    None, notes dict name -> reason). times/ohlc: see the module docstring (seasonal needs times, range_ewma
    ohlc)."""
    symbols, index = np.asarray(symbols), np.asarray(index, dtype=np.int64)
    for s, i in zip(symbols, index):
        assert 1 <= i <= len(returns[s]) - horizon, f"origin {s}[{i}] has no full {horizon}-bar target"
    for s in np.unique(symbols):
        if times is not None and s in times:
            assert len(times[s]) == len(returns[s]), f"times[{s}] has {len(times[s])} bars, returns {len(returns[s])}"
        if ohlc is not None and ohlc.get(s) is not None:
            assert np.shape(ohlc[s]) == (len(returns[s]), 4), f"ohlc[{s}] is {np.shape(ohlc[s])}, not (n, 4)"
    notes: dict[str, str] = {}
    preds = {
        "random_walk": random_walk(returns, train_len, symbols, horizon, notes),
        "histvol20": histvol(returns, symbols, index, horizon),
        "ewma": ewma(returns, train_len, symbols, index, horizon),
        "bootstrap": bootstrap(returns, symbols, index, horizon, num_samples, seed),
    }
    try:
        preds["garch"] = garch(returns, train_len, symbols, index, horizon, num_samples, seed)
    except Exception as err:  # noqa: BLE001 - any failure of the optional baseline is reported, not fatal
        preds["garch"] = None
        notes["garch"] = f"GARCH(1,1)-t unavailable: {type(err).__name__}: {err}"
    optional = {"seasonal": lambda: seasonal(returns, train_len, symbols, index, horizon, times),
                "range_ewma": lambda: range_ewma(returns, train_len, symbols, index, horizon, ohlc),
                "fhs": lambda: fhs(returns, train_len, symbols, index, horizon, num_samples, seed)}
    for name, make in optional.items():
        try:
            preds[name] = make()
        except Unavailable as why:
            preds[name], notes[name] = None, str(why)
    return preds, notes


# ------------------------------------------------------------------------------------- volatility baselines
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


def ewma_level(values: np.ndarray, initial: float, lam: float = EWMA_LAMBDA) -> np.ndarray:
    """level[t] = the EWMA of values[:t] (n + 1,): level[0] = initial, level[t+1] = lam level[t] + (1-lam) values[t].
    A plain-float loop: the recursion is sequential, and Python floats are 10x faster here than numpy scalars."""
    level = [float(initial)]
    v, keep, add = float(initial), float(lam), 1.0 - float(lam)
    for x in np.asarray(values, dtype=np.float64).tolist():
        v = keep * v + add * x
        level.append(v)
    return np.array(level)


def ewma_variance(r: np.ndarray, initial: float, lam: float = EWMA_LAMBDA) -> np.ndarray:
    """var[t] = forecast of r[t]'s variance from r[:t]: var[0] = initial, var[t+1] = lam var[t] + (1-lam) r[t]^2."""
    r = np.asarray(r, dtype=np.float64)
    return ewma_level(r * r, initial, lam)


def _ewma_variances(returns, train_len, symbols) -> dict[str, np.ndarray]:
    """The RiskMetrics variance path of each symbol, started at its train mean square (ewma and fhs share it)."""
    out = {}
    for s in np.unique(symbols):
        train = returns[s][: train_len[s]]
        initial = float(np.mean(train**2)) if len(train) else float(returns[s][0] ** 2)
        out[s] = ewma_variance(returns[s], initial)
    return out


def ewma(returns, train_len, symbols, index, horizon) -> NormalPredictive:
    variances = _ewma_variances(returns, train_len, symbols)
    std = np.sqrt([variances[s][i] * horizon for s, i in zip(symbols, index)])
    return NormalPredictive(np.zeros(len(symbols)), np.maximum(std, _MIN_STD))


def bootstrap(returns, symbols, index, horizon, num_samples, seed, window: int = BOOTSTRAP_WINDOW):
    rng = np.random.default_rng(seed)
    sums = np.empty((len(symbols), num_samples))
    for k, (s, i) in enumerate(zip(symbols, index)):
        trailing = returns[s][max(0, i - window): i]
        sums[k] = trailing[rng.integers(0, len(trailing), size=(num_samples, horizon))].sum(axis=1)
    return SamplePredictive(sums)


# ---------------------------------------------------------------------------------------------- seasonal
def seasonal(returns, train_len, symbols, index, horizon, times) -> NormalPredictive:
    if times is None:
        raise Unavailable("no bar times given: the seasonal profile needs them")
    std = np.empty(len(symbols))
    for s in np.unique(symbols):
        if s not in times:
            raise Unavailable(f"no bar times for {s}")
        r, n_train, t = returns[s], train_len[s], np.asarray(times[s], dtype="datetime64[ns]")
        steps = np.diff(t[:n_train] if n_train > 2 else t).astype(np.int64)
        interval = int(np.median(steps)) if len(steps) else _DAY_NS
        if interval >= _DAY_NS or interval <= 0:
            raise Unavailable(f"no intraday bars ({s}: median bar interval {interval / 3.6e12:g} h)")
        if n_train < MIN_TRAIN:
            raise Unavailable(f"{s} has {n_train} train bars, fewer than the {MIN_TRAIN} the profile needs")
        slot, tod, n_tod = bar_slots(t, interval)
        sq = r * r
        if not np.mean(sq[:n_train]) > 0:
            raise Unavailable(f"{s} has no price change in the train split")
        profile = seasonal_profile(sq[:n_train], slot[:n_train], tod[:n_train], n_tod)[slot]  # (n,) every bar
        deseasonalised = sq / profile
        level = ewma_level(deseasonalised, float(np.mean(deseasonalised[:n_train])))
        target = np.concatenate([[0.0], np.cumsum(profile)])
        rows = np.flatnonzero(symbols == s)
        i = index[rows]
        std[rows] = np.sqrt(level[i] * (target[i + horizon] - target[i]))
    return NormalPredictive(np.zeros(len(symbols)), np.maximum(std, _MIN_STD))


# -------------------------------------------------------------------------------------------- range_ewma
def garman_klass(ohlc: np.ndarray, returns: np.ndarray) -> np.ndarray:
    """(n,) per-bar Garman-Klass variance with the opening gap: log(o/c_prev)^2 + 0.5 log(h/l)^2
    - (2 ln 2 - 1) log(c/o)^2, the previous close read from the bar's own close and return; floored at 0."""
    log_o, log_h, log_l, log_c = np.log(np.asarray(ohlc, dtype=np.float64)).T
    gap = log_o - log_c + returns  # log(open / previous close): previous close = close * exp(-return)
    return np.maximum(gap**2 + 0.5 * (log_h - log_l) ** 2 - _GK_CLOSE * (log_c - log_o) ** 2, 0.0)


def range_ewma(returns, train_len, symbols, index, horizon, ohlc) -> NormalPredictive:
    if ohlc is None:
        raise Unavailable("no open/high/low in the data")
    std = np.empty(len(symbols))
    for s in np.unique(symbols):
        bars, r, n_train = ohlc.get(s), returns[s], train_len[s]
        if bars is None:
            raise Unavailable(f"no open/high/low for {s}")
        if not (np.all(np.isfinite(bars)) and np.all(np.asarray(bars) > 0)):
            raise Unavailable(f"{s} has missing or non-positive open/high/low/close values")
        if n_train < MIN_TRAIN:
            raise Unavailable(f"{s} has {n_train} train bars, fewer than the {MIN_TRAIN} range_ewma needs")
        gk = garman_klass(bars, r)
        gk_train = float(np.mean(gk[:n_train]))
        if not gk_train > 0:
            raise Unavailable(f"{s} has no high-low range in the train split")
        scale = float(np.mean(r[:n_train] ** 2)) / gk_train
        level = ewma_level(gk, gk_train)
        rows = np.flatnonzero(symbols == s)
        std[rows] = np.sqrt(scale * level[index[rows]] * horizon)
    return NormalPredictive(np.zeros(len(symbols)), np.maximum(std, _MIN_STD))


# ------------------------------------------------------------------------------------ simulated baselines
def origin_rng(seed: int, name: str, symbol, i: int) -> np.random.Generator:
    """The generator of one origin of one simulated baseline: from (seed, baseline, symbol, index) only."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), zlib.crc32(str(symbol).encode()), int(i)])


def simulate_sums(var0, a, b, c, mu, shocks, horizon: int, num_samples: int) -> np.ndarray:
    """(n, S) sums of H returns r_h = mu + sqrt(v_h) z_h along each path, v_0 = var0 and v_{h+1} = a + b v_h
    + c (r_h - mu)^2 (all (n,) per origin); shocks(k) -> (H, S) unit shocks of origin k. Origins are simulated in
    chunks of at most SIM_CHUNK_VALUES shocks."""
    n = len(var0)
    sums = np.empty((n, num_samples))
    chunk = max(1, SIM_CHUNK_VALUES // (num_samples * horizon))
    for lo in range(0, n, chunk):
        rows = np.arange(lo, min(n, lo + chunk))
        z = np.stack([shocks(k) for k in rows])  # (k, H, S)
        v = np.repeat(np.asarray(var0, dtype=np.float64)[rows, None], num_samples, axis=1)
        ak, bk, ck = (np.asarray(x, dtype=np.float64)[rows, None] for x in (a, b, c))
        total = np.zeros((len(rows), num_samples))
        for h in range(horizon):
            eps = np.sqrt(v) * z[:, h]
            total += eps
            v = ak + bk * v + ck * eps * eps
        sums[rows] = total + horizon * np.asarray(mu, dtype=np.float64)[rows, None]
    return sums


def fhs(returns, train_len, symbols, index, horizon, num_samples, seed) -> SamplePredictive:
    variances = _ewma_variances(returns, train_len, symbols)
    residuals = {}
    for s in np.unique(symbols):
        n_train, var = train_len[s], variances[s][: train_len[s]]
        ok = var > 0
        if n_train < MIN_TRAIN or ok.sum() < MIN_TRAIN:
            raise Unavailable(f"{s} has {n_train} train bars, fewer than the {MIN_TRAIN} fhs needs")
        residuals[s] = returns[s][:n_train][ok] / np.sqrt(var[ok])

    def shocks(k):
        z = residuals[symbols[k]]
        return z[origin_rng(seed, "fhs", symbols[k], index[k]).integers(0, len(z), size=(horizon, num_samples))]

    n = len(symbols)
    var0 = np.array([variances[s][i] for s, i in zip(symbols, index)])
    sums = simulate_sums(var0, np.zeros(n), np.full(n, EWMA_LAMBDA), np.full(n, 1.0 - EWMA_LAMBDA), np.zeros(n),
                         shocks, horizon, num_samples)
    return SamplePredictive(sums)


# ------------------------------------------------------------------------------------------------- garch
class GarchPredictive(SamplePredictive):
    """The simulated GARCH sums (samples (n, S)) with the fitted per-origin mean H mu, Student-t df and the scale
    of the single Student-t with the H-step variance (the former closed form), for inspection and comparison."""

    def __init__(self, samples, mean, scale, df):
        super().__init__(samples)
        self.mean, self.scale, self.df = mean, scale, df

    def closed_form(self) -> StudentTPredictive:
        return StudentTPredictive(self.mean, self.scale, self.df)


def garch_fit(r: np.ndarray, n_train: int, index: np.ndarray, horizon: int, symbol: str = "") -> dict:
    """GARCH(1,1)-t fit on r[:n_train] (in percent, converted back): parameters mu, omega, alpha, beta, nu, and per
    origin in `index` the next bar's variance var1 and the sum of the 1..H-step variances var_sum."""
    from arch import arch_model  # optional dependency: the `baselines` extra

    if n_train < GARCH_MIN_TRAIN:
        raise ValueError(f"{symbol} has {n_train} train returns, fewer than the {GARCH_MIN_TRAIN} a GARCH fit needs")
    # Percent returns keep the optimiser well scaled; everything is converted back below.
    model = arch_model(100.0 * r, mean="Constant", vol="GARCH", p=1, q=1, dist="t", rescale=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(last_obs=n_train, disp="off", show_warning=False)
        # Row j of the forecast uses returns up to and including position start + j.
        start = int(index.min()) - 1
        forecast = fit.forecast(horizon=1, start=start, reindex=False)
    if fit.convergence_flag != 0:
        raise RuntimeError(f"the fit for {symbol} did not converge (flag {fit.convergence_flag})")
    p = fit.params
    omega, persistence = float(p["omega"]) / 1e4, float(p["alpha[1]"]) + float(p["beta[1]"])
    var1 = forecast.variance.to_numpy()[index - 1 - start, 0] / 1e4
    step, var_sum = var1.copy(), var1.copy()
    for _ in range(horizon - 1):  # the h-step variance forecast: E[s2_{h+1}] = omega + (alpha + beta) E[s2_h]
        step = omega + persistence * step
        var_sum += step
    return {"mu": float(p["mu"]) / 100.0, "omega": omega, "alpha": float(p["alpha[1]"]),
            "beta": float(p["beta[1]"]), "nu": float(p["nu"]), "var1": var1, "var_sum": var_sum}


def garch(returns, train_len, symbols, index, horizon, num_samples, seed) -> GarchPredictive:
    n = len(symbols)
    per_origin = {k: np.empty(n) for k in ("mu", "omega", "alpha", "beta", "nu", "var1", "var_sum")}
    for s in np.unique(symbols):
        rows = np.flatnonzero(symbols == s)
        fit = garch_fit(returns[s], train_len[s], index[rows], horizon, symbol=s)
        for key, values in fit.items():
            per_origin[key][rows] = values
    nu = per_origin["nu"]
    unit = np.sqrt((nu - 2.0) / nu)  # a t with nu degrees of freedom has variance nu / (nu - 2)

    def shocks(k):
        return origin_rng(seed, "garch", symbols[k], index[k]).standard_t(nu[k], size=(horizon, num_samples)) * unit[k]

    sums = simulate_sums(per_origin["var1"], per_origin["omega"], per_origin["beta"], per_origin["alpha"],
                         per_origin["mu"], shocks, horizon, num_samples)
    scale = np.maximum(np.sqrt(per_origin["var_sum"]) * unit, _MIN_STD)
    return GarchPredictive(sums, horizon * per_origin["mu"], scale, nu)
