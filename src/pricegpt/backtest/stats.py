"""Backtest statistics: net returns after costs and the performance of a return series. Pure functions of arrays;
they know nothing of models or forecasts.

- Returns and costs. Per bar: net = position * simple_return - (cost_bps + slippage_bps) / 1e4 * |delta position|,
  where delta position includes the entry from flat (`simulate`).
- Annualisation. bars_per_year = (bars - 1) / (span in years of 365.25 days), from the data: 252 for daily stocks,
  ~6300 for 24x5 hourly FX. It adapts to any calendar without knowing the market's hours.
- Statistics (`performance`). total_return = prod(1 + net) - 1; cagr = (1 + total_return) ** (bars_per_year / T)
  - 1; sharpe = mean / std (ddof 1) * sqrt(bars_per_year) (risk-free rate 0); sortino = mean / sqrt(mean(min(net,
  0)^2)) * sqrt(bars_per_year); max_drawdown = min over bars of equity / running peak - 1 (negative, equity starts
  at 1); turnover = mean |delta position| per bar; hit_rate = share of bars with a position whose net return is
  > 0. Undefined values (zero variance, no invested bar) are None.
- Sharpe CI (`sharpe_ci`): stationary bootstrap (Politis & Romano 1994) of the net returns, geometric block
  lengths with mean T^(1/3), percentile interval, 1000 resamples by default.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

SECONDS_PER_YEAR = 365.25 * 86400
PERFORMANCE_KEYS = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "turnover", "hit_rate")


def simulate(positions, bar_returns, cost_bps: float = 0.0, slippage_bps: float = 0.0):
    """Net returns after costs. positions (T,) or (T, n_symbols): the position held during each bar (fraction of
    capital, negative = short); bar_returns: the bars' simple returns, same shape. Returns (net, turnover), both of
    that shape: net = position * return - (cost + slippage) bps * turnover, turnover = |position - previous| with
    a flat position before the first bar."""
    positions = np.asarray(positions, dtype=np.float64)
    bar_returns = np.asarray(bar_returns, dtype=np.float64)
    assert positions.shape == bar_returns.shape, f"positions {positions.shape} vs bar_returns {bar_returns.shape}"
    assert positions.ndim in (1, 2), f"positions must be (T,) or (T, n_symbols), got {positions.shape}"
    turnover = np.abs(np.diff(positions, axis=0, prepend=np.zeros_like(positions[:1])))
    net = positions * bar_returns - (cost_bps + slippage_bps) * 1e-4 * turnover
    return net, turnover


def bars_per_year(timestamps) -> float:
    """Bars per year of a series: (bars - 1) / span in years (365.25-day years). NaN with fewer than 2 bars."""
    ts = pd.to_datetime(pd.Series(timestamps), utc=True)
    span = (ts.max() - ts.min()).total_seconds() if len(ts) >= 2 else 0.0
    return (len(ts) - 1) / (span / SECONDS_PER_YEAR) if span > 0 else float("nan")


def sharpe_ratio(net_returns, bars_per_year: float) -> float | None:
    """Annualised Sharpe ratio (risk-free 0, std with ddof 1); None when undefined (fewer than 2 bars, flat)."""
    net = np.asarray(net_returns, dtype=np.float64)
    if len(net) < 2:
        return None
    std = float(np.std(net, ddof=1))
    return float(np.mean(net) / std * math.sqrt(bars_per_year)) if std > 0 else None


def performance(net_returns, bars_per_year: float, turnover=None, positions=None) -> dict:
    """Statistics of per-bar net returns (T,) (see the module docstring for the formulas). turnover (T,) gives the
    turnover statistic; positions (T,) or (T, n) limit the hit rate to bars with a position (else: bars with a
    non-zero net return)."""
    net = np.asarray(net_returns, dtype=np.float64)
    assert net.ndim == 1, f"net_returns must be (T,), got {net.shape}"
    T = len(net)
    equity = np.cumprod(1.0 + net)
    total = float(equity[-1] - 1.0) if T else 0.0
    years = T / bars_per_year if T and bars_per_year > 0 else float("nan")
    cagr = (1.0 + total) ** (1.0 / years) - 1.0 if years > 0 and 1.0 + total > 0 else (-1.0 if T else None)
    downside = math.sqrt(float(np.mean(np.minimum(net, 0.0) ** 2))) if T else 0.0
    sortino = float(np.mean(net) / downside * math.sqrt(bars_per_year)) if downside > 0 else None
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))
    drawdown = float(np.min(np.concatenate([[1.0], equity]) / peak - 1.0))
    if positions is not None:
        positions = np.asarray(positions, dtype=np.float64)
        active = positions != 0 if positions.ndim == 1 else np.any(positions != 0, axis=1)
    else:
        active = net != 0
    hit = float(np.mean(net[active] > 0)) if np.any(active) else None
    if turnover is not None:
        turnover = np.asarray(turnover, dtype=np.float64)
        turnover = turnover if turnover.ndim == 1 else turnover.mean(axis=1)
    return {"total_return": total, "cagr": None if cagr is None or not np.isfinite(cagr) else float(cagr),
            "sharpe": sharpe_ratio(net, bars_per_year), "sortino": sortino, "max_drawdown": drawdown,
            "turnover": float(np.mean(turnover)) if turnover is not None and T else None, "hit_rate": hit}


def stationary_bootstrap_indices(T: int, n_boot: int, mean_block: float, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, T) indices of stationary-bootstrap resamples: blocks start at uniform positions, their lengths are
    geometric with mean `mean_block`, and they wrap around the end of the series."""
    starts = rng.integers(0, T, size=(n_boot, T))
    new_block = rng.random((n_boot, T)) < 1.0 / mean_block
    new_block[:, 0] = True
    steps = np.arange(T)
    block_start = np.maximum.accumulate(np.where(new_block, steps, 0), axis=1)
    return (np.take_along_axis(starts, block_start, axis=1) + steps - block_start) % T


def sharpe_ci(net_returns, bars_per_year: float, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
              mean_block: float | None = None) -> dict:
    """Percentile interval of the annualised Sharpe ratio under the stationary bootstrap (module docstring).

    Returns {low, high, level, method, mean_block, n_boot}; low/high are None when the Sharpe is undefined."""
    net = np.asarray(net_returns, dtype=np.float64)
    T = len(net)
    mean_block = float(mean_block or max(1.0, T ** (1 / 3)))
    out = {"low": None, "high": None, "level": level, "method": "stationary bootstrap (Politis-Romano), "
           "percentile interval", "mean_block": mean_block, "n_boot": int(n_boot)}
    if T < 2 or np.std(net) == 0:
        return out
    rng = np.random.default_rng(seed)
    sharpes = []
    chunk = max(1, 4_000_000 // T)  # bounds memory for long series
    for start in range(0, n_boot, chunk):
        sample = net[stationary_bootstrap_indices(T, min(chunk, n_boot - start), mean_block, rng)]
        std = sample.std(axis=1, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            sharpes.append(np.where(std > 0, sample.mean(axis=1) / std, np.nan) * math.sqrt(bars_per_year))
    sharpes = np.concatenate(sharpes)
    sharpes = sharpes[np.isfinite(sharpes)]
    if len(sharpes):
        out["low"], out["high"] = (float(q) for q in np.quantile(sharpes, [(1 - level) / 2, (1 + level) / 2]))
    return out
