"""Reading price files into the canonical price frame.

`load_prices(source)` accepts one CSV/Parquet file (long format with a symbol/ticker column, or one series
named after the file), a folder of such files (symbol = file stem), yfinance-style columns, any column case,
comma/semicolon/tab delimiters, ISO or US dates, date-times with or without time zones, Unix seconds or
milliseconds, and `sample:NAME` for the embedded datasets.

The canonical frame: `timestamp` (UTC, tz-aware, ns), `symbol` (str), `close` (float64) and, when the source has
them, `open`, `high`, `low`, `volume`. Sorted by (symbol, timestamp), unique timestamps per symbol, prices finite
and > 0. Adjusted close is used when present (OHL are scaled by the same factor so a bar keeps its shape).

Policy for imperfect files: empty price cells drop their row (one warning with the count); unsorted rows are
sorted; duplicate timestamps keep the last row (warning). Text in a price column, unparseable timestamps,
non-positive or infinite prices, no close column, an empty file, a folder without data files and fewer than
2 usable bars per symbol are DataErrors naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError

log = logging.getLogger("pricegpt")

DATA_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt", ".parquet", ".pq")
PRICE_COLUMNS = ("open", "high", "low", "close")
CANONICAL_COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close", "volume")

# Column names are matched after lower-casing and removing spaces, underscores, dashes and dots.
_TIMESTAMP_NAMES = ("timestamp", "datetime", "date", "time", "gmttime", "localtime", "ts", "unnamed0")
_SYMBOL_NAMES = ("symbol", "ticker", "instrument", "asset", "pair", "code")
_ADJ_CLOSE_NAMES = ("adjclose", "adjustedclose", "adjclosing", "closeadj", "adjcloseprice")
_CLOSE_NAMES = ("close", "closeprice", "closing", "last", "price")
_OTHER_NAMES = {"open": ("open", "openprice"), "high": ("high", "highprice"), "low": ("low", "lowprice"),
                "volume": ("volume", "vol")}


@dataclass
class LoadReport:
    """What reading a source did: rows read and dropped per symbol, and the files behind each symbol."""

    source: str
    rows_read: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    adjusted: bool = False


def load_prices(source: str | Path) -> pd.DataFrame:
    """Read `source` (file, folder or `sample:NAME`) into the canonical price frame. See the module docstring."""
    frame, _ = read_prices(source)
    return frame


def read_prices(source: str | Path) -> tuple[pd.DataFrame, LoadReport]:
    """Like `load_prices`, and also return a LoadReport (rows read and dropped, per symbol)."""
    if isinstance(source, str) and source.startswith("sample:"):
        from .samples import sample_path

        path = sample_path(source.split(":", 1)[1])
        report = LoadReport(source=source)
        return _finish(_read_file(path, report, default_symbol=None), report, path), report
    path = Path(source)
    report = LoadReport(source=str(path))
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; give a CSV/Parquet file, a folder of them, or sample:NAME "
                        "(see `pricegpt data list`)")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _is_data_file(p))
        if not files:
            raise DataError(f"{path}: folder has no data files (expected {', '.join(DATA_SUFFIXES)}); "
                            "put one file per symbol in it")
        frames = [_read_file(f, report, default_symbol=_stem(f)) for f in files]
        common = set.intersection(*(set(f.columns) for f in frames))
        partial = [c for c in CANONICAL_COLUMNS if c not in common and any(c in f.columns for f in frames)]
        if partial:  # a column only some files have would be NaN for the others' symbols
            log.warning(f"{path.name}: column(s) {', '.join(partial)} missing from some files; using only the "
                        "columns every file has")
            frames = [f[[c for c in f.columns if c in common]] for f in frames]
        return _finish(pd.concat(frames, ignore_index=True), report), report
    return _finish(_read_file(path, report, default_symbol=_stem(path)), report, path), report


def _is_data_file(path: Path) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and name.endswith(DATA_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(DATA_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _norm(name: object) -> str:
    return re.sub(r"[\s_\-\.:]+", "", str(name).strip().lower())


def _read_table(path: Path) -> pd.DataFrame:
    """Read a file as strings (CSV) or typed columns (Parquet). Format problems become DataErrors."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow; install it with "
                            "`pip install 'pricegpt[parquet]'`") from None
        try:
            table = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises many types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file ({type(err).__name__}: {err})") from None
        if not isinstance(table.index, pd.RangeIndex):
            table = table.reset_index()
        return table
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err.strerror})") from None
    if name.endswith(".gz"):
        import gzip

        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: not a valid gzip file ({err})") from None
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path}: looks like a binary file, not CSV text; give a CSV or Parquet price file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = raw.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise DataError(f"{path}: cannot decode the file as text") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty; it needs a header row and at least 2 rows of prices")
    header = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max([",", ";", "\t", "|"], key=header.count)
    if header.count(delimiter) == 0:
        delimiter = ","
    try:
        table = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False,
                            skipinitialspace=True, skip_blank_lines=True, quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error, ValueError) as err:
        raise DataError(f"{path}: not a readable CSV file ({str(err).strip().splitlines()[0]})") from None
    if not isinstance(table.index, pd.RangeIndex):  # pandas took the surplus leading fields as an index
        raise DataError(f"{path}: line 2 has more fields than the header ({len(table.columns)} columns); "
                        "fix the row or the header")
    return table


