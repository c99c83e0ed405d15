"""Offline stand-in for yfinance's network call, used only by the download tests (tests must run offline).

`download` answers from the embedded real data (sample:stocks-daily) in yfinance's wide multi-ticker layout;
PRICEGPT_FAKE_YF=offline makes it fail the way yfinance does without a network.
"""

import os

import pandas as pd


def download(tickers, interval="1d", start=None, end=None, **kwargs):
    if os.environ.get("PRICEGPT_FAKE_YF") == "offline":
        raise ConnectionError("Failed to perform, curl: (6) Could not resolve host: query2.finance.yahoo.com")
    from pricegpt.data import load_prices

    frame = load_prices("sample:stocks-daily")
    start, end = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
    frame = frame[(frame["timestamp"] >= start) & (frame["timestamp"] < end)]
    blocks = {}
    for ticker in tickers:
        part = frame[frame["symbol"] == ticker].set_index("timestamp")
        blocks[ticker] = part[["open", "high", "low", "close", "volume"]].rename(columns=str.title)
    return pd.concat(blocks, axis=1) if blocks else pd.DataFrame()
