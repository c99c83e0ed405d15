"""RUN/eval/origins.csv: the per-origin results every aggregate of the forecast in metrics.json is computed from.

One row per (horizon, symbol, origin), rows in horizon order (as evaluated), then symbol, then time. Columns:

  symbol        the symbol (in the CSV, a cell a spreadsheet would run as a formula gets a leading quote)
  origin        time stamp (ISO-8601 UTC, `Z`) of the origin's FIRST TARGET bar: as everywhere in pricegpt
                (data.windows), an origin is the position of its first target bar, and a bar's time stamp is the
                one of its price row (the bar's close); the forecast sees every bar before it
  horizon       H, bars
  realised      the realised H-bar cumulative log return from the origin
  for `model` and every baseline that ran (empty where it did not run at this horizon), grouped by column:
  crps_<name>   CRPS of the H-bar return          pit_<name>    PIT = F(realised)
  q01_<name> q05_<name> q25_<name> q50_<name> q75_<name> q95_<name>    predictive quantiles
  level_<name>  the smallest central-interval level (5, 10, ..., 95 percent) whose interval holds the outcome,
                100 when even the 95% interval misses it: coverage at level L = mean(level <= L)
  hit50_<name> hit90_<name>   1 when the outcome lies in the central 50% / 90% interval [q25, q75] / [q05, q95]
  then what calibration.py groups and scores by:
  context_end   time stamp of the last context bar (when the forecast is made)
  vol20         standard deviation (ddof 1) of the 20 returns before the origin (fewer at a series' start)
  regime        vol20's tercile over the horizon's origins: low, mid, high (calibration.volatility_regimes)
  p_up_model    the model's P(H-bar return > 0): the fraction of its sampled paths that end above zero
  p_up_train    the symbol's train-split frequency of positive H-bar returns (every H-bar window of its train
                bars; the pooled frequency for a symbol without one, 0.5 when no symbol has one)

Floats are written in full precision (shortest round-trip), so aggregates recomputed from the file match
metrics.json to the last digit. Path-based extras of metrics.json (coverage_by_horizon: each step inside the
horizon; risk: the last origin's paths; ablations: other runs) are not in the table.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..data.windows import Origins, SymbolSeries
from ..fileio import csv_safe_cell
from .calibration import volatility_regimes
from .metrics import COVERAGE_LEVELS, QUANTILE_COLUMNS, per_origin

ID_COLUMNS = ("symbol", "origin", "horizon", "realised")
SCORE_COLUMNS = ("crps", "pit", *QUANTILE_COLUMNS, "level", *(f"hit{round(c * 100)}" for c in COVERAGE_LEVELS))
CONTEXT_COLUMNS = ("context_end", "vol20", "regime", "p_up_model", "p_up_train")
VOL_WINDOW = 20


def _utc(values: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(values).tz_localize("UTC")


def trailing_volatility(series: dict[str, SymbolSeries], origins: Origins, window: int = VOL_WINDOW) -> np.ndarray:
    """(n,) standard deviation (ddof 1) of the `window` returns before each origin; NaN with fewer than 2."""
    out = np.full(origins.n, np.nan)
    for k, (s, i) in enumerate(zip(origins.symbols, origins.index)):
        trailing = series[s].returns[max(0, i - window):i]
        if len(trailing) >= 2:
            out[k] = np.std(trailing, ddof=1)
    return out


def train_up_frequency(series: dict[str, SymbolSeries], horizon: int) -> dict[str, float]:
    """Per symbol: the fraction of H-bar windows of its train returns whose sum is positive (module docstring)."""
    ups, counts = {}, {}
    for s, one in series.items():
        train = one.returns[:one.train_len]
        if len(train) >= horizon:
            sums = np.convolve(train, np.ones(horizon), mode="valid")
            ups[s], counts[s] = int(np.sum(sums > 0)), len(sums)
    pooled = sum(ups.values()) / sum(counts.values()) if counts else 0.5
    return {s: ups[s] / counts[s] if s in counts else pooled for s in series}


def origin_table(series: dict[str, SymbolSeries], origins: Origins, horizon: int, realised: np.ndarray,
                 predictives: dict, p_up_model: np.ndarray) -> pd.DataFrame:
    """The per-origin table of one horizon (module docstring): realised (n,) H-bar returns, predictives
    {name: predictive or None (did not run)} with "model" first, p_up_model (n,)."""
    realised = np.asarray(realised, dtype=np.float64)
    assert realised.shape == (origins.n,), f"realised {realised.shape} for {origins.n} origins"
    names = [name for name, pred in predictives.items() if pred is not None]
    scores = {name: per_origin(predictives[name], realised) for name in names}
    columns = {"symbol": np.asarray([str(s) for s in origins.symbols], dtype=object),
               "origin": _utc(origins.target_start(series)), "horizon": np.full(origins.n, horizon, np.int64),
               "realised": realised}
    for column in SCORE_COLUMNS:
        for name in names:
            values = scores[name][column]
            columns[f"{column}_{name}"] = values.astype(np.int64) if values.dtype == bool else values
    vol = trailing_volatility(series, origins)
    up_train = train_up_frequency(series, horizon)
    columns.update({"context_end": _utc(origins.context_end(series)), "vol20": vol,
                    "regime": volatility_regimes(vol)[0],
                    "p_up_model": np.asarray(p_up_model, dtype=np.float64),
                    "p_up_train": np.array([up_train[str(s)] for s in origins.symbols], dtype=np.float64)})
    return pd.DataFrame(columns)


def combine(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The tables of several horizons in one, columns in the documented order (a forecaster that ran at any
    horizon has its columns; empty where it did not run)."""
    table = pd.concat(tables, ignore_index=True)
    names = list(dict.fromkeys(c[len("crps_"):] for t in tables for c in t.columns if c.startswith("crps_")))
    ordered = [*ID_COLUMNS, *(f"{col}_{name}" for col in SCORE_COLUMNS for name in names), *CONTEXT_COLUMNS]
    return table[ordered]


def forecaster_columns(table: pd.DataFrame, name: str) -> dict[str, np.ndarray]:
    """One forecaster's per-origin columns without the `_<name>` suffix (the input of metrics.summary)."""
    return {column: table[f"{column}_{name}"].to_numpy() for column in SCORE_COLUMNS}


def write_csv(path: str | os.PathLike, table: pd.DataFrame) -> None:
    """Write the table as origins.csv: ISO time stamps, symbols made spreadsheet-safe, floats in full precision.
    The caller makes it atomic (evaluate writes it inside its temporary output directory)."""
    out = table.copy()
    for column in ("origin", "context_end"):
        out[column] = out[column].dt.tz_convert("UTC").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    out["symbol"] = [csv_safe_cell(s) for s in out["symbol"]]
    out.to_csv(path, index=False)


__all__ = ["CONTEXT_COLUMNS", "ID_COLUMNS", "SCORE_COLUMNS", "combine", "forecaster_columns", "origin_table",
           "train_up_frequency", "trailing_volatility", "write_csv"]