def _pick(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in columns:
            return columns[name]
    return None


def _read_file(path: Path, report: LoadReport, default_symbol: str | None) -> pd.DataFrame:
    """Read and validate one file; the caller sorts and de-duplicates (`_finish`)."""
    table = _read_table(path)
    if table.shape[1] == 0 or len(table.columns) == 0:
        raise DataError(f"{path}: file has no columns; it needs a header row with a date and a close column")
    columns: dict[str, str] = {}
    for col in table.columns:
        columns.setdefault(_norm(col), col)
    ts_col = _pick(columns, _TIMESTAMP_NAMES)
    if ts_col is None:
        raise DataError(f"{path}: no timestamp column; name one of: timestamp, date, datetime, time "
                        f"(columns found: {', '.join(map(str, table.columns))})")
    adj_col = _pick(columns, _ADJ_CLOSE_NAMES)
    close_col = _pick(columns, _CLOSE_NAMES)
    if adj_col is None and close_col is None:
        raise DataError(f"{path}: no close column; name one of: close, adj close, price, last "
                        f"(columns found: {', '.join(map(str, table.columns))})")
    if len(table) == 0:
        raise DataError(f"{path}: file has a header but no rows of prices; it needs at least 2 bars")
    sym_col = _pick(columns, _SYMBOL_NAMES)

    out = pd.DataFrame({"timestamp": _parse_timestamps(table[ts_col], path, ts_col)})
    if sym_col is not None:
        symbols = table[sym_col].astype(str).str.strip()
        empty = (symbols == "") | table[sym_col].isna()
        if empty.any():
            line = int(np.flatnonzero(empty.to_numpy())[0]) + 2
            raise DataError(f"{path}: line {line}, column '{sym_col}': empty symbol; fill in the symbol")
        out["symbol"] = symbols.to_numpy()
    else:
        out["symbol"] = default_symbol if default_symbol is not None else _stem(path)

    price_source = {"close": adj_col or close_col}
    for key in ("open", "high", "low", "volume"):
        col = _pick(columns, _OTHER_NAMES[key])
        if col is not None:
            price_source[key] = col
    values: dict[str, np.ndarray] = {}
    empty_cells = np.zeros(len(table), dtype=bool)
    for key, col in price_source.items():
        numbers, empty = _parse_numbers(table[col], path, col)
        values[key] = numbers
        if key != "volume":
            empty_cells |= empty
    if adj_col is not None:
        if not report.adjusted:
            log.warning(f"{path.name}: using the adjusted close column '{adj_col}' as close")
        report.adjusted = True
        if close_col is not None and close_col != adj_col:
            raw_close, raw_empty = _parse_numbers(table[close_col], path, close_col)
            empty_cells |= raw_empty
            with np.errstate(divide="ignore", invalid="ignore"):
                factor = values["close"] / raw_close
            for key in ("open", "high", "low"):
                if key in values:
                    values[key] = values[key] * factor
    for key in ("open", "high", "low", "close", "volume"):
        if key in values:
            out[key] = values[key]

    n_empty = int(empty_cells.sum())
    if n_empty:
        log.warning(f"{path.name}: dropped {n_empty} row(s) with an empty price cell")
        for sym, n in out.loc[empty_cells, "symbol"].value_counts().items():
            report.dropped[sym] = report.dropped.get(sym, 0) + int(n)
        out = out[~empty_cells]
    lines = np.flatnonzero(~empty_cells) + 2
    _check_positive(out, lines, path, price_source)
    for sym, n in out["symbol"].value_counts().items():
        report.rows_read[sym] = report.rows_read.get(sym, 0) + int(n)
        report.files.setdefault(sym, str(path))
    return out.reset_index(drop=True)


def _check_positive(out: pd.DataFrame, lines: np.ndarray, path: Path, price_source: dict[str, str]) -> None:
    for key in ("open", "high", "low", "close"):
        if key not in out:
            continue
        col = out[key].to_numpy()
        bad = ~np.isfinite(col) | (col <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = "infinite or not a number" if not np.isfinite(col[i]) else f"{col[i]:g} (not positive)"
            raise DataError(f"{path}: line {lines[i]}, column '{price_source[key]}': price is {what}; "
                            "prices must be finite and > 0 — fix or remove the row")
    if "volume" in out:
        vol = out["volume"].to_numpy()
        bad = np.isfinite(vol) & (vol < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: line {lines[i]}, column '{price_source['volume']}': negative volume "
                            f"{vol[i]:g}; fix or remove the row")


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _parse_numbers(series: pd.Series, path: Path, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse a price/volume column. Returns (values, empty_mask); text that is not a number is a DataError."""
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, np.isnan(values)
    text = series.astype(str).str.strip()
    empty = (text == "") | series.isna().to_numpy() | text.str.lower().isin(["nan", "na", "n/a", "null", "none"])
    values = pd.to_numeric(text.where(~empty, None), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values) & ~empty.to_numpy()
    # pandas parses 'inf' / 'infinity' as numbers; they are caught later by the positivity check.
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {i + 2}, column '{col}': '{text.iloc[i][:40]}' is not a number; "
                        "price columns must hold numbers only")
    return values, empty.to_numpy()


def _parse_timestamps(series: pd.Series, path: Path, col: str) -> pd.Series:
    """Parse dates/date-times (ISO, US m/d/Y, with or without zone) or Unix s/ms/us/ns into UTC timestamps."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        parsed = pd.to_datetime(series, utc=True)
        return _check_parsed(parsed, series, path, col)
    text = series.astype(str).str.strip()
    empty = (text == "") | text.str.lower().isin(["nan", "nat", "none", "null"])
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(f"{path}: line {i + 2}, column '{col}': empty timestamp; every row needs a date")
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().all():
        values = numeric.to_numpy(dtype=np.float64)
        if np.all((values >= 1e7) & (values < 1e8) & (values == np.floor(values))) and \
                np.all((values // 10000 >= 1800) & (values // 10000 <= 2200)):
            parsed = pd.to_datetime(text, format="%Y%m%d", utc=True, errors="coerce")
        else:
            magnitude = np.nanmax(np.abs(values))
            unit = "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us" if magnitude < 1e17 else "ns"
            parsed = pd.to_datetime(values, unit=unit, utc=True, errors="coerce")
            parsed = pd.Series(parsed, index=series.index)
        return _check_parsed(parsed, text, path, col)
    parsed = None
    attempts = ({"format": "ISO8601"}, {"format": "mixed", "dayfirst": False}, {"format": "mixed", "dayfirst": True})
    for kwargs in attempts:
        try:
            attempt = pd.to_datetime(text, utc=True, errors="coerce", **kwargs)
        except (ValueError, TypeError, OverflowError):
            continue
        if parsed is None or attempt.notna().sum() > parsed.notna().sum():
            parsed = attempt
        if attempt.notna().all():
            break
    if parsed is None:
        parsed = pd.Series(pd.NaT, index=series.index, dtype="datetime64[ns, UTC]")
    return _check_parsed(parsed, text, path, col)


def _check_parsed(parsed: pd.Series, original: pd.Series, path: Path, col: str) -> pd.Series:
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: line {i + 2}, column '{col}': cannot parse '{str(original.iloc[i])[:40]}' as a "
                        "date/time; use ISO (2020-01-31 or 2020-01-31T15:30:00Z), US (1/31/2020) or Unix seconds")
    if not hasattr(parsed, "dt"):
        return parsed
    try:
        return pd.Series(parsed.to_numpy(), index=parsed.index).dt.as_unit("ns")
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        # timestamps are nanoseconds since 1970 in 64 bits: years before 1677 or after 2262 do not fit
        outside = ((parsed < pd.Timestamp.min.tz_localize("UTC")) | (parsed > pd.Timestamp.max.tz_localize("UTC")))
        i = int(np.flatnonzero(outside.to_numpy())[0]) if outside.any() else 0
        raise DataError(f"{path}: line {i + 2}, column '{col}': '{str(original.iloc[i])[:40]}' is outside the "
                        f"supported dates {pd.Timestamp.min:%Y-%m-%d} .. {pd.Timestamp.max:%Y-%m-%d}; fix the row"
                        ) from None


def _finish(frame: pd.DataFrame, report: LoadReport, path: Path | None = None) -> pd.DataFrame:
    """Sort, drop duplicate timestamps (keeping the last), order columns and check each symbol has >= 2 bars."""
    where = str(path) if path is not None else report.source
    if len(frame) == 0:
        raise DataError(f"{where}: no row has a price (every price cell is empty); it needs at least 2 bars")
    frame = frame.reset_index(drop=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.as_unit("ns")
    frame["symbol"] = frame["symbol"].astype(str)
    order = np.lexsort((np.arange(len(frame)), frame["timestamp"].to_numpy(), frame["symbol"].to_numpy()))
    frame = frame.iloc[order].reset_index(drop=True)
    dup = frame.duplicated(subset=["symbol", "timestamp"], keep="last")
    if dup.any():
        counts = frame.loc[dup, "symbol"].value_counts()
        for sym, n in counts.items():
            report.dropped[sym] = report.dropped.get(sym, 0) + int(n)
        log.warning(f"{Path(where).name}: {int(dup.sum())} duplicate timestamp(s); kept the last row of each")
        frame = frame.loc[~dup].reset_index(drop=True)
    counts = frame.groupby("symbol", sort=True)["timestamp"].size()
    short = counts[counts < 2]
    if len(short):
        sym = short.index[0]
        raise DataError(f"{report.files.get(sym, where)}: symbol '{sym}' has {int(short.iloc[0])} usable bar(s); "
                        "at least 2 are needed to compute a return")
    cols = [c for c in CANONICAL_COLUMNS if c in frame.columns]
    return frame[cols]
