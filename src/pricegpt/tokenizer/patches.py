"""Per-bar features and patches, the input every tokenizer kind encodes, and the splits a tokenizer fits on.

`bar_features(frame, features)` gives each symbol's per-bar features (the first bar has none: it has no return):
"close" is the close-to-close log return; "ohlcv" adds log(high/close), log(low/close), log(open/close) and the
change of log(1 + volume). `cut_patches` cuts them into non-overlapping `Patches` of `patch_len` bars anchored at
the symbol's first return (a trailing incomplete patch is dropped), so appending future bars never changes a past
patch. `summed` sums a patch's bars in a fixed order; `splits_for` is `time_splits` that also allows a train_end
at or after the last bar.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data import Splits, iso, parse_time, time_splits
from ..errors import DataError

log = logging.getLogger("pricegpt")


@dataclass
class Patches:
    """One symbol's complete patches: `features` (n_patches, patch_len, n_features) raw (unscaled) values,
    `starts` / `ends` the timestamps (datetime64[ns], UTC) of each patch's first and last bar, and `scales`
    (n_patches, n_features) what each patch is divided by (the scale at its first bar), when the tokenizer that
    cut them gave bar scales."""

    symbol: str
    features: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    scales: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.features)


# ---------------------------------------------------------------------------------------------- features
def _utc_ns(column: pd.Series) -> np.ndarray:
    """Timestamps as naive-UTC datetime64[ns] (naive input is taken as UTC)."""
    try:
        index = pd.DatetimeIndex(column) if pd.api.types.is_datetime64_any_dtype(column) \
            else pd.DatetimeIndex(pd.to_datetime(column, utc=True))
    except (ValueError, TypeError) as err:
        raise DataError("the timestamp column cannot be read as dates; read files with pricegpt.load_prices") from err
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return index.as_unit("ns").to_numpy()


def cutoff_ns(ts: pd.Timestamp) -> np.datetime64:
    """A cutoff as naive-UTC datetime64[ns], comparable with the patch times."""
    return np.datetime64(ts.tz_convert("UTC").tz_localize(None).as_unit("ns"))


def bar_features(frame: pd.DataFrame, features: str = "close") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per symbol (sorted): (timestamps of bars 1..n-1 as datetime64[ns], features (n-1, n_features) float64).

    Vectorised numpy over symbol slices (no per-group frames): a 10M-bar series takes about a second."""
    missing = [c for c in ("timestamp", "symbol", "close") if c not in frame.columns]
    if missing:
        raise DataError(f"price frame lacks column(s) {', '.join(missing)}; read files with pricegpt.load_prices")
    if len(frame) == 0:
        raise DataError("the price frame is empty; nothing to tokenize")
    columns = ["close"]
    if features == "ohlcv":
        lacking = [c for c in ("open", "high", "low", "volume") if c not in frame.columns]
        if lacking:
            raise DataError(f"features='ohlcv' needs open, high, low and volume columns; the data lacks "
                            f"{', '.join(lacking)}: use features='close' (--features close)")
        columns = ["close", "high", "low", "open", "volume"]
    return {symbol: (times[1:], _symbol_features(symbol, data, features))
            for symbol, times, data in symbol_columns(frame, columns)}


def symbol_columns(frame: pd.DataFrame, columns) -> Iterator[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """Per symbol, in sorted order: (symbol, its bar times as naive-UTC datetime64[ns], {column: float64 values}),
    slices of one vectorised pass over the frame. A symbol whose times are not strictly increasing is a DataError
    (a price frame from `load_prices` is sorted and free of duplicates)."""
    codes, symbols = pd.factorize(frame["symbol"].astype(str), sort=True)
    order = None if np.all(codes[1:] >= codes[:-1]) else np.argsort(codes, kind="stable")
    if order is not None:
        codes = codes[order]
    bounds = np.searchsorted(codes, np.arange(len(symbols) + 1))
    times = _utc_ns(frame["timestamp"])
    data = {c: frame[c].to_numpy(dtype=np.float64) for c in columns}
    if order is not None:
        times = times[order]
        data = {c: values[order] for c, values in data.items()}
    for i, symbol in enumerate(symbols):
        rows = slice(bounds[i], bounds[i + 1])
        ts = times[rows]
        if len(ts) > 1 and not np.all(ts[1:] > ts[:-1]):
            raise DataError(f"symbol {symbol}: timestamps are not strictly increasing; "
                            "read the data with pricegpt.load_prices (it sorts and removes duplicates)")
        yield str(symbol), ts, {c: v[rows] for c, v in data.items()}


def _symbol_features(symbol: str, data: dict[str, np.ndarray], features: str) -> np.ndarray:
    close = data["close"]
    _check_prices(close, symbol, "close")
    log_close = np.log(close)
    cols = [np.diff(log_close)]
    if features == "ohlcv":
        for name in ("high", "low", "open"):
            _check_prices(data[name], symbol, name)
            cols.append(np.log(data[name][1:]) - log_close[1:])
        volume = data["volume"]
        if not np.all(np.isfinite(volume) & (volume >= 0)):
            raise DataError(f"symbol {symbol}: volume has missing, negative or infinite values; use features='close'")
        cols.append(np.diff(np.log1p(volume)))
    return np.stack(cols, axis=1) if len(cols) > 1 else cols[0][:, None]


def _check_prices(values: np.ndarray, symbol: str, column: str) -> None:
    if not np.all(np.isfinite(values) & (values > 0)):
        raise DataError(f"symbol {symbol}: column {column} has missing, non-positive or infinite prices; "
                        "read the data with pricegpt.load_prices")


def cut_patches(symbol: str, times: np.ndarray, values: np.ndarray, patch_len: int,
                bar_scales: np.ndarray | None = None) -> Patches:
    """Non-overlapping patches anchored at the first return; the trailing incomplete patch is dropped. With
    `bar_scales` (n_bars, n_features), each patch's scale is the one at its first bar."""
    n = len(values) // patch_len
    used = n * patch_len
    return Patches(symbol, values[:used].reshape(n, patch_len, values.shape[1]),
                   times[0:used:patch_len], times[patch_len - 1:used:patch_len],
                   None if bar_scales is None else np.asarray(bar_scales[0:used:patch_len]))


def summed(x: np.ndarray) -> np.ndarray:
    """Sum over the bars of each patch, (n, P) -> (n,), in a fixed order so that a patch's sum never depends on
    how many other patches are in the batch."""
    total = x[:, 0].copy()
    for j in range(1, x.shape[1]):
        total += x[:, j]
    return total


def splits_for(frame: pd.DataFrame, train_end=None, val_end=None) -> Splits:
    """`time_splits`, except that a train_end at or after the last bar is allowed (all data is train), so that a
    frame truncated at train_end can be fitted and tokenized like the full one."""
    if train_end is not None and len(frame):
        t_end = parse_time(train_end, "--train-end")
        if t_end >= frame["timestamp"].max():
            v_end = parse_time(val_end, "--val-end") if val_end is not None else t_end
            log.warning("no data after train_end %s: everything is train, nothing is validation", iso(t_end))
            return Splits(t_end.floor("s"), max(v_end, t_end).floor("s"))
    return time_splits(frame, train_end, val_end)
