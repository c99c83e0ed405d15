"""Downloading prices: from Yahoo Finance through the optional `yfinance` package (`pip install 'pricegpt[yahoo]'`),
and from crypto exchanges through the optional `ccxt` package (`pip install 'pricegpt[ccxt]'`).

The result is written in the canonical long format (timestamp UTC, symbol, open, high, low, close, volume), so every
other command reads it back with `load_prices`: CSV holds ISO times with a Z, Parquet real UTC timestamps.

ccxt (`download_ccxt`). Every value is checked before the exchange is contacted. Candles are fetched page by page
with `since` (a page starts one timeframe after the last candle of the one before), one call per the exchange's
`rateLimit` milliseconds at most, until --end (exclusive) or until the exchange has nothing later; a network error
is retried RETRIES times with a growing pause, then the download stops with a DataError. What was fetched is
written to --out every CHECKPOINT_PAGES pages and when the download stops or is interrupted, beside a record
`.OUT.pricegpt-download.json` of the request and of the file's hash: the same command run again continues each
symbol after its last bar, and the record is removed when the download completes. An existing --out is only ever
replaced with --force, or continued when it is such a partial download of the same request, unchanged since.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import show
from ..errors import ConfigError, DataError, OutputExistsError
from ..fileio import atomic_path, write_json
from .frame import iso, parse_time
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


def save_prices(frame: pd.DataFrame, out: str | Path, *, on_written=None) -> None:
    """Write a canonical frame atomically: as Parquet (real UTC timestamps) or else CSV (optionally .gz; times as
    ISO text with a Z). `on_written(tmp)` is called with the complete temporary file before it replaces `out`."""
    out = Path(out)
    with atomic_path(out) as tmp:
        if out.name.lower().endswith((".parquet", ".pq")):
            try:
                frame.to_parquet(tmp, index=False)
            except ImportError:
                raise DataError("writing Parquet needs pyarrow: `pip install 'pricegpt[parquet]'`") from None
        else:
            text = frame.assign(timestamp=frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
            text.to_csv(tmp, index=False, compression="gzip" if out.name.lower().endswith(".gz") else None)
        if on_written is not None:
            on_written(tmp)


# ------------------------------------------------------------------------------------------------------ ccxt
TIMEFRAME_UNITS_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800, "M": 2_592_000, "y": 31_536_000}
CHECKPOINT_PAGES = 20  # pages fetched between two writes of a partial download: what an interruption can lose
RETRIES = 3  # further tries of a call that failed with a network error
RECORD_SUFFIX = ".pricegpt-download.json"
RECORD_KIND = "pricegpt.partial-download"
_CANDLE = ("ms", "open", "high", "low", "close", "volume")


def timeframe_ms(timeframe) -> int:
    """A ccxt timeframe (1m, 15m, 1h, 4h, 1d, 1w, 1M ...) in milliseconds; ConfigError naming --timeframe."""
    match = re.fullmatch(r"([1-9][0-9]{0,5})([smhdwMy])", str(timeframe).strip())
    if match is None:
        raise ConfigError(f"--timeframe {show(timeframe)} is not a timeframe; write it like 1m, 15m, 1h, 4h, 1d or 1w")
    return int(match[1]) * TIMEFRAME_UNITS_S[match[2]] * 1000


@dataclass(frozen=True)
class CcxtRequest:
    """What to download: the part of a download that a resumed run must repeat exactly."""

    exchange: str
    symbols: tuple[str, ...]
    timeframe: str
    start: pd.Timestamp
    end: pd.Timestamp

    def as_json(self) -> dict:
        return {"source": "ccxt", "exchange": self.exchange, "symbols": list(self.symbols),
                "timeframe": self.timeframe, "start": iso(self.start), "end": iso(self.end)}


def ccxt_request(symbols, *, exchange, timeframe, start, end) -> CcxtRequest:
    """The checked request (ConfigError naming the flag otherwise); nothing is imported or contacted."""
    symbols = [str(s).strip() for s in (symbols or []) if str(s).strip()]
    if not symbols:
        raise ConfigError("--symbols is empty; give a comma-separated list of markets as the exchange writes them, "
                          "such as BTC/USDT,ETH/USDT")
    if not isinstance(exchange, str) or not exchange.strip():
        raise ConfigError("--exchange is missing; name a ccxt exchange such as binance, kraken or coinbase")
    timeframe_ms(timeframe)
    start, end = parse_time(start, "--start"), parse_time(end, "--end")
    if not start < end:
        raise ConfigError(f"--start {iso(start)} must be before --end {iso(end)}")
    return CcxtRequest(exchange.strip().lower(), tuple(dict.fromkeys(symbols)), str(timeframe).strip(), start, end)


def download_record(out: str | Path) -> Path:
    """The record beside a partial download `out` (module docstring)."""
    out = Path(out)
    return out.with_name(f".{out.name}{RECORD_SUFFIX}")


def download_ccxt(symbols: list[str], *, exchange: str, timeframe: str, start, end, out: str | Path,
                  overwrite: bool = False, limit: int | None = None) -> Path:
    """Download OHLCV candles of `symbols` (markets such as BTC/USDT) from a ccxt `exchange` at `timeframe`, from
    `start` up to `end` (exclusive), into `out` (.csv, .csv.gz or .parquet); resume an interrupted download of
    the same request (module docstring). limit: candles asked per call (None: the exchange's default page)."""
    request = ccxt_request(symbols, exchange=exchange, timeframe=timeframe, start=start, end=end)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit {show(limit)} must be a whole number >= 1 (candles per call) or None")
    out = Path(out)
    earlier, file_hash = _resumable(out, request, overwrite)
    try:
        import ccxt  # optional: only this download needs it
    except ImportError:
        raise DataError("downloading from crypto exchanges needs ccxt; install it with "
                        "`pip install 'pricegpt[ccxt]'`") from None
    client = _exchange(ccxt, request)
    return _CcxtDownload(ccxt, client, request, out, earlier, file_hash, limit).run()


def _resumable(out: Path, request: CcxtRequest, overwrite: bool) -> tuple[pd.DataFrame | None, str | None]:
    """(the bars of an interrupted download of `request` in `out`, its hash), (None, None) to start afresh, or an
    OutputExistsError when `out` holds anything else and `overwrite` is off."""
    if out.is_dir():
        raise OutputExistsError(f"{out} is a folder; --out must name a file (.csv, .csv.gz or .parquet)")
    if overwrite or not out.exists():
        return None, None
    record = download_record(out)
    try:
        meta = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("kind") != RECORD_KIND:
        raise OutputExistsError(f"{out} already exists; choose another --out or pass --force")
    if meta.get("request") != request.as_json():
        raise OutputExistsError(f"{out} is an unfinished download of another request ({show(meta.get('request'))});"
                                " run that command again to finish it, or pass --force to start this one over")
    file_hash = _sha256(out)
    if file_hash not in meta.get("hashes", []):
        raise OutputExistsError(f"{out} changed since pricegpt's interrupted download wrote it; choose another "
                                "--out or pass --force to start over")
    if out.name.lower().endswith((".parquet", ".pq")):
        earlier = pd.read_parquet(out)
    else:
        earlier = pd.read_csv(out, compression="gzip" if out.name.lower().endswith(".gz") else None)
    earlier["timestamp"] = pd.to_datetime(earlier["timestamp"], utc=True).dt.as_unit("ns")
    earlier["symbol"] = earlier["symbol"].astype(str)
    log.info(f"{out}: continuing an interrupted download ({len(earlier):,} bars so far)")
    return earlier, file_hash


def _exchange(ccxt, request: CcxtRequest):
    """The ccxt client of the request's exchange, checked to offer candles at its timeframe (no network)."""
    names = list(getattr(ccxt, "exchanges", []))
    if request.exchange not in names or not hasattr(ccxt, request.exchange):
        known = [n for n in ("binance", "bybit", "coinbase", "kraken", "okx") if n in names] or sorted(names)[:5]
        raise ConfigError(f"--exchange {show(request.exchange)} is not an exchange ccxt knows; e.g. "
                          f"{', '.join(known)} (ccxt.exchanges lists all {len(names)})")
    try:
        client = getattr(ccxt, request.exchange)({"enableRateLimit": False})  # we keep to rateLimit ourselves
    except ccxt.BaseError as err:
        raise DataError(f"cannot set up exchange {request.exchange} ({type(err).__name__}: {err})") from None
    if not (getattr(client, "has", None) or {}).get("fetchOHLCV"):
        raise ConfigError(f"--exchange {request.exchange} offers no OHLCV candles through ccxt; choose another")
    timeframes = getattr(client, "timeframes", None) or {}
    if timeframes and request.timeframe not in timeframes:
        raise ConfigError(f"--timeframe {request.timeframe} is not offered by {request.exchange}; it offers "
                          f"{', '.join(map(str, timeframes))}")
    return client


class _CcxtDownload:
    """One download: pages of candles per symbol, checkpoints of what was fetched, the final canonical file."""

    def __init__(self, ccxt, client, request: CcxtRequest, out: Path, earlier: pd.DataFrame | None,
                 file_hash: str | None, limit: int | None):
        self.ccxt, self.client, self.request, self.out, self.limit = ccxt, client, request, out, limit
        self.earlier, self.file_hash = earlier, file_hash
        self.candles: dict[str, list] = {symbol: [] for symbol in request.symbols}
        rate_ms = getattr(client, "rateLimit", None)
        ok = isinstance(rate_ms, (int, float)) and not isinstance(rate_ms, bool) and math.isfinite(rate_ms)
        self.interval_s = max(0.0, float(rate_ms) / 1000) if ok else 1.0
        self.next_call = 0.0
        self.pages = 0

    def run(self) -> Path:
        try:
            for symbol in self.request.symbols:
                self._symbol(symbol)
        except DataError as err:
            if self._checkpoint_quietly():
                raise DataError(f"{err}; the bars fetched so far are in {self.out}: run the same command again "
                                "to continue") from None
            raise
        except BaseException:  # Ctrl-C, or a bug: keep what was fetched for the next run
            self._checkpoint_quietly()
            raise
        frame = self._frame()
        counts = frame.groupby("symbol")["timestamp"].size() if len(frame) else pd.Series(dtype=int)
        for symbol in self.request.symbols:
            if counts.get(symbol, 0) < 2:
                log.warning(f"{self.request.exchange} returned {counts.get(symbol, 0)} candle(s) for {symbol} "
                            "(at least 2 are needed); it is left out")
        frame = frame[frame["symbol"].map(counts).fillna(0).to_numpy() >= 2]
        if frame.empty:
            raise DataError(f"{self.request.exchange} returned no candles for {', '.join(self.request.symbols)} "
                            f"at timeframe {self.request.timeframe} between {iso(self.request.start)} and "
                            f"{iso(self.request.end)}; check the symbols (as the exchange writes them, e.g. "
                            "BTC/USDT), the timeframe and the dates")
        frame = _finish(frame.reset_index(drop=True), LoadReport(source=f"ccxt:{self.request.exchange}"))
        save_prices(frame, self.out, on_written=self._record)
        download_record(self.out).unlink(missing_ok=True)
        return self.out

    def _symbol(self, symbol: str) -> None:
        """Page through one symbol's candles from after its last bar already fetched up to the end."""
        step = timeframe_ms(self.request.timeframe)
        since = _ms(self.request.start)
        end = _ms(self.request.end)
        if self.earlier is not None:
            mine = self.earlier.loc[self.earlier["symbol"] == symbol, "timestamp"]
            if len(mine):
                since = max(since, _ms(mine.max()) + step)
        while since < end:
            page = self._fetch(symbol, since)
            fresh = [c for c in page if c[0] >= since]  # some exchanges repeat the candle before `since`
            if not fresh:
                break  # nothing later: the exchange's data end here
            self.candles[symbol].extend(c for c in fresh if c[0] < end)
            since = max(c[0] for c in fresh) + step
            self.pages += 1
            if self.pages % CHECKPOINT_PAGES == 0:
                self._checkpoint()
        log.info(f"{self.request.exchange} {symbol}: {len(self.candles[symbol]):,} new candle(s)")

    def _fetch(self, symbol: str, since: int) -> list[list]:
        """One page of candles [ms, open, high, low, close, volume], after waiting out the rate limit; a network
        error is retried RETRIES times with a doubling pause."""
        ccxt, error = self.ccxt, None
        for attempt in range(RETRIES + 1):
            wait = self.next_call - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                page = self.client.fetch_ohlcv(symbol, self.request.timeframe, since=since, limit=self.limit)
            except ccxt.BadSymbol:
                raise DataError(f"{self.request.exchange} has no market {show(symbol)}; write symbols as the "
                                "exchange does, such as BTC/USDT") from None
            except ccxt.NetworkError as err:
                error = err
                time.sleep(self.interval_s * 2 ** attempt)  # the exchange may be throttling us: back off
                continue
            except ccxt.BaseError as err:
                raise DataError(f"{self.request.exchange} refused the candles of {symbol} ({type(err).__name__}: "
                                f"{err}); check the symbol, the timeframe and the dates") from None
            finally:
                self.next_call = time.monotonic() + self.interval_s
            return _candles(page, self.request.exchange, symbol)
        raise DataError(f"download from {self.request.exchange} failed after {RETRIES + 1} tries "
                        f"({type(error).__name__}: {error}); check the network connection")

    def _frame(self) -> pd.DataFrame:
        """Every bar fetched, this run's and an earlier run's, sorted, one row per (symbol, timestamp)."""
        parts = [] if self.earlier is None else [self.earlier]
        for symbol, rows in self.candles.items():
            if rows:
                part = pd.DataFrame(rows, columns=list(_CANDLE))
                part.insert(0, "symbol", symbol)
                part.insert(0, "timestamp", pd.to_datetime(part.pop("ms"), unit="ms", utc=True).dt.as_unit("ns"))
                parts.append(part)
        if not parts:
            return pd.DataFrame(columns=list(CANONICAL_COLUMNS))
        frame = pd.concat(parts, ignore_index=True)
        for col in ("open", "high", "low", "close", "volume"):
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(np.float64)
        frame = frame[np.isfinite(frame["close"]) & (frame["close"] > 0)]
        frame = frame.drop_duplicates(["symbol", "timestamp"], keep="last").sort_values(["symbol", "timestamp"])
        return frame[list(CANONICAL_COLUMNS)].reset_index(drop=True)

    def _checkpoint(self) -> None:
        """Write what was fetched so far to --out, with the record that lets the same command continue it."""
        frame = self._frame()
        if len(frame):
            save_prices(frame, self.out, on_written=self._record)

    def _checkpoint_quietly(self) -> bool:
        """Checkpoint while an error is on its way out; whether a partial download is now in --out."""
        if not any(self.candles.values()):
            return self.earlier is not None
        try:
            self._checkpoint()
        except Exception as err:  # the error on its way out matters more than this one
            log.warning(f"could not save the partial download to {self.out} ({err})")
            return False
        return True

    def _record(self, tmp: Path) -> None:
        """Before the new file replaces --out: record the request and the hashes of both (a kill between the two
        renames leaves either file, and both are this download's)."""
        new_hash = _sha256(tmp)
        hashes = [h for h in (self.file_hash, new_hash) if h is not None]
        write_json(download_record(self.out), {"kind": RECORD_KIND, "request": self.request.as_json(),
                                               "hashes": hashes})
        self.file_hash = new_hash


def _candles(page, exchange: str, symbol: str) -> list[list]:
    """A page of candles as [ms (int), open, high, low, close, volume] rows; DataError if it is not one."""
    if not isinstance(page, (list, tuple)):
        raise DataError(f"{exchange} answered the candles of {symbol} with {type(page).__name__}, not a list")
    rows = []
    for candle in page:
        if not isinstance(candle, (list, tuple)) or len(candle) < 5 or not isinstance(candle[0], (int, float)):
            raise DataError(f"{exchange} sent a malformed candle for {symbol}: {show(candle)}")
        rows.append([int(candle[0]), *candle[1:5], candle[5] if len(candle) > 5 else None])
    return rows


def _ms(ts) -> int:
    return int(pd.Timestamp(ts).value // 1_000_000)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
