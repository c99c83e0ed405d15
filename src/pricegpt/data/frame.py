"""Working with the canonical price frame: log returns, the global time splits, a summary and the bar interval.
(Reading its timestamp columns is `dates.py`.)

Splits are global time cutoffs `train_end < val_end`, the same for every symbol and every stage:
train = timestamp <= train_end, val = train_end < timestamp <= val_end, test = timestamp > val_end.
Without explicit cutoffs they sit at 70% and 85% of the union time span.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError

SPLIT_NAMES = ("train", "val", "test")


def log_returns(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-symbol close-to-close log returns: columns `timestamp, symbol, log_return` (each symbol's first bar
    has no return and is dropped). The timestamp is that of the bar the return ends at."""
    out = []
    for symbol, group in frame.groupby("symbol", sort=True):
        close = group["close"].to_numpy(dtype=np.float64)
        out.append(pd.DataFrame({"timestamp": group["timestamp"].to_numpy()[1:], "symbol": symbol,
                                 "log_return": np.diff(np.log(close))}))
    if not out:
        return pd.DataFrame({"timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
                             "symbol": pd.Series([], dtype=str), "log_return": pd.Series([], dtype=float)})
    result = pd.concat(out, ignore_index=True)
    result["timestamp"] = pd.to_datetime(result["timestamp"], utc=True)
    return result


def parse_time(value, what: str) -> pd.Timestamp:
    """A user-given cutoff (string, datetime or Timestamp) as a UTC Timestamp; naive values are taken as UTC."""
    if isinstance(value, pd.Timestamp):
        ts = value
    else:
        try:
            ts = pd.Timestamp(value)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{what}: cannot parse '{value}' as a date; use ISO form like 2019-12-31") from err
    if ts is pd.NaT:
        raise ConfigError(f"{what}: '{value}' is not a date; use ISO form like 2019-12-31")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass(frozen=True)
class Splits:
    """Global time cutoffs. `label(ts)` gives 0 (train), 1 (val) or 2 (test) for each timestamp."""

    train_end: pd.Timestamp
    val_end: pd.Timestamp

    def label(self, timestamps) -> np.ndarray:
        ts = pd.to_datetime(pd.Series(timestamps), utc=True).dt.as_unit("ns").dt.tz_localize(None)
        ns = ts.to_numpy(dtype="datetime64[ns]").view(np.int64)
        train_end, val_end = self.train_end.as_unit("ns").value, self.val_end.as_unit("ns").value
        return np.where(ns <= train_end, 0, np.where(ns <= val_end, 1, 2)).astype(np.int8)

    def to_dict(self) -> dict[str, str]:
        return {"train_end": iso(self.train_end), "val_end": iso(self.val_end)}

    @classmethod
    def from_dict(cls, d: dict) -> Splits:
        return cls(parse_time(d["train_end"], "train_end"), parse_time(d["val_end"], "val_end"))


def iso(ts: pd.Timestamp) -> str:
    """ISO-8601 UTC string with a Z suffix, the one format every file of a run uses for times."""
    return pd.Timestamp(ts).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def time_splits(frame: pd.DataFrame, train_end=None, val_end=None) -> Splits:
    """Global cutoffs for `frame` (see the module docstring). Given cutoffs are validated: train_end < val_end,
    and the train split must hold data."""
    if len(frame) == 0:
        raise DataError("no price data to split")
    start, end = frame["timestamp"].min(), frame["timestamp"].max()
    span = end - start
    t_end = parse_time(train_end, "--train-end") if train_end is not None else start + 0.70 * span
    v_end = parse_time(val_end, "--val-end") if val_end is not None else None
    if v_end is None:
        v_end = start + 0.85 * span if train_end is None else t_end + (end - t_end) / 2
    if not t_end < v_end:
        raise ConfigError(f"--train-end {iso(t_end)} must be before --val-end {iso(v_end)}")
    if t_end < start:
        raise ConfigError(f"--train-end {iso(t_end)} is before the first bar ({iso(start)}); "
                          "the train split would be empty")
    if t_end >= end:
        raise ConfigError(f"--train-end {iso(t_end)} is at or after the last bar ({iso(end)}); "
                          "nothing is left for validation and test")
    return Splits(pd.Timestamp(t_end).floor("s"), pd.Timestamp(v_end).floor("s"))


def describe(frame: pd.DataFrame, dropped: dict[str, int] | None = None) -> pd.DataFrame:
    """One row per symbol: bars, first/last timestamp, median bar interval, gaps, dropped rows.

    A gap is an interval longer than 4 median intervals (so weekends in daily data are not gaps)."""
    rows = []
    for symbol, group in frame.groupby("symbol", sort=True):
        ts = group["timestamp"]
        deltas = ts.diff().dropna()
        median = deltas.median() if len(deltas) else pd.Timedelta(0)
        gaps = int((deltas > 4 * median).sum()) if len(deltas) else 0
        rows.append({"symbol": symbol, "bars": len(group), "first": iso(ts.iloc[0]), "last": iso(ts.iloc[-1]),
                     "median_interval": _fmt_delta(median), "gaps": gaps,
                     "dropped": int((dropped or {}).get(symbol, 0))})
    return pd.DataFrame(rows)


def _fmt_delta(delta: pd.Timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def bar_seconds(frame: pd.DataFrame) -> float:
    """Median bar interval in seconds over all symbols (used to annualise)."""
    deltas = frame.groupby("symbol")["timestamp"].diff().dropna()
    return float(deltas.median().total_seconds()) if len(deltas) else float("nan")

