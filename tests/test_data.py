"""Reading prices: the formats users bring, the validation policy, splits, samples and the `data` CLI."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pandas as pd
import pytest

from conftest import assert_user_error, run_cli
from pricegpt.data import describe, load_prices, log_returns, read_prices, time_splits
from pricegpt.errors import ConfigError, DataError


def write(path, text):
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------- formats
def test_yahoo_style_us_dates_uses_adjusted_close(tmp_path, caplog):
    path = write(tmp_path / "SPX.csv", "Date,Open,High,Low,Close,Adj Close,Volume\n"
                 "1/4/1999,100,110,90,105,52.5,1000\n1/5/1999,105,112,100,110,55,1200\n"
                 "12/31/1999,110,115,105,112,56,900\n")
    with caplog.at_level(logging.WARNING, logger="pricegpt"):
        frame = load_prices(path)
    assert list(frame.columns) == ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
    assert frame["symbol"].unique().tolist() == ["SPX"]
    assert frame["timestamp"].tolist() == [pd.Timestamp("1999-01-04", tz="UTC"), pd.Timestamp("1999-01-05", tz="UTC"),
                                           pd.Timestamp("1999-12-31", tz="UTC")]
    np.testing.assert_allclose(frame["close"], [52.5, 55, 56])
    np.testing.assert_allclose(frame["open"], [50, 52.5, 55])  # scaled by the adjustment factor
    assert "adjusted close" in caplog.text
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_folder_of_close_only_files(tmp_path):
    folder = tmp_path / "stocks"
    folder.mkdir()
    write(folder / "AAA.csv", "Date,Close\n2020-01-02,10\n2020-01-03,11\n2020-01-06,12\n")
    write(folder / "BBB.csv", "Date,Close\n2020-01-02,20\n2020-01-03,21\n")
    write(folder / "notes.md", "not data")
    frame, report = read_prices(folder)
    assert frame.groupby("symbol").size().to_dict() == {"AAA": 3, "BBB": 2}
    assert list(frame.columns) == ["timestamp", "symbol", "close"]
    assert report.files["AAA"].endswith("AAA.csv")


def test_semicolon_lowercase_unix_millis_and_tab_seconds(tmp_path):
    ms = write(tmp_path / "fx.csv", "timestamp;close\n1577836800000;1.12\n1577838600000;1.13\n1577840400000;1.11\n")
    frame = load_prices(ms)
    assert frame["timestamp"].iloc[1] == pd.Timestamp("2020-01-01 00:30", tz="UTC")
    sec = write(tmp_path / "fx2.tsv", "time\tCLOSE\n1577836800\t1.12\n1577838600\t1.13\n")
    assert load_prices(sec)["timestamp"].iloc[1] == pd.Timestamp("2020-01-01 00:30", tz="UTC")


def test_time_zones_are_converted_to_utc(tmp_path):
    path = write(tmp_path / "x.csv", "datetime,close\n2020-01-01 09:30:00-05:00,1\n2020-01-01 10:30:00-05:00,2\n")
    frame = load_prices(path)
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2020-01-01 14:30", tz="UTC")


def test_long_format_with_ticker_column_gz_and_parquet(tmp_path):
    text = "ticker,date,close\nB,2020-01-02,3\nA,2020-01-03,2\nA,2020-01-02,1\nB,2020-01-03,4\n"
    gz = tmp_path / "long.csv.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    frame = load_prices(gz)
    assert frame["symbol"].tolist() == ["A", "A", "B", "B"]
    assert frame["close"].tolist() == [1, 2, 3, 4]  # sorted by (symbol, timestamp)
    pytest.importorskip("pyarrow")
    pq = tmp_path / "long.parquet"
    pd.read_csv(gz).to_parquet(pq)
    pd.testing.assert_frame_equal(load_prices(pq), frame)


# ------------------------------------------------------------------------------------------------- policy
def test_empty_cells_dropped_with_count_duplicates_keep_last_unsorted_sorted(tmp_path, caplog):
    path = write(tmp_path / "x.csv", "date,close\n2020-01-03,3\n2020-01-01,1\n2020-01-02,\n"
                 "2020-01-04,4\n2020-01-04,5\n")
    with caplog.at_level(logging.WARNING, logger="pricegpt"):
        frame, report = read_prices(path)
    assert frame["close"].tolist() == [1, 3, 5]
    assert "dropped 1 row" in caplog.text and "duplicate" in caplog.text
    assert report.dropped == {"x": 2}


@pytest.mark.parametrize("name,text,fragments", [
    ("text.csv", "date,close\n2020-01-01,1\n2020-01-02,abc\n", ["line 3", "'close'", "abc"]),
    ("baddate.csv", "date,close\n2020-01-01,1\nyesterday,2\n", ["line 3", "'date'", "yesterday"]),
    ("zero.csv", "date,close\n2020-01-01,1\n2020-01-02,0\n", ["line 3", "'close'", "positive"]),
    ("negative.csv", "date,open,close\n2020-01-01,1,1\n2020-01-02,-2,2\n", ["line 3", "'open'"]),
    ("inf.csv", "date,close\n2020-01-01,1\n2020-01-02,inf\n", ["line 3", "infinite"]),
    ("noclose.csv", "date,open\n2020-01-01,1\n2020-01-02,2\n", ["noclose.csv", "no close column"]),
    ("empty.csv", "", ["empty.csv", "empty"]),
    ("header.csv", "date,close\n", ["header.csv", "no rows"]),
    ("single.csv", "date,close\n2020-01-01,1\n", ["single.csv", "1 usable bar"]),
])
def test_bad_files_are_clean_cli_errors(tmp_path, name, text, fragments):
    path = write(tmp_path / name, text)
    with pytest.raises(DataError):
        load_prices(path)
    assert_user_error(run_cli("data", "info", path), *fragments)


def test_binary_garbage_and_empty_folder_are_clean_cli_errors(tmp_path):
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(bytes(range(256)) * 8)
    assert_user_error(run_cli("data", "info", garbage), "garbage.csv", "binary")
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "readme.txt.bak").write_text("x")
    assert_user_error(run_cli("data", "info", folder), "no data files")
    assert_user_error(run_cli("data", "info", tmp_path / "missing.csv"), "no such file")
    assert_user_error(run_cli("data", "info", "sample:nope"), "unknown sample")


# ------------------------------------------------------------------------------------------------- samples
def test_samples_are_real_and_listed():
    result = run_cli("data", "list")
    assert result.returncode == 0, result.stderr
    assert "sample:stocks-daily" in result.stdout and "sample:eurusd-hourly" in result.stdout
    info = run_cli("data", "info", "sample:stocks-daily")
    assert info.returncode == 0, info.stderr
    frame = load_prices("sample:stocks-daily")
    assert sorted(frame["symbol"].unique()) == ["AAPL", "GOOG", "IBM", "MSFT"]
    assert f"total: {len(frame)} bars" in info.stdout
    for symbol, n in frame.groupby("symbol").size().items():
        assert any(line.split()[:2] == [symbol, str(n)] for line in info.stdout.splitlines())
    fx = load_prices("sample:eurusd-hourly")
    assert fx["timestamp"].dt.year.unique().tolist() == [2017]
    assert (fx["timestamp"].diff().dropna().median()) == pd.Timedelta("1h")


def test_log_returns(stocks_frame):
    returns = log_returns(stocks_frame)
    assert len(returns) == len(stocks_frame) - stocks_frame["symbol"].nunique()
    aapl = stocks_frame[stocks_frame["symbol"] == "AAPL"]["close"].to_numpy()
    np.testing.assert_allclose(returns[returns["symbol"] == "AAPL"]["log_return"], np.diff(np.log(aapl)))


# ------------------------------------------------------------------------------------------------- splits
def test_default_splits_are_70_15_15_of_the_union_span(stocks_frame):
    splits = time_splits(stocks_frame)
    start, end = stocks_frame["timestamp"].min(), stocks_frame["timestamp"].max()
    assert abs((splits.train_end - start) / (end - start) - 0.70) < 1e-6
    assert abs((splits.val_end - start) / (end - start) - 0.85) < 1e-6
    labels = splits.label(stocks_frame["timestamp"])
    assert set(np.unique(labels)) == {0, 1, 2}
    # the same cutoffs for all symbols: every symbol's labels are monotone in time
    for _, group in stocks_frame.assign(label=labels).groupby("symbol"):
        assert np.all(np.diff(group["label"].to_numpy()) >= 0)


def test_given_splits_are_validated(stocks_frame):
    splits = time_splits(stocks_frame, train_end="2009-12-31", val_end="2011-12-31")
    assert splits.train_end == pd.Timestamp("2009-12-31", tz="UTC")
    with pytest.raises(ConfigError):
        time_splits(stocks_frame, train_end="2012-01-01", val_end="2011-01-01")
    with pytest.raises(ConfigError):
        time_splits(stocks_frame, train_end="2030-01-01")
    with pytest.raises(ConfigError):
        time_splits(stocks_frame, train_end="not a date")


def test_describe_counts_gaps():
    ts = pd.to_datetime(["2020-01-01", "2020-01-02", "2020-01-03", "2020-02-01", "2020-02-02"], utc=True)
    frame = pd.DataFrame({"timestamp": ts, "symbol": "X", "close": [1.0, 2, 3, 4, 5]})
    row = describe(frame).iloc[0]
    assert row["bars"] == 5 and row["gaps"] == 1 and row["median_interval"] == "1d"


# ------------------------------------------------------------------------------------------------ download
STUBS = str(__import__("pathlib").Path(__file__).parent / "stubs")


def test_download_writes_the_canonical_frame_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "universe.csv"
    args = ("data", "download", "--tickers", "AAPL,MSFT", "--interval", "1d", "--start", "2010-01-01",
            "--end", "2011-01-01", "--out", out)
    result = run_cli(*args, env={"PYTHONPATH": STUBS})
    assert result.returncode == 0, result.stderr
    frame = load_prices(out)
    assert sorted(frame["symbol"].unique()) == ["AAPL", "MSFT"]
    assert frame["timestamp"].dt.year.unique().tolist() == [2010]
    before = out.read_bytes()
    assert_user_error(run_cli(*args, env={"PYTHONPATH": STUBS}), "already exists")
    assert out.read_bytes() == before


def test_download_offline_is_a_clear_error(tmp_path):
    out = tmp_path / "u.csv"
    result = run_cli("data", "download", "--tickers", "AAPL", "--start", "2024-01-01", "--end", "2024-02-01",
                     "--out", out, env={"PYTHONPATH": STUBS, "PRICEGPT_FAKE_YF": "offline"})
    assert_user_error(result, "download from yahoo finance failed", "network")
    assert not out.exists()


def test_an_open_high_or_low_column_empty_in_every_row_is_read_as_absent(tmp_path, caplog):
    frame = load_prices("sample:stocks-daily")
    aapl = frame[frame["symbol"] == "AAPL"].copy()
    aapl["high"] = float("nan")
    aapl.to_csv(tmp_path / "aapl.csv", index=False)
    with caplog.at_level("WARNING", logger="pricegpt"):
        loaded = load_prices(tmp_path / "aapl.csv")
    assert len(loaded) == len(aapl) and "high" not in loaded.columns and "low" in loaded.columns
    assert "column 'high' is empty in every row" in caplog.text
