"""Dates are never silently wrong, and a bad price file is blamed on the right place.

One format per timestamp column (day-first read and said, ambiguity warned, mixed formats refused),
--date-format, separate date and time columns, Excel serials, duplicate symbols in a folder, line numbers with
blank lines, the adjusted close, UTF-16, DataFrames and symbols that cannot be file names."""

from __future__ import annotations

import logging
import time

import pandas as pd
import pytest

from conftest import assert_user_error, run_cli
from pricegpt.data import load_prices, read_prices
from pricegpt.errors import DataError, PriceGPTError


def write(path, text: str):
    path.write_text(text)
    return path


def price_file(path, stamps: list[str], header: str = "Date,Close"):
    rows = "".join(f"{stamp},{100 + i}\n" for i, stamp in enumerate(stamps))
    return write(path, f"{header}\n{rows}")


DAYS = pd.date_range("2020-01-02", periods=130, freq="D", tz="UTC")  # January .. May


# ------------------------------------------------------------------------------------------- one format a column
@pytest.mark.parametrize("fmt", ["%d/%m/%Y", "%d.%m.%Y", "%d-%m-%Y %H:%M"])
def test_a_day_first_file_is_read_day_first_and_said_once(tmp_path, caplog, fmt):
    path = price_file(tmp_path / "eu.csv", [t.strftime(fmt) for t in DAYS])
    with caplog.at_level(logging.WARNING, logger="pricegpt"):
        frame = load_prices(path)
    assert frame["timestamp"].tolist() == DAYS.tolist()  # January to May, not scrambled up to December
    notes = [r.getMessage() for r in caplog.records if "day-first" in r.getMessage()]
    assert len(notes) == 1 and "'Date'" in notes[0] and "13" in notes[0], caplog.text


def test_an_ambiguous_file_is_month_first_with_a_warning_naming_the_flag(tmp_path, caplog):
    path = price_file(tmp_path / "amb.csv", ["01/02/2020", "03/04/2020", "05/06/2020"])
    with caplog.at_level(logging.WARNING, logger="pricegpt"):
        frame = load_prices(path)
    assert frame["timestamp"].dt.month.tolist() == [1, 3, 5]
    assert "ambiguous" in caplog.text and "--date-format %d/%m/%Y" in caplog.text
    # the flag decides, and then nothing is guessed
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pricegpt"):
        frame = load_prices(path, date_format="%d/%m/%Y")
    assert frame["timestamp"].dt.month.tolist() == [2, 4, 6]
    assert "ambiguous" not in caplog.text


@pytest.mark.parametrize("stamps,fragments", [
    (["2020-01-02", "2020-01-03", "01/04/2020"], ["line 2", "line 4", "mixes date formats", "'Date'"]),
    (["13/01/2020", "14/01/2020", "01/15/2020"], ["line 2", "line 4", "day-first and month-first"]),
    (["2020-01-02 10:00:00+01:00", "2020-01-02 11:00:00"], ["line 2", "line 3", "mixes"]),
])
def test_a_column_mixing_formats_is_refused_naming_the_lines(tmp_path, stamps, fragments):
    path = price_file(tmp_path / "mixed.csv", stamps)
    with pytest.raises(DataError) as err:
        load_prices(path)
    for fragment in fragments:
        assert fragment.lower() in str(err.value).lower(), err.value
    assert "mixed.csv" in str(err.value)


def test_what_worked_still_works(tmp_path):
    cases = {  # text of the timestamp column -> the UTC timestamps
        "1/4/1999|12/31/1999": ["1999-01-04", "1999-12-31"],
        "2020-01-02T09:30:00-05:00|2020-01-02T10:30:00.5-05:00": ["2020-01-02 14:30", "2020-01-02 15:30:00.5"],
        "2020-01-02 09:30|2020-01-02 10:30": ["2020-01-02 09:30", "2020-01-02 10:30"],
        "1577836800|1577840400": ["2020-01-01 00:00", "2020-01-01 01:00"],
        "1577836800000|1577840400000": ["2020-01-01 00:00", "2020-01-01 01:00"],
        "20200102|20200103": ["2020-01-02", "2020-01-03"],
        "Jan 2 2020|Feb 3 2020": ["2020-01-02", "2020-02-03"],
        "1/2/2020 1:30 PM|1/2/2020 12:15 AM": ["2020-01-02 13:30", "2020-01-02 00:15"],
    }
    for k, (column, expected) in enumerate(cases.items()):
        frame = load_prices(price_file(tmp_path / f"c{k}.csv", column.split("|")))
        expected = sorted(pd.to_datetime(expected, utc=True, format="ISO8601").tolist())
        assert frame["timestamp"].tolist() == expected, column
        assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"


