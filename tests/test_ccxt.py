"""`pricegpt data download --source ccxt`: pagination, the end cut, the rate limit, resuming an interrupted
download, never replacing someone else's file, and every flag checked before the exchange is contacted.

Only the network is stubbed: tests/stubs/ccxt is a fake `ccxt` module (a deterministic 24x7 exchange that pages
100 candles per call), put in sys.modules here and on PYTHONPATH for the real command line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_user_error, run_cli
from pricegpt.data import load_prices
from pricegpt.data.download import RETRIES, download_ccxt, download_record
from pricegpt.errors import DataError, OutputExistsError

STUBS = Path(__file__).parent / "stubs"
START, END = "2024-01-02", "2024-01-12 05:00"  # 245 hourly bars per symbol: pages of 100, 100 and 45 (+ cut)
SYMBOLS = ["BTC/USDT", "ETH/USDT"]


@pytest.fixture
def fake_ccxt(monkeypatch):
    """A fresh fake ccxt module (its own call log) in sys.modules."""
    spec = importlib.util.spec_from_file_location("ccxt", STUBS / "ccxt" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "ccxt", module)
    monkeypatch.delenv("PRICEGPT_FAKE_CCXT_FAIL_AFTER", raising=False)
    monkeypatch.delenv("PRICEGPT_FAKE_CCXT_LOG", raising=False)
    return module


def _download(out, **kwargs):
    args = {"exchange": "fakex", "timeframe": "1h", "start": START, "end": END, "out": out, **kwargs}
    return download_ccxt(args.pop("symbols", SYMBOLS), **args)


def _expected_times():
    return pd.date_range("2024-01-02", "2024-01-12 04:00", freq="1h", tz="UTC")


def test_pages_through_since_stops_at_the_end_and_keeps_the_rate_limit(fake_ccxt, tmp_path):
    out = _download(tmp_path / "crypto.csv")
    frame = load_prices(out)
    assert list(frame.columns) == ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
    for symbol in SYMBOLS:
        times = pd.DatetimeIndex(frame.loc[frame["symbol"] == symbol, "timestamp"])
        assert times.equals(_expected_times()), symbol  # every bar once, none at or after --end
    calls = fake_ccxt.CALLS
    start_ms = int(pd.Timestamp(START, tz="UTC").value // 10**6)
    hour = 3_600_000
    assert [(c["symbol"], c["since"]) for c in calls] == [
        (s, start_ms + k * 100 * hour) for s in SYMBOLS for k in range(3)]  # each page after the last candle
    gaps = np.diff([c["at"] for c in calls])
    assert gaps.min() >= fake_ccxt.fakex.rateLimit / 1000 * 0.95, gaps  # one call per rateLimit at most
    assert not download_record(out).exists()


def test_stops_where_the_exchange_has_no_later_candles(fake_ccxt, tmp_path):
    out = _download(tmp_path / "daily.csv", symbols=["ETH/USDT"], timeframe="1d", end="2024-06-01")
    frame = load_prices(out)
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2024-01-02", tz="UTC")
    assert frame["timestamp"].iloc[-1] == pd.Timestamp("2024-03-01", tz="UTC")  # the fake exchange's last day
    assert len(fake_ccxt.CALLS) == 2  # one page of 60 days, then an empty one


def test_an_interrupted_download_continues_after_its_last_bar(fake_ccxt, tmp_path, monkeypatch):
    complete = _download(tmp_path / "complete.csv")
    fake_ccxt.CALLS.clear()
    out = tmp_path / "crypto.csv"
    monkeypatch.setenv("PRICEGPT_FAKE_CCXT_FAIL_AFTER", "4")  # BTC's 3 pages and ETH's first, then the line drops
    with pytest.raises(DataError, match="run the same command again"):
        _download(out)
    assert len(fake_ccxt.CALLS) == 4 + RETRIES + 1
    partial = load_prices(out)
    assert partial.groupby("symbol").size().to_dict() == {"BTC/USDT": 245, "ETH/USDT": 100}
    assert download_record(out).is_file()

    monkeypatch.delenv("PRICEGPT_FAKE_CCXT_FAIL_AFTER")
    fake_ccxt.CALLS.clear()
    _download(out)
    eth_resume = pd.Timestamp("2024-01-02", tz="UTC") + pd.Timedelta(hours=100)
    # BTC was complete (its next bar would be at --end): no call; ETH continues after its 100th bar
    assert [(c["symbol"], c["since"]) for c in fake_ccxt.CALLS] == [
        ("ETH/USDT", int(eth_resume.value // 10**6)), ("ETH/USDT", int(eth_resume.value // 10**6) + 100 * 3_600_000)]
    assert out.read_bytes() == complete.read_bytes()
    assert not download_record(out).exists()


def test_never_replaces_a_file_it_did_not_make(fake_ccxt, tmp_path, monkeypatch):
    mine = tmp_path / "mine.csv"
    mine.write_text("my own notes\n")
    with pytest.raises(OutputExistsError, match="already exists"):
        _download(mine)
    assert mine.read_text() == "my own notes\n"

    out = tmp_path / "crypto.csv"
    monkeypatch.setenv("PRICEGPT_FAKE_CCXT_FAIL_AFTER", "1")
    with pytest.raises(DataError):
        _download(out)
    monkeypatch.delenv("PRICEGPT_FAKE_CCXT_FAIL_AFTER")
    before = out.read_bytes()
    with pytest.raises(OutputExistsError, match="another request"):
        _download(out, timeframe="4h")  # an unfinished download of 1h bars is not continued with 4h bars
    out.write_bytes(before.replace(b"BTC/USDT", b"XBT/USDT"))  # edited by hand since
    with pytest.raises(OutputExistsError, match="changed since"):
        _download(out)
    _download(out, overwrite=True)  # --force starts over
    assert load_prices(out).groupby("symbol").size().to_dict() == {"BTC/USDT": 245, "ETH/USDT": 245}
    assert not download_record(out).exists()


def test_parquet_output_holds_real_utc_timestamps(fake_ccxt, tmp_path):
    out = _download(tmp_path / "crypto.parquet", symbols=["BTC/USDT"])
    raw = pd.read_parquet(out)
    assert isinstance(raw["timestamp"].dtype, pd.DatetimeTZDtype) and str(raw["timestamp"].dt.tz) == "UTC"
    assert pd.DatetimeIndex(load_prices(out)["timestamp"]).equals(_expected_times())


# ---------------------------------------------------------------------------------------------- the real CLI
def _cli(tmp_path, *flags, env=None):
    args = {"--source": "ccxt", "--exchange": "fakex", "--symbols": "BTC/USDT,ETH/USDT", "--timeframe": "1h",
            "--start": "2024-01-02", "--end": "2024-01-04", "--out": tmp_path / "crypto.csv"}
    for flag, value in zip(flags[::2], flags[1::2]):
        args[flag] = value
    argv = [item for flag, value in args.items() if value is not None for item in (flag, value)]
    log = tmp_path / "calls.jsonl"
    result = run_cli("data", "download", *argv,
                     env={"PYTHONPATH": str(STUBS), "PRICEGPT_FAKE_CCXT_LOG": str(log), **(env or {})})
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def test_cli_downloads_and_reports_a_dropped_connection(tmp_path):
    result, calls = _cli(tmp_path, env={"PRICEGPT_FAKE_CCXT_FAIL_AFTER": "0"})
    assert_user_error(result, "fakex", "network")
    assert not (tmp_path / "crypto.csv").exists()  # nothing fetched, nothing written

    (tmp_path / "calls.jsonl").unlink()
    result, calls = _cli(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    frame = load_prices(tmp_path / "crypto.csv")
    assert frame.groupby("symbol").size().to_dict() == {"BTC/USDT": 48, "ETH/USDT": 48}
    assert len(calls) == 2  # one page of 100 per symbol covers the two days
    assert_user_error(_cli(tmp_path)[0], "already exists")  # complete: a rerun does not touch it


@pytest.mark.parametrize("flags, fragments", [
    (("--timeframe", "7x"), ("--timeframe", "1h")),
    (("--timeframe", "2h"), ("--timeframe 2h", "offers")),
    (("--start", "2024-02-01", "--end", "2024-01-01"), ("--start", "before --end")),
    (("--end", "someday"), ("--end", "date")),
    (("--symbols", " , "), ("--symbols", "empty")),
    (("--exchange", None), ("--exchange", "missing")),
    (("--exchange", "nosuch"), ("nosuch", "fakex")),
    (("--exchange", "nocandles"), ("nocandles", "ohlcv")),
])
def test_cli_checks_every_flag_before_any_network_call(tmp_path, flags, fragments):
    result, calls = _cli(tmp_path, *flags)
    assert_user_error(result, *fragments)
    assert calls == [] and not (tmp_path / "crypto.csv").exists()


def test_cli_without_ccxt_says_how_to_install_it(tmp_path):
    missing = tmp_path / "no_ccxt"
    missing.mkdir()
    (missing / "ccxt.py").write_text('raise ImportError("No module named \'ccxt\'")\n')
    result = run_cli("data", "download", "--source", "ccxt", "--exchange", "binance", "--symbols", "BTC/USDT",
                     "--start", "2024-01-01", "--end", "2024-01-02", "--out", tmp_path / "x.csv",
                     env={"PYTHONPATH": str(missing)})
    assert_user_error(result, "pip install 'pricegpt[ccxt]'")
