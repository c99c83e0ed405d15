"""Offline stand-in for ccxt's network calls, used only by the ccxt download tests (tests must run offline).

`fakex` answers `fetch_ohlcv` from a deterministic 24x7 candle grid (BTC/USDT and ETH/USDT listed from 2024-01-01,
hourly candles up to 2024-03-01), at most PAGE candles per call whatever `limit` asks, like an exchange's page cap.
Every call is appended to CALLS (and, when PRICEGPT_FAKE_CCXT_LOG names a file, written there as a JSON line) so
the tests can see the pagination; PRICEGPT_FAKE_CCXT_FAIL_AFTER=N makes every call after the N-th of the process
raise NetworkError, the way a dropped connection does.
"""

import json
import math
import os
import time

exchanges = ["fakex", "nocandles"]
PAGE = 100
LISTED_MS = 1704067200000  # 2024-01-01T00:00:00Z
LAST_MS = 1709251200000  # 2024-03-01T00:00:00Z: the "now" of the fake exchange
CALLS = []


class BaseError(Exception):
    pass


class ExchangeError(BaseError):
    pass


class BadSymbol(ExchangeError):
    pass


class NetworkError(BaseError):
    pass


class RequestTimeout(NetworkError):
    pass


class fakex:  # noqa: N801  (ccxt names its exchange classes by their ids)
    timeframes = {"1m": "1m", "5m": "5m", "1h": "1h", "4h": "4h", "1d": "1d"}
    has = {"fetchOHLCV": True}
    rateLimit = 20  # ms

    def __init__(self, config=None):
        self.config = dict(config or {})

    def fetch_ohlcv(self, symbol, timeframe="1m", since=None, limit=None, params=None):
        CALLS.append({"symbol": symbol, "timeframe": timeframe, "since": since, "limit": limit,
                      "at": time.monotonic()})
        log = os.environ.get("PRICEGPT_FAKE_CCXT_LOG")
        if log:
            with open(log, "a") as f:
                f.write(json.dumps(CALLS[-1]) + "\n")
        fail_after = os.environ.get("PRICEGPT_FAKE_CCXT_FAIL_AFTER")
        if fail_after is not None and len(CALLS) > int(fail_after):
            raise RequestTimeout("fakex GET https://api.fakex.test/klines request timed out (10000 ms)")
        if symbol not in ("BTC/USDT", "ETH/USDT"):
            raise BadSymbol(f"fakex does not have market symbol {symbol}")
        step = {"1m": 60, "5m": 300, "1h": 3600, "4h": 14400, "1d": 86400}[timeframe] * 1000
        first = LISTED_MS if since is None or since <= LISTED_MS else LISTED_MS + -(-(since - LISTED_MS) // step) * step
        count = min(PAGE, limit or PAGE)
        base = 40000.0 if symbol == "BTC/USDT" else 2000.0
        candles = []
        for t in range(first, LAST_MS + 1, step):
            if len(candles) == count:
                break
            i = (t - LISTED_MS) // step
            close = base * math.exp(0.01 * math.sin(i / 7.0) + 0.002 * (i % 5))
            candles.append([t, close * 0.999, close * 1.002, close * 0.997, close, 10.0 + i % 3])
        return candles


class nocandles(fakex):  # noqa: N801
    has = {"fetchOHLCV": False}