def test_a_large_file_is_read_in_seconds(tmp_path):
    n = 300_000
    stamps = pd.date_range("2000-01-01", periods=n, freq="min")
    rows = "".join(f"{stamp},1.5\n" for stamp in stamps.strftime("%d/%m/%Y %H:%M"))
    path = write(tmp_path / "big.csv", "Date,Close\n" + rows)
    start = time.perf_counter()
    frame = load_prices(path)
    elapsed = time.perf_counter() - start
    assert (frame["timestamp"].to_numpy() == stamps.tz_localize("UTC").to_numpy()).all()
    assert elapsed < 15, f"{elapsed:.1f} s for {n} rows"  # about 1 s here; value-by-value parsing takes minutes


# ----------------------------------------------------------------------------------------------- --date-format
def test_date_format_mismatch_names_file_line_column_and_format(tmp_path):
    path = price_file(tmp_path / "x.csv", ["02/01/2020", "03/01/2020", "2020-01-04"])
    with pytest.raises(DataError) as err:
        load_prices(path, date_format="%d/%m/%Y")
    for fragment in ("x.csv", "line 4", "'Date'", "%d/%m/%Y", "2020-01-04"):
        assert fragment in str(err.value)
    assert_user_error(run_cli("data", "info", path, "--date-format", "%d/%m/%Y"), "line 4", "%d/%m/%Y")
    ok = run_cli("data", "info", price_file(tmp_path / "y.csv", ["02/01/2020", "03/01/2020"]), "--date-format",
                 "%d/%m/%Y")
    assert ok.returncode == 0, ok.stderr
    assert "2020-01-02T00:00:00Z" in ok.stdout and "2020-01-03T00:00:00Z" in ok.stdout


# ---------------------------------------------------------------------------------------- separate date and time
def test_date_and_time_columns_are_combined(tmp_path):
    hours = pd.date_range("2020-01-02", periods=240, freq="h", tz="UTC")
    shapes = {
        "mt4.csv": "Date,Time,Open,High,Low,Close,Volume\n"
                   + "".join(f"{t:%Y.%m.%d},{t:%H:%M},1,2,0.5,1.5,10\n" for t in hours),
        "mt5.csv": "<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\n"
                   + "".join(f"{t:%Y.%m.%d}\t{t:%H:%M:%S}\t1\t2\t0.5\t1.5\t10\n" for t in hours),
        "digits.csv": "<TICKER>,<DTYYYYMMDD>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>\n"
                      + "".join(f"EURUSD,{t:%Y%m%d},{t:%H%M%S},1,2,0.5,1.5,10\n" for t in hours),
    }
    for name, text in shapes.items():
        frame, report = read_prices(write(tmp_path / name, text))
        assert frame["timestamp"].tolist() == hours.tolist(), name  # 240 hourly rows stay 240
        assert sum(report.dropped.values()) == 0
    bad = write(tmp_path / "badtime.csv", "Date,Time,Close\n2020-01-02,09:30,1\n2020-01-02,10:75,2\n")
    assert_user_error(run_cli("data", "info", bad), "line 3", "'Time'", "10:75")


# ------------------------------------------------------------------------------------------------ Excel serials
def test_excel_serial_days_are_refused_with_the_conversion(tmp_path):
    path = price_file(tmp_path / "excel.csv", ["43831", "43832", "43833"])
    assert_user_error(run_cli("data", "info", path), "excel.csv", "'Date'", "Excel serial",
                      "origin='1899-12-30'")


# --------------------------------------------------------------------------------------------- folders, symbols
def test_two_files_with_the_same_symbol_are_an_error_naming_both(tmp_path):
    folder = tmp_path / "prices"
    folder.mkdir()
    price_file(folder / "AAPL.csv", ["2020-01-02", "2020-01-03"])
    write(folder / "more.csv", "symbol,date,close\nAAPL,2020-01-06,1\nAAPL,2020-01-07,2\nMSFT,2020-01-06,3\n"
                               "MSFT,2020-01-07,4\n")
    assert_user_error(run_cli("data", "info", folder), "'AAPL'", "AAPL.csv", "more.csv")


