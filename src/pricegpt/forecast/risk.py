"""What sampled paths say: quantile tables of the cumulative return and the price, and risk numbers.

Risk numbers are computed from the H-bar cumulative log return R of each path. Losses are POSITIVE fractions of
the position's value: loss = 1 - exp(R). VaR_a is the a-quantile of the loss (e.g. var_95 = 0.03: a 5% chance of
losing 3% or more) and ES_a the mean loss in that worst (1 - a) tail. A barrier +-k is touched when the price
path closes at or beyond (1 +- k) times the origin close at any of the H bars (close-to-close monitoring).

    summary = risk(paths.paths[0])      # P(up), expected return, VaR/ES 95/99, barrier touches of one symbol
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .forecaster import ForecastPaths

QUANTILE_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
VAR_LEVELS = (0.95, 0.99)
BARRIERS = (0.05, 0.10)


def quantile_table(fc: ForecastPaths, levels=QUANTILE_LEVELS) -> pd.DataFrame:
    """One row per symbol and horizon step (1..H): symbol, origin, step, `return_qL` (quantiles of the cumulative
    log return) and `price_qL` (last close * exp(return quantile))."""
    cum = fc.cumulative
    quantiles = np.quantile(cum, levels, axis=1)  # (levels, symbols, horizon)
    frames = []
    for i, symbol in enumerate(fc.symbols):
        table = pd.DataFrame({"symbol": symbol, "origin": fc.origins[i], "step": np.arange(1, cum.shape[-1] + 1)})
        for j, level in enumerate(levels):
            table[f"return_q{level:g}"] = quantiles[j, i]
        for j, level in enumerate(levels):
            table[f"price_q{level:g}"] = fc.last_close[i] * np.exp(quantiles[j, i])
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def risk(paths: np.ndarray, var_levels=VAR_LEVELS, barriers=BARRIERS) -> dict:
    """Risk numbers from per-bar log-return paths (samples, horizon), or (origins, samples, horizon) for a batch
    (then every value is an array over origins). See the module docstring for the sign conventions.

    Keys: p_up (P(R_H > 0)), expected_return (mean simple return), var_95/es_95/var_99/es_99 (positive = loss),
    p_touch_up / p_touch_down: {"0.05": probability, ...} for each barrier k.
    """
    paths = np.asarray(paths, dtype=np.float64)
    batch = paths.ndim == 3
    paths = paths if batch else paths[None]
    cum = np.cumsum(paths, axis=-1)
    final = cum[..., -1]  # (origins, samples)
    loss = np.sort(1.0 - np.exp(final), axis=-1)
    S = loss.shape[-1]
    out = {"p_up": np.mean(final > 0, axis=-1), "expected_return": np.mean(np.expm1(final), axis=-1)}
    for level in var_levels:
        var = np.quantile(loss, level, axis=-1)
        tail = max(1, math.ceil(round((1 - level) * S, 9)))  # at least the worst path; round: 0.05 * 100 > 5
        out[f"var_{round(level * 100)}"] = var
        out[f"es_{round(level * 100)}"] = loss[:, S - tail:].mean(axis=-1)
    high, low = cum.max(axis=-1), cum.min(axis=-1)
    out["p_touch_up"] = {f"{k:g}": np.mean(high >= math.log1p(k), axis=-1) for k in barriers}
    out["p_touch_down"] = {f"{k:g}": np.mean(low <= math.log1p(-k), axis=-1) for k in barriers}
    if batch:
        return out
    return {key: ({k: float(v[0]) for k, v in value.items()} if isinstance(value, dict) else float(value[0]))
            for key, value in out.items()}
