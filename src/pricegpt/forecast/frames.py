"""Forecasts as pandas frames with real future timestamps, and the compact HTML a notebook shows for them.

    table = fc.predict_df(prices, horizon=24)        # symbol, timestamp, mean, "0.1" .. "0.9", price_mean, price_0.1 ..
    paths = fc.sample_paths(prices, 24, 512)
    paths.to_frame()                                  # symbol, sample, step, timestamp, log_return, cumulative, price

Future timestamps are the END times of the future bars (UTC), the same times the forecaster decodes with (seasonal
scaling, calendar models): by default `data.calendar.future_times` of each series' own history (its bar interval
and the weekday and time-of-day slots it traded in: weekdays for daily equities, 24x5 for FX, 24x7 for crypto;
holidays are not known), or the caller's `future_timestamps` (a dict symbol -> times, or one sequence of times for
every symbol), exactly `horizon` of them, strictly increasing and after the symbol's last bar. A model that decodes
whole patches needs the times of a few bars beyond the horizon: they continue the given times by the calendar of
the history and the given times together.

Return columns hold the cumulative log return from the last bar's close; price columns are last close * exp(the
return column), except `price_mean`, the mean of the simulated prices (not exp of the mean log return).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..config import show
from ..data.calendar import future_times
from ..errors import ConfigError

if TYPE_CHECKING:
    from .forecaster import ForecastPaths

log = logging.getLogger("pricegpt")

DF_QUANTILE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # Chronos' predict_df default
HTML_MAX_SYMBOLS = 20  # rows of a notebook summary; the rest is counted


def check_levels(levels) -> tuple[float, ...]:
    """Quantile levels as sorted floats in (0, 1), at least one, no duplicates; ConfigError otherwise."""
    try:
        values = [float(level) for level in levels]
    except (TypeError, ValueError):
        raise ConfigError(f"quantile_levels {show(levels)} must be numbers in (0, 1), e.g. (0.1, 0.5, 0.9)") from None
    bad = [v for v in values if not 0 < v < 1]
    if not values or bad:
        raise ConfigError(f"quantile_levels must be numbers strictly between 0 and 1, got {show(levels)}")
    if len(set(values)) != len(values):
        raise ConfigError(f"quantile_levels {show(levels)} repeats a level; give each once")
    return tuple(sorted(values))


def level_name(level: float) -> str:
    """A quantile column's name: 0.1 -> "0.1", 0.05 -> "0.05" (Chronos' convention)."""
    return f"{level:g}"


# ------------------------------------------------------------------------------------------- future times
def target_times(history: list[np.ndarray], symbols: list[str], horizon: int, n_bars: int,
                 future_timestamps=None) -> list[np.ndarray]:
    """Per symbol, the end times (datetime64[ns], UTC) of the `n_bars` (>= horizon) bars after its history: from
    the history's calendar, or the caller's `future_timestamps` (module docstring) continued by that calendar."""
    try:
        return _target_times(history, symbols, horizon, n_bars, future_timestamps)
    except OverflowError:
        raise ConfigError(f"a horizon of {horizon} bars runs past 2262, the last time pandas represents; forecast "
                          "fewer bars") from None


SHORT_CALENDAR = np.timedelta64(14, "D")  # a history shorter than two weeks may not show every trading slot


def _target_times(history, symbols, horizon: int, n_bars: int, future_timestamps) -> list[np.ndarray]:
    if future_timestamps is None:
        short = [s for times, s in zip(history, symbols)
                 if len(times) and np.asarray(times[-1]) - np.asarray(times[0]) < SHORT_CALENDAR]
        if short:
            log.warning(f"the history of {', '.join(show(s) for s in short[:5])} spans less than two weeks: the "
                        "future bar times are inferred from the weekdays and hours it shows, and slots it never "
                        "saw are skipped; pass future_timestamps (or a longer history) to be sure")
        return [future_times(times, n_bars) for times in history]
    if isinstance(future_timestamps, (str, bytes)) or not hasattr(future_timestamps, "__len__"):
        raise ConfigError("future_timestamps must be a sequence of timestamps or a dict symbol -> timestamps, got "
                          f"{type(future_timestamps).__name__}")
    out = []
    for times, symbol in zip(history, symbols):
        if isinstance(future_timestamps, Mapping):
            if symbol not in future_timestamps:
                raise ConfigError(f"future_timestamps has no entry for symbol {show(symbol)}; give the {horizon} "
                                  "future bar times of every symbol forecast")
            given = future_timestamps[symbol]
        else:
            given = future_timestamps
        given = _given_times(given, symbol, times, horizon)
        if n_bars > horizon:
            given = np.concatenate([given, future_times(np.concatenate([times, given]), n_bars - horizon)])
        out.append(given)
    return out


def _given_times(given, symbol: str, history: np.ndarray, horizon: int) -> np.ndarray:
    """The caller's future times of one symbol as datetime64[ns] UTC (naive = UTC), checked."""
    where = f"future_timestamps of symbol {show(symbol)}"
    if isinstance(given, (str, bytes)) or not hasattr(given, "__len__"):
        raise ConfigError(f"{where}: give a sequence of {horizon} timestamps, got {type(given).__name__}")
    try:
        index = pd.DatetimeIndex(pd.to_datetime(list(given), utc=True))
    except (ValueError, TypeError, OverflowError) as err:
        raise ConfigError(f"{where}: cannot read them as timestamps ({err})") from None
    if len(index) != horizon:
        raise ConfigError(f"{where}: {len(index)} timestamps for a horizon of {horizon} bars; give exactly "
                          f"{horizon}")
    if index.hasnans:
        raise ConfigError(f"{where}: a timestamp is missing (NaT); give {horizon} real times")
    ns = index.tz_localize(None).as_unit("ns").to_numpy()
    if horizon > 1 and not np.all(ns[1:] > ns[:-1]):
        raise ConfigError(f"{where}: timestamps must be strictly increasing")
    if len(history) and ns[0] <= history[-1]:
        raise ConfigError(f"{where}: the first one ({index[0]}) is not after the last bar of the history "
                          f"({pd.Timestamp(history[-1], tz='UTC')})")
    return ns


