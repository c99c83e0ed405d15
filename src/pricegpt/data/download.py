"""Downloading prices from Yahoo Finance through the optional `yfinance` package (`pip install 'pricegpt[yahoo]'`).

The result is written in the canonical long format, so every other command reads it back with `load_prices`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, OutputExistsError
from ..fileio import atomic_path
from .readers import CANONICAL_COLUMNS, LoadReport, _finish

log = logging.getLogger("pricegpt")


def download_yahoo(tickers: list[str], *, interval: str, start: str, end: str, out: str | Path,
                   overwrite: bool = False) -> Path:
    """Download `tickers` at `interval` between `start` and `end` (adjusted prices) and write them to `out`."""
    out = Path(out)
    if not tickers:
        raise DataError("--tickers is empty; give a comma-separated list such as AAPL,MSFT")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; choose another --out or pass --force")
    try:
        import yfinance
    except ImportError:
        raise DataError("downloading needs yfinance; install it with `pip install 'pricegpt[yahoo]'`") from None
    try:
        raw = yfinance.download(tickers, interval=interval, start=start, end=end, auto_adjust=True,
                                group_by="ticker", progress=False, threads=False)
    except Exception as err:  # yfinance surfaces network failures as many exception types
        raise DataError(f"download from Yahoo Finance failed ({type(err).__name__}: {err}); "
                        "check the network connection, the tickers and the dates") from None
    frame = yahoo_to_frame(raw, tickers)
    if frame.empty:
        raise DataError(f"Yahoo Finance returned no prices for {', '.join(tickers)} at interval {interval} "
                        f"between {start} and {end}; check the network, the tickers and the date range "
                        "(intraday intervals only reach back a limited time)")
    save_prices(frame, out)
    return out


def yahoo_to_frame(raw: pd.DataFrame, tickers: list[str]) -> pd.DataFrame:
    """Turn yfinance's wide frame (one column level per ticker, or a single ticker) into the canonical frame."""
    if raw is None or len(raw) == 0:
        return pd.DataFrame(columns=list(CANONICAL_COLUMNS))
    parts = []
    for ticker in tickers:
        if isinstance(raw.columns, pd.MultiIndex):
            if ticker in raw.columns.get_level_values(0):
                block = raw[ticker]
            elif ticker in raw.columns.get_level_values(-1):
                block = raw.xs(ticker, axis=1, level=-1)
            else:
                log.warning(f"Yahoo Finance returned nothing for {ticker}")
                continue
        else:
            block = raw
        block = block.rename(columns=lambda c: str(c).strip().lower().replace(" ", "_"))
        close = "adj_close" if "adj_close" in block else "close"
        if close not in block:
            continue
        part = pd.DataFrame({"timestamp": pd.to_datetime(block.index, utc=True), "symbol": ticker})
        for col in ("open", "high", "low"):
            if col in block:
                part[col] = block[col].to_numpy(dtype=np.float64)
        part["close"] = block[close].to_numpy(dtype=np.float64)
        if "volume" in block:
            part["volume"] = block["volume"].to_numpy(dtype=np.float64)
        part = part.dropna(subset=["close"])
        part = part[(part["close"] > 0) & np.isfinite(part["close"])]
        if len(part) >= 2:
            parts.append(part)
    if not parts:
        return pd.DataFrame(columns=list(CANONICAL_COLUMNS))
    return _finish(pd.concat(parts, ignore_index=True), LoadReport(source="yahoo"))


def save_prices(frame: pd.DataFrame, out: str | Path) -> None:
    """Write a canonical frame as CSV (optionally .gz) or Parquet, atomically."""
    out = Path(out)
    frame = frame.copy()
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    with atomic_path(out) as tmp:
        if out.name.lower().endswith((".parquet", ".pq")):
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError:
                raise DataError("writing Parquet needs pyarrow: `pip install 'pricegpt[parquet]'`") from None
        else:
            frame.to_csv(tmp, index=False, compression="gzip" if out.name.endswith(".gz") else None)