def test_a_symbol_too_long_for_a_file_name_is_refused(tmp_path):
    long = "X" * 300
    path = write(tmp_path / "long.csv", f"symbol,date,close\n{long},2020-01-02,1\n{long},2020-01-03,2\n")
    assert_user_error(run_cli("data", "info", path), "long.csv", "300 characters", "at most 64")
    with pytest.raises(DataError, match="control character"):
        load_prices(write(tmp_path / "ctl.csv", 'symbol,date,close\n"A\x07",2020-01-02,1\n"A\x07",2020-01-03,2\n'))


# ------------------------------------------------------------------------------------- errors at the right place
def test_blank_lines_do_not_shift_the_reported_line(tmp_path):
    path = write(tmp_path / "blank.csv", "\ndate,close\n\n2020-01-01,1\n\n   \n2020-01-02,2\n,\n2020-01-03,abc\n")
    with pytest.raises(DataError, match="line 9, column 'close'"):
        load_prices(path)
    bad_date = write(tmp_path / "bad_date.csv", "date,close\n2020-01-01,1\n\n\n2020-13-01,2\n")
    with pytest.raises(DataError, match="line 5, column 'date'"):
        load_prices(bad_date)


def test_a_zero_close_with_an_adjusted_close_is_blamed_on_the_close(tmp_path):
    path = write(tmp_path / "adj.csv", "Date,Open,High,Low,Close,Adj Close,Volume\n"
                                       "2020-01-02,10,11,9,10,5,100\n2020-01-03,10,11,9,0,5,100\n")
    assert_user_error(run_cli("data", "info", path), "line 3", "column 'Close'", "not positive")
    zero_adj = write(tmp_path / "adj0.csv", "Date,Open,Close,Adj Close\n2020-01-02,10,10,5\n2020-01-03,10,10,0\n")
    with pytest.raises(DataError, match="line 3, column 'Adj Close': price is 0"):
        load_prices(zero_adj)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig"])
def test_utf16_and_bom_files_are_read(tmp_path, encoding):
    path = tmp_path / "enc.csv"
    path.write_bytes("Date,Close\n2020-01-02,1\n2020-01-03,2\n".encode(encoding))
    frame = load_prices(path)
    assert frame["close"].tolist() == [1, 2]
    assert frame["timestamp"].iloc[0] == pd.Timestamp("2020-01-02", tz="UTC")


# ------------------------------------------------------------------------------------------------- DataFrames
def test_a_dataframe_goes_through_the_same_validation():
    index = pd.date_range("2020-01-02", periods=3, freq="D")
    series = load_prices(pd.DataFrame({"Close": [1.0, 2.0, 3.0]}, index=index))
    assert series["timestamp"].tolist() == index.tz_localize("UTC").tolist()
    assert series["symbol"].unique().tolist() == ["series"]
    long = pd.DataFrame({"ticker": ["B", "A", "A", "B"], "date": ["13/01/2020", "14/01/2020", "13/01/2020",
                                                                  "14/01/2020"], "close": [3, 2, 1, 4]})
    frame = load_prices(long)
    assert frame["symbol"].tolist() == ["A", "A", "B", "B"] and frame["close"].tolist() == [1, 2, 3, 4]
    assert frame["timestamp"].dt.day.tolist() == [13, 14, 13, 14]
    pd.testing.assert_frame_equal(load_prices(frame), frame)  # the canonical frame reads back unchanged
    bad = pd.DataFrame({"date": ["2020-01-02", "2020-01-03"], "Open": [1, 1], "Close": [1, 0], "Adj Close": [1, 1]})
    with pytest.raises(DataError, match="the DataFrame: row 2, column 'Close': price is 0"):
        load_prices(bad)


@pytest.mark.parametrize("source", [None, 3, "", b"prices.csv", ["a.csv"]])
def test_a_source_of_the_wrong_type_is_a_user_error(source):
    with pytest.raises(PriceGPTError, match="file or folder path"):
        load_prices(source)