def utc_index(times: np.ndarray) -> pd.DatetimeIndex:
    """datetime64[ns] UTC values as a tz-aware DatetimeIndex."""
    return pd.DatetimeIndex(np.asarray(times, dtype="datetime64[ns]")).tz_localize("UTC")


# ------------------------------------------------------------------------------------------------- frames
def quantile_frame(fc: ForecastPaths, levels=DF_QUANTILE_LEVELS) -> pd.DataFrame:
    """One row per symbol and future bar: symbol, timestamp, mean and quantiles of the cumulative log return,
    price_mean and price quantiles (module docstring)."""
    levels = check_levels(levels)
    cum = fc.cumulative  # (symbols, samples, horizon)
    n, _, horizon = cum.shape
    close = np.asarray(fc.last_close, dtype=np.float64)[:, None]
    quantiles = np.quantile(cum, levels, axis=1)  # (levels, symbols, horizon)
    columns = {"symbol": np.repeat(np.asarray(fc.symbols, dtype=object), horizon),
               "timestamp": utc_index(_timestamps(fc, n, horizon)),
               "mean": cum.mean(axis=1).ravel()}
    for j, level in enumerate(levels):
        columns[level_name(level)] = quantiles[j].ravel()
    columns["price_mean"] = (close[:, :, None] * np.exp(cum)).mean(axis=1).ravel()
    for j, level in enumerate(levels):
        columns[f"price_{level_name(level)}"] = (close * np.exp(quantiles[j])).ravel()
    return pd.DataFrame(columns)


def paths_frame(fc: ForecastPaths) -> pd.DataFrame:
    """Every sampled path, one row per (symbol, sample, step): symbol, sample (0..), step (1..H), timestamp,
    log_return (of the bar), cumulative (from the last bar) and price (last close * exp(cumulative))."""
    n, samples, horizon = fc.paths.shape
    cum = fc.cumulative
    close = np.asarray(fc.last_close, dtype=np.float64)[:, None, None]
    times = _timestamps(fc, n, horizon).reshape(n, 1, horizon)
    return pd.DataFrame({
        "symbol": np.repeat(np.asarray(fc.symbols, dtype=object), samples * horizon),
        "sample": np.tile(np.repeat(np.arange(samples), horizon), n),
        "step": np.tile(np.arange(1, horizon + 1), n * samples),
        "timestamp": utc_index(np.broadcast_to(times, (n, samples, horizon)).ravel()),
        "log_return": fc.paths.ravel(),
        "cumulative": cum.ravel(),
        "price": (close * np.exp(cum)).ravel(),
    })


def _timestamps(fc: ForecastPaths, n: int, horizon: int) -> np.ndarray:
    """(n * horizon,) datetime64[ns] UTC future bar times of every symbol (NaT where unknown)."""
    if fc.future_timestamps is None:
        return np.full(n * horizon, np.datetime64("NaT"), dtype="datetime64[ns]")
    return np.concatenate([pd.DatetimeIndex(t).tz_convert("UTC").tz_localize(None).as_unit("ns").to_numpy()
                           for t in fc.future_timestamps]) if n else np.empty(0, dtype="datetime64[ns]")


# --------------------------------------------------------------------------------------------------- HTML
def paths_html(fc: ForecastPaths) -> str:
    """A compact table of what the paths say per symbol, for a notebook cell (user strings escaped)."""
    n, samples, horizon = fc.paths.shape
    final = fc.cumulative[..., -1] if horizon else np.zeros((n, samples))
    rows = []
    for i in range(min(n, HTML_MAX_SYMBOLS)):
        low, median, high = np.quantile(final[i], (0.1, 0.5, 0.9)) if samples else (np.nan,) * 3
        close = float(fc.last_close[i])
        end = "" if fc.future_timestamps is None else _time_text(fc.future_timestamps[i][-1])
        cells = [fc.symbols[i], _time_text(fc.origins[i]), f"{close:.6g}", end,
                 f"{np.mean(final[i] > 0):.0%}", f"{close * np.exp(median):.6g}",
                 f"{close * np.exp(low):.6g} – {close * np.exp(high):.6g}"]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    more = f"<p>... and {n - HTML_MAX_SYMBOLS} more symbol(s)</p>" if n > HTML_MAX_SYMBOLS else ""
    head = "".join(f"<th>{h}</th>" for h in ("symbol", "last bar", "last close", "horizon end", "P(up)",
                                             "median price", "80% interval"))
    return (f"<div><b>ForecastPaths</b>: {n} symbol(s) x {samples} sample paths x {horizon} bar(s)"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}</div>")


def _time_text(ts) -> str:
    ts = pd.Timestamp(ts)
    return "?" if ts is pd.NaT else ts.isoformat()
