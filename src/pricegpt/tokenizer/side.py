"""Side channels: what a bar says beyond its close, as per-token model inputs next to the return token.

Three channels per bar t (bars 1..n-1 of a symbol, the rows of `bar_features`), each measured against the symbol's
own recent past so that its meaning travels across volatility regimes and assets, as the EWMA-standardised return
tokens do:

  range   log(high_t / low_t) over the EWMA of the previous bars' ranges: how wide this bar was for this
          symbol lately (high-low ranges carry several times the volatility information of closes);
  gap     log(open_t / close_{t-1}) over the EWMA of the previous bars' absolute close returns: the jump at the
          open, in units of recent volatility;
  volume  log(1 + volume_t) minus the EWMA of the previous bars' log(1 + volume): this bar's activity against
          its recent level.

Every EWMA has a half-life of `SIDE_HALFLIFE` bars and uses only bars before t, so a value is known once bar t
has closed (exactly when its return token is). A value is missing (NaN) during the first `SIDE_WARMUP` bars of a
symbol, where a column is absent or where a price or volume is not usable; a missing value is the "unknown" input
of the model, as are the side inputs of generated positions. A patch of several bars takes the mean of its bars'
known values.

The token store bins the values on its train split: per channel, the pooled train-split values' quantiles at
1/SIDE_BINS .. (SIDE_BINS-1)/SIDE_BINS (repeated edges merged), so each bin holds about as many train tokens; ids
are 0 .. len(edges) and -1 for unknown. The edges travel with the store's index and, once a model is trained on
it, with the model's config (`model.side_edges`), which is how a forecaster bins the side values of new data.
Close-only data has no side channels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .patches import symbol_columns

SIDE_CHANNELS = ("range", "gap", "volume")
SIDE_BINS = 16  # bins per channel at most (the model's tables have SIDE_BINS + 1 rows: the last is "unknown")
SIDE_HALFLIFE = 20.0  # bars
SIDE_WARMUP = 5  # bars of a symbol before its side values are defined
SIDE_COLUMNS = ("open", "high", "low")  # what a frame needs for side channels; volume is optional


def has_side_columns(frame: pd.DataFrame) -> bool:
    """Whether `frame` holds the open, high and low columns side channels are computed from."""
    return all(c in frame.columns for c in SIDE_COLUMNS)


def _lagged_ewma(values: np.ndarray) -> np.ndarray:
    """EWMA (half-life SIDE_HALFLIFE bars) of values[:t] at each t: the mean of the bars before t (NaN at t=0);
    missing values are skipped."""
    mean = pd.Series(values).ewm(halflife=SIDE_HALFLIFE, adjust=True, ignore_na=True).mean().to_numpy()
    return np.concatenate([[np.nan], mean[:-1]])


def _symbol_side(close, open_, high, low, volume) -> np.ndarray:
    """(n - 1, 3) float32 side values of bars 1..n-1 of one symbol from its (n,) columns (volume may be None)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.isfinite(close) & (close > 0)
        log_close = np.where(ok, np.log(np.where(ok, close, 1.0)), np.nan)
        returns = np.diff(log_close)
        usable = (np.isfinite(high) & np.isfinite(low) & (low > 0) & (high >= low))[1:]
        bar_range = np.where(usable, np.log(np.where(usable, high[1:] / low[1:], 1.0)), np.nan)
        range_scale = _lagged_ewma(bar_range)
        range_value = np.where(range_scale > 0, bar_range / range_scale, np.nan)
        open_ok = (np.isfinite(open_) & (open_ > 0))[1:]
        gap = np.where(open_ok, np.log(np.where(open_ok, open_[1:], 1.0)) - log_close[:-1], np.nan)
        return_scale = _lagged_ewma(np.abs(returns))
        gap_value = np.where(return_scale > 0, gap / return_scale, np.nan)
        if volume is None:
            volume_value = np.full(len(returns), np.nan)
        else:
            log_volume = np.where(np.isfinite(volume) & (volume >= 0), np.log1p(np.abs(volume)), np.nan)[1:]
            volume_value = log_volume - _lagged_ewma(log_volume)
    out = np.stack([range_value, gap_value, volume_value], axis=1)
    out[:SIDE_WARMUP] = np.nan
    out[~np.isfinite(out)] = np.nan
    return out.astype(np.float32)


def side_values(frame: pd.DataFrame) -> dict[str, np.ndarray] | None:
    """Per symbol (sorted, the symbols of `bar_features`): side values (n - 1, 3) float32 of bars 1..n-1, NaN where
    unknown; None when the frame lacks open, high or low (close-only data). The frame is a price frame as
    `load_prices` returns it (`symbol_columns` checks its order)."""
    if not has_side_columns(frame):
        return None
    columns = ("close", *SIDE_COLUMNS) + (("volume",) if "volume" in frame.columns else ())
    return {symbol: _symbol_side(data["close"], data["open"], data["high"], data["low"], data.get("volume"))
            for symbol, _, data in symbol_columns(frame, columns)}


def patch_side(values: np.ndarray, patch_len: int) -> np.ndarray:
    """(n_bars, 3) per-bar values -> (n_patches, 3): the mean of each complete patch's known values (patches
    anchored at the first bar, as `cut_patches` cuts them); NaN where a patch has none."""
    n = len(values) // patch_len
    if patch_len == 1:
        return np.asarray(values[:n], dtype=np.float32)
    blocks = np.asarray(values[:n * patch_len], dtype=np.float64).reshape(n, patch_len, -1)
    known = np.isfinite(blocks)
    total = np.where(known, blocks, 0.0).sum(axis=1)
    count = known.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan).astype(np.float32)


def fit_side_edges(train_values: np.ndarray, bins: int = SIDE_BINS) -> list[list[float]]:
    """Per channel, the interior bin edges of (n, 3) train-split values: quantiles at 1/bins .. (bins-1)/bins of the
    known values, repeated edges merged ([] for a channel with no known train value)."""
    values = np.asarray(train_values, dtype=np.float64).reshape(-1, len(SIDE_CHANNELS))
    edges = []
    for c in range(values.shape[1]):
        known = values[:, c][np.isfinite(values[:, c])]
        if len(known) == 0:
            edges.append([])
            continue
        q = np.quantile(known, np.arange(1, bins) / bins, method="linear")
        edges.append([float(x) for x in np.unique(q)])
    return edges


def side_ids(values: np.ndarray, edges: list[list[float]]) -> np.ndarray:
    """(..., 3) side values -> int8 ids (..., 3): bin i of channel c holds values in [edges[c][i-1], edges[c][i]),
    so ids lie in 0 .. len(edges[c]); -1 where the value is unknown or the channel has no edges."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, -1, dtype=np.int8)
    for c, channel_edges in enumerate(edges):
        known = np.isfinite(values[..., c])
        if channel_edges:
            out[..., c][known] = np.searchsorted(np.asarray(channel_edges), values[..., c][known], side="right")
    return out
