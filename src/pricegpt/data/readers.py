"""Reading price files into the canonical price frame.

`load_prices(source, date_format=None)` accepts one CSV/Parquet file (long format with a symbol/ticker column, or
one series named after the file), a folder of such files (symbol = file stem), an in-memory pandas DataFrame (long
format with a symbol column, or one series called "series"; a timestamp column or a DatetimeIndex) and
`sample:NAME` for the embedded datasets. Files may have yfinance-style or MetaTrader (`<DATE>,<TIME>,...`) columns,
any column case, comma/semicolon/tab/pipe delimiters, UTF-8 (with or without BOM) or UTF-16 text.

Timestamps: one format per column is inferred from all its values (ISO, month-first, day-first, with or without a
time and a zone; Unix s/ms/us/ns; YYYYMMDD digits), see `dates.parse_timestamps`. Day-first and ambiguous columns
are read with a warning, mixed ones refused. `date_format` (a strptime format; the CLI's --date-format) overrides
the inference. Separate date and time-of-day columns (`Date,Time`) are combined into one timestamp. Excel serial
day numbers (43831 ...) are refused, not guessed: convert them with `pd.to_datetime(x, unit="D",
origin="1899-12-30")` or save the dates as text from Excel.

The canonical frame: `timestamp` (UTC, tz-aware, ns), `symbol` (str), `close` (float64) and, when the source has
them, `open`, `high`, `low`, `volume`. Sorted by (symbol, timestamp), unique timestamps per symbol, prices finite
and > 0. Adjusted close is used when present (OHL are scaled by the same factor so a bar keeps its shape).

Policy for imperfect files: rows whose cells are all blank are skipped; an open, high or low column empty in
every row is read as absent (warning); otherwise empty price cells drop their row (one
warning with the count); unsorted rows are sorted; duplicate timestamps keep the last row (warning). Text in a
price column, unparseable or mixed-format timestamps, non-positive or infinite prices, no close column, an empty
file, a folder without data files, two files of a folder holding the same symbol, a symbol longer than 64
characters or with control characters, and fewer than 2 usable bars per symbol are DataErrors naming the file
(or "the DataFrame"), the line (or row) and the column. Line numbers are those of the file, blank lines included.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..fileio import note_input
from .dates import DateNote, Rows, parse_clock, parse_timestamps
from .samples import sample_path

log = logging.getLogger("pricegpt")

DATA_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt", ".parquet", ".pq")
PRICE_COLUMNS = ("open", "high", "low", "close")
CANONICAL_COLUMNS = ("timestamp", "symbol", "open", "high", "low", "close", "volume")
MAX_SYMBOL_LEN = 64  # symbols become file names and report lines
IN_MEMORY = "the DataFrame"
BATCH_ROWS = 250_000  # rows of whole symbols stream_prices yields at a time (about 100 MB of work memory)

# Column names are matched after lower-casing and removing spaces, underscores, dashes, dots and <> (MetaTrader).
_TIMESTAMP_NAMES = ("timestamp", "datetime", "date", "dtyyyymmdd", "time", "gmttime", "localtime", "ts", "unnamed0")
_DATE_ONLY_NAMES = ("date", "dtyyyymmdd")  # with a separate time-of-day column beside them
_CLOCK_NAMES = ("time",)
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
    date_notes: list[tuple[str, DateNote]] = field(default_factory=list, repr=False)
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)  # file -> canonical columns


def load_prices(source: str | Path | pd.DataFrame, *, date_format: str | None = None) -> pd.DataFrame:
    """Read `source` (file, folder, `sample:NAME` or DataFrame) into the canonical price frame.

    `date_format`: a strptime format (e.g. "%d/%m/%Y %H:%M") for the timestamp column, instead of inferring one;
    with separate date and time columns it is the date column's format. See the module docstring."""
    frame, _ = read_prices(source, date_format=date_format)
    return frame


def read_prices(source: str | Path | pd.DataFrame, *,
                date_format: str | None = None) -> tuple[pd.DataFrame, LoadReport]:
    """Like `load_prices`, and also return a LoadReport (rows read and dropped, per symbol)."""
    if isinstance(source, pd.DataFrame):
        report = LoadReport(source=IN_MEMORY)
        table = _table_of_frame(source)
        rows = Rows(IN_MEMORY, np.arange(1, len(table) + 1), word="row")
        frame = _read_table_rows(table, rows, report, "series", date_format)
        return _done(frame, report), report
    if isinstance(source, str) and source.startswith("sample:"):
        path = sample_path(source.split(":", 1)[1])
        report = LoadReport(source=source)
        return _done(_read_file(path, report, None, date_format), report, path), report
    if not isinstance(source, (str, os.PathLike)) or not str(os.fspath(source)).strip():
        raise DataError(f"prices must come from a file or folder path, 'sample:NAME' or a pandas DataFrame; got "
                        f"{type(source).__name__} {str(source)[:40]!r}")
    path = Path(os.fsdecode(source))
    report = LoadReport(source=str(path))
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; give a CSV/Parquet file, a folder of them, or sample:NAME "
                        "(see `pricegpt data list`)")
    note_input(path)
    if not path.is_dir():
        return _done(_read_file(path, report, _stem(path), date_format), report, path), report
    files = sorted(p for p in path.iterdir() if p.is_file() and _is_data_file(p))
    if not files:
        raise DataError(f"{path}: folder has no data files (expected {', '.join(DATA_SUFFIXES)}); "
                        "put one file per symbol in it")
    frames, owner = [], {}
    for file in files:
        frame = _read_file(file, report, _stem(file), date_format)
        for symbol in frame["symbol"].unique():
            if symbol in owner:
                raise DataError(f"{path}: symbol '{_shown(symbol)}' is in two files, {owner[symbol]} and {file}; "
                                "keep one file per symbol (rename or remove one of them)")
            owner[symbol] = file
        frames.append(frame)
    partial = partial_columns(report, path)
    if partial:  # a column only some files have would be NaN for the others' symbols
        frames = [f[[c for c in f.columns if c not in partial]] for f in frames]
    return _done(pd.concat(frames, ignore_index=True), report), report


def partial_columns(report: LoadReport, path: Path) -> list[str]:
    """The canonical columns some files of the folder `path` have and others lack (warned once): a folder's price
    frame keeps only the columns every file has."""
    sets = [set(columns) for columns in report.columns.values()]
    common = set.intersection(*sets) if sets else set()
    partial = [c for c in CANONICAL_COLUMNS if c not in common and any(c in s for s in sets)]
    if partial:
        log.warning(f"{path.name}: column(s) {', '.join(partial)} missing from some files; using only the "
                    "columns every file has")
    return partial


def stream_prices(source: str | Path | pd.DataFrame, *, date_format: str | None = None,
                  report: LoadReport | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """`load_prices` a batch of whole symbols at a time, for data larger than memory: each frame is canonical and
    holds every row of its symbols (about `batch_rows` rows, more when one symbol has more), and no symbol is in
    two frames. The frames together hold exactly the rows of `load_prices(source)`, with the same checks and
    messages; only which of several problems is reported first can differ.

    A folder is read file by file; a Parquet file (alone or in a folder) whose timestamps are a datetime column
    (or read with `date_format`) row group by row group, a symbol leaving memory once its last row group is read,
    so that a file grouped or sorted by symbol takes memory for about one row group. Other files (CSV, Parquet with
    text dates) are read whole, since one date format is inferred per column of a file. Pass `report` to read it
    afterwards; for a folder whose files have different columns, `partial_columns(report, path)` names those the
    price frame would drop (the frames keep each file's own)."""
    report = report if report is not None else LoadReport(source="")
    if isinstance(source, pd.DataFrame):  # in memory already
        frame, loaded = read_prices(source, date_format=date_format)
        for name in LoadReport.__dataclass_fields__:
            setattr(report, name, getattr(loaded, name))
        yield from _symbol_batches(frame, batch_rows)
        return
    if isinstance(source, str) and source.startswith("sample:"):
        path, folder = sample_path(source.split(":", 1)[1]), None
        files, report.source = [path], source
    else:
        if not isinstance(source, (str, os.PathLike)) or not str(os.fspath(source)).strip():
            raise DataError(f"prices must come from a file or folder path, 'sample:NAME' or a pandas DataFrame; got "
                            f"{type(source).__name__} {str(source)[:40]!r}")
        path = Path(os.fsdecode(source))
        report.source = str(path)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder; give a CSV/Parquet file, a folder of them, or "
                            "sample:NAME (see `pricegpt data list`)")
        note_input(path)
        folder = path if path.is_dir() else None
        files = sorted(p for p in path.iterdir() if p.is_file() and _is_data_file(p)) if folder else [path]
        if folder and not files:
            raise DataError(f"{path}: folder has no data files (expected {', '.join(DATA_SUFFIXES)}); "
                            "put one file per symbol in it")
    owner: dict[str, Path] = {}
    batch: list[pd.DataFrame] = []
    rows_out = 0
    for file in files:
        for frame in _file_frames(file, report, date_format, batch_rows):
            if folder is not None:
                for symbol in frame["symbol"].unique():
                    if symbol in owner:
                        raise DataError(f"{path}: symbol '{_shown(symbol)}' is in two files, {owner[symbol]} and "
                                        f"{file}; keep one file per symbol (rename or remove one of them)")
                    owner[symbol] = file
            if len(frame) == 0:  # every price cell empty: its symbols are gone, as in load_prices
                continue
            if batch and (list(frame.columns) != list(batch[0].columns)
                          or sum(map(len, batch)) + len(frame) > batch_rows):
                rows_out += sum(map(len, batch))
                yield from _symbol_batches(_finish(pd.concat(batch, ignore_index=True), report, path=None
                                                   if folder else path), batch_rows)
                batch = []
            batch.append(frame)
    if batch:
        rows_out += sum(map(len, batch))
        yield from _symbol_batches(_finish(pd.concat(batch, ignore_index=True), report, None if folder else path),
                                   batch_rows)
    if rows_out == 0:
        raise DataError(f"{folder or path}: no row has a price (every price cell is empty); it needs at least 2 bars")
    _warn_dates(report)


def _symbol_batches(frame: pd.DataFrame, batch_rows: int) -> Iterator[pd.DataFrame]:
    """A canonical frame (sorted by symbol) in slices of whole symbols of about `batch_rows` rows."""
    if len(frame) <= batch_rows:
        yield frame
        return
    symbols = frame["symbol"].to_numpy()
    starts = np.append(np.flatnonzero(np.concatenate([[True], symbols[1:] != symbols[:-1]])), len(frame))
    start = 0
    while start < len(frame):
        if start + batch_rows >= len(frame):
            stop = len(frame)
        else:  # the last symbol start within batch_rows, or the end of a symbol longer than that
            cut = int(np.searchsorted(starts, start + batch_rows, side="right")) - 1
            stop = int(starts[cut]) if starts[cut] > start else int(starts[cut + 1])
        yield frame.iloc[start:stop].reset_index(drop=True)
        start = stop


def _file_frames(path: Path, report: LoadReport, date_format: str | None,
                 batch_rows: int) -> Iterator[pd.DataFrame]:
    """The validated rows of one file (not yet sorted or de-duplicated), in frames of whole symbols."""
    plan = _parquet_plan(path, date_format) if path.name.lower().endswith((".parquet", ".pq")) else None
    if plan is None:
        yield _read_file(path, report, _stem(path), date_format)
        return
    import pyarrow as pa

    parquet, symbol_column, last_group = plan
    pool = pa.default_memory_pool()
    pending: list = []  # (arrow table, file rows, the row group each row's symbol is complete after)
    ready: list = []
    offset = 0
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group)
        last = _last_groups(table.column(symbol_column), last_group, parquet.num_row_groups - 1)
        pending.append((table, offset + np.arange(table.num_rows), last))
        offset += table.num_rows
        still = []
        for part, rows, part_last in pending:
            done = part_last <= group
            if done.all():
                ready.append((part, rows))
            elif done.any():
                ready.append((part.filter(done), rows[done]))
                still.append((part.filter(~done), rows[~done], part_last[~done]))
            else:
                still.append((part, rows, part_last))
        pending = still
        if sum(part.num_rows for part, _ in ready) >= batch_rows or group == parquet.num_row_groups - 1:
            yield from _parquet_frames(ready, symbol_column, path, report, date_format, batch_rows)
            ready = []
            pool.release_unused()  # arrow's allocator keeps freed row groups' pages otherwise
    assert not pending, f"{path}: rows of symbols never completed"


def _parquet_plan(path: Path, date_format: str | None):
    """(ParquetFile, symbol column, symbol -> its last row group) when `path` can be read row group by row group
    with the same result as whole (several row groups, a symbol column, datetime timestamps or a date_format, no
    separate time-of-day column); else None."""
    try:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        empty = parquet.schema_arrow.empty_table().to_pandas()
    except Exception:  # no pyarrow, or a file _read_table reports on properly
        return None
    if parquet.num_row_groups < 2:
        return None
    if not isinstance(empty.index, pd.RangeIndex):
        empty = empty.reset_index()
    columns: dict[str, str] = {}
    for col in empty.columns:
        columns.setdefault(_norm(col), col)
    ts_col, symbol_column = _pick(columns, _TIMESTAMP_NAMES), _pick(columns, _SYMBOL_NAMES)
    if ts_col is None or symbol_column is None or symbol_column not in parquet.schema_arrow.names:
        return None
    if date_format is None and not pd.api.types.is_datetime64_any_dtype(empty[ts_col].dtype):
        return None  # text or number dates: the format is inferred from the whole column
    if _norm(ts_col) in _DATE_ONLY_NAMES and _pick(columns, _CLOCK_NAMES) is not None:
        return None  # whether the time column is used depends on every date of the file
    last_group: dict[str, int] = {}
    for group in range(parquet.num_row_groups):
        column = parquet.read_row_group(group, columns=[symbol_column]).column(0)
        for key in _symbol_keys(column.unique()):
            last_group[key] = group
    return parquet, symbol_column, last_group


def _symbol_keys(values) -> list[str]:
    """Symbols as _read_table_rows makes them (text, stripped) of an arrow array."""
    return values.to_pandas().astype(str).str.strip().tolist()


def _last_groups(column, last_group: dict[str, int], final: int) -> np.ndarray:
    """The last row group of each row's symbol, of an arrow symbol column (`final` for a missing symbol, which
    _read_table_rows refuses)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = column.combine_chunks()
    if not pa.types.is_dictionary(encoded.type):
        encoded = encoded.dictionary_encode()
    last = np.array([last_group.get(key, final) for key in _symbol_keys(encoded.dictionary)] + [final], dtype=np.int64)
    codes = pc.fill_null(encoded.indices, len(last) - 1).to_numpy(zero_copy_only=False)
    return last[codes]


def _parquet_frames(parts: list, symbol_column: str, path: Path, report: LoadReport, date_format: str | None,
                    batch_rows: int) -> Iterator[pd.DataFrame]:
    """The validated rows of whole symbols of a Parquet file (rows named by their row in the file), in frames of
    about batch_rows rows: a large row group is cut between symbols (after grouping its rows by symbol, each
    symbol's rows kept in file order)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not parts:
        return
    table = pa.concat_tables([part for part, _ in parts])
    rows = np.concatenate([rows for _, rows in parts]) + 1
    bounds = [0, table.num_rows]
    if table.num_rows > batch_rows:
        column = table.column(symbol_column).combine_chunks()
        encoded = column if pa.types.is_dictionary(column.type) else column.dictionary_encode()
        codes = pc.fill_null(encoded.indices, len(encoded.dictionary)).to_numpy(zero_copy_only=False)
        if np.any(codes[1:] < codes[:-1]):
            order = np.argsort(codes, kind="stable")
            table, rows, codes = table.take(order), rows[order], codes[order]
        starts = np.append(np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]])), len(codes))
        bounds = [0]
        while bounds[-1] < len(codes):
            cut = int(np.searchsorted(starts, bounds[-1] + batch_rows, side="right")) - 1
            bounds.append(int(starts[cut]) if starts[cut] > bounds[-1] else int(starts[cut + 1]))
    for start, stop in zip(bounds, bounds[1:]):
        frame = table.slice(start, stop - start).to_pandas()
        if not isinstance(frame.index, pd.RangeIndex):
            frame = frame.reset_index()
        yield _read_table_rows(frame.reset_index(drop=True), Rows(str(path), rows[start:stop], word="row"), report,
                               _stem(path), date_format)


def _warn_dates(report: LoadReport) -> None:
    """Warn once per kind of date note (a folder of 500 day-first files is one warning)."""
    seen: dict[str, int] = {}
    for _, note in report.date_notes:
        seen[note.kind] = seen.get(note.kind, 0) + 1
    for kind, count in seen.items():
        where, note = next((w, n) for w, n in report.date_notes if n.kind == kind)
        more = f" (and {count - 1} more file(s) like it)" if count > 1 else ""
        log.warning(f"{_short(where)}: {note.message}{more}")


def _done(frame: pd.DataFrame, report: LoadReport, path: Path | None = None) -> pd.DataFrame:
    """Warn once per kind of date note (a folder of 500 day-first files is one warning), then finish."""
    _warn_dates(report)
    return _finish(frame, report, path)


# files a folder of prices often carries beside them, never price data (README.txt, LICENSE.txt, ...)
_NOT_DATA_STEMS = ("readme", "license", "licence", "changelog", "copying")


def _is_data_file(path: Path) -> bool:
    name = path.name.lower()
    if name.split(".")[0] in _NOT_DATA_STEMS:
        log.info(f"{path}: skipped, not price data")
        return False
    return not name.startswith(".") and name.endswith(DATA_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(DATA_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _norm(name: object) -> str:
    return re.sub(r"[\s_\-\.:<>]+", "", str(name).strip().lower())


def _short(where: str) -> str:
    """A file's name (or "the DataFrame") for warnings."""
    return where if where == IN_MEMORY else Path(where).name


def _shown(symbol: str) -> str:
    return symbol if len(symbol) <= 40 else symbol[:40] + "..."


def _table_of_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """An in-memory frame as a table of columns: a DatetimeIndex (or a named index) becomes a column."""
    if isinstance(frame.columns, pd.MultiIndex):
        levels = ", ".join(str(name) for name in frame.columns.names)
        raise DataError(f"{IN_MEMORY} has {frame.columns.nlevels}-level columns ({levels}), as yfinance.download "
                        "returns; make one row per bar and ticker first: for one ticker "
                        "frame.droplevel(1, axis=1) (or yfinance.download(..., multi_level_index=False)), for "
                        "several frame.stack(level=1).rename_axis(['Date', 'symbol']).reset_index() (or use "
                        "`pricegpt data download`)")
    if frame.columns.duplicated().any():
        names = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise DataError(f"{IN_MEMORY}: duplicate column name(s) {', '.join(names)}; give each column one name")
    table = frame
    if isinstance(frame.index, pd.DatetimeIndex) or any(name is not None for name in frame.index.names):
        if isinstance(frame.index, pd.DatetimeIndex) and frame.index.name is None:
            table = frame.rename_axis("timestamp")
        if not any(name in table.columns for name in table.index.names):
            table = table.reset_index()
    return table.reset_index(drop=True)


def _read_file(path: Path, report: LoadReport, default_symbol: str | None, date_format: str | None) -> pd.DataFrame:
    table, rows = _read_table(path)
    return _read_table_rows(table, rows, report, default_symbol or _stem(path), date_format)


def _read_table(path: Path) -> tuple[pd.DataFrame, Rows]:
    """Read a file as strings (CSV) or typed columns (Parquet), with the line of each row. Format problems become
    DataErrors."""
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
        return table, Rows(str(path), np.arange(1, len(table) + 1), word="row")
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
    text = _decode(raw, path)
    if not text.strip():
        raise DataError(f"{path}: file is empty; it needs a header row and at least 2 rows of prices")
    # Blank lines before the header are cut (pandas would take one as the header); every later line is a row,
    # so row i is line `header_line + 1 + i` and blank rows are dropped below with their line numbers known.
    leading = re.match(r"(?:[ \t]*(?:\r\n|\r|\n))*", text)
    header_line = len(re.findall(r"\r\n|\r|\n", leading.group())) + 1
    text = text[leading.end():]
    header = re.split(r"\r\n|\r|\n", text, maxsplit=1)[0]
    delimiter = max([",", ";", "\t", "|"], key=header.count)
    if header.count(delimiter) == 0:
        delimiter = ","
    try:
        table = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False,
                            skipinitialspace=True, skip_blank_lines=False, quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error, ValueError) as err:
        raise DataError(f"{path}: not a readable CSV file ({str(err).strip().splitlines()[0]})") from None
    if not isinstance(table.index, pd.RangeIndex):  # pandas took the surplus leading fields as an index
        raise DataError(f"{path}: line {header_line + 1} has more fields than the header ({len(table.columns)} "
                        "columns); fix the row or the header")
    lines = header_line + 1 + np.arange(len(table))
    blank = np.ones(len(table), dtype=bool)
    for col in table.columns:
        cells = table[col]
        blank &= (cells.isna() | (cells.str.strip() == "")).to_numpy()
    if blank.any():
        table, lines = table.loc[~blank].reset_index(drop=True), lines[~blank]
    return table, Rows(str(path), lines)


def _decode(raw: bytes, path: Path) -> str:
    """Text of a CSV file: UTF-8 (BOM or not), UTF-16/32 (BOM or not, recognised by its zero bytes), else Latin-1."""
    encoding = None
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        encoding = "utf-32"
    elif raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        head = raw[:4096]
        half = len(head) // 2
        if half >= 2:
            zeros_even, zeros_odd = head[0::2].count(0), head[1::2].count(0)
            if zeros_odd >= 0.4 * half and zeros_even == 0:
                encoding = "utf-16-le"
            elif zeros_even >= 0.4 * half and zeros_odd == 0:
                encoding = "utf-16-be"
    if encoding is not None:
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            raise DataError(f"{path}: looks like {encoding.upper()} text but cannot be decoded; save it as UTF-8 "
                            "(in Excel: Save As > CSV UTF-8)") from None
        if "\x00" not in text:
            return text.lstrip("\ufeff")
    if b"\x00" in raw[:65536]:
        raise DataError(f"{path}: looks like a binary file, not CSV text; give a CSV or Parquet price file "
                        "(a text file must be saved as UTF-8)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _pick(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in columns:
            return columns[name]
    return None


def _read_table_rows(table: pd.DataFrame, rows: Rows, report: LoadReport, default_symbol: str,
                     date_format: str | None) -> pd.DataFrame:
    """Validate one table (a file's or a DataFrame's) into canonical columns; the caller sorts and de-duplicates."""
    where = rows.name
    if len(table.columns) == 0:
        raise DataError(f"{where}: no columns; it needs a header row with a date and a close column")
    columns: dict[str, str] = {}
    for col in table.columns:
        columns.setdefault(_norm(col), col)
    found = ", ".join(map(str, table.columns))[:200]
    ts_col = _pick(columns, _TIMESTAMP_NAMES)
    if ts_col is None:
        raise DataError(f"{where}: no timestamp column; name one of: timestamp, date, datetime, time "
                        f"(columns found: {found})")
    adj_col = _pick(columns, _ADJ_CLOSE_NAMES)
    close_col = _pick(columns, _CLOSE_NAMES)
    if adj_col is None and close_col is None:
        raise DataError(f"{where}: no close column; name one of: close, adj close, price, last (columns found: "
                        f"{found})")
    if len(table) == 0:
        raise DataError(f"{where}: has a header but no rows of prices; it needs at least 2 bars")
    sym_col = _pick(columns, _SYMBOL_NAMES)

    timestamps, note = parse_timestamps(table[ts_col], rows, str(ts_col), date_format)
    if note is not None:
        report.date_notes.append((where, note))
    clock_col = _pick(columns, _CLOCK_NAMES) if _norm(ts_col) in _DATE_ONLY_NAMES else None
    if clock_col is not None and (timestamps == timestamps.dt.normalize()).all():
        clock = parse_clock(table[clock_col], rows, str(clock_col))
        if clock is not None:  # MetaTrader and many exports keep the time of day in its own column
            timestamps = timestamps + pd.to_timedelta(clock, unit="ns")
    out = pd.DataFrame({"timestamp": timestamps})
    if sym_col is not None:
        symbols = table[sym_col].astype(str).str.strip()
        empty = (table[sym_col].isna() | (symbols == "")).to_numpy()
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise DataError(f"{where}: {rows.at(i)}, column '{sym_col}': empty symbol; fill in the symbol")
        out["symbol"] = symbols.to_numpy()
    else:
        out["symbol"] = default_symbol

    price_source = {"close": adj_col or close_col}
    for key in ("open", "high", "low", "volume"):
        col = _pick(columns, _OTHER_NAMES[key])
        if col is not None:
            price_source[key] = col
    raw_close_col = close_col if adj_col is not None and close_col not in (None, adj_col) else None
    values: dict[str, np.ndarray] = {}
    empty_cells = np.zeros(len(table), dtype=bool)
    for key, col in {**price_source, **({"raw_close": raw_close_col} if raw_close_col else {})}.items():
        values[key], empty = _parse_numbers(table[col], rows, col)
        if key in ("open", "high", "low") and len(empty) and empty.all():
            # a column with no value at all is a column the file does not really have, not a reason to drop rows
            log.warning(f"{_short(where)}: column '{col}' is empty in every row; reading the data without it")
            del values[key], price_source[key]
            continue
        if key != "volume":
            empty_cells |= empty
    if adj_col is not None:
        if not report.adjusted:
            log.warning(f"{_short(where)}: using the adjusted close column "
                        f"'{adj_col}' as close")
        report.adjusted = True

    n_empty = int(empty_cells.sum())
    if n_empty:
        log.warning(f"{_short(where)}: dropped {n_empty} row(s) with an empty "
                    "price cell")
        for sym, n in out.loc[empty_cells, "symbol"].value_counts().items():
            report.dropped[sym] = report.dropped.get(sym, 0) + int(n)
        keep = ~empty_cells
        out, rows = out.loc[keep].reset_index(drop=True), rows.take(keep)
        values = {key: v[keep] for key, v in values.items()}
    # The columns as the file has them first, so a bad cell is blamed on its own column, not on a scaled one.
    _check_prices({price_source.get(k, raw_close_col): v for k, v in values.items() if k != "volume"}, rows)
    if raw_close_col is not None:
        factor = values["close"] / values.pop("raw_close")
        for key in ("open", "high", "low"):
            if key in values:
                values[key] = values[key] * factor
        _check_prices({price_source[k]: values[k] for k in ("open", "high", "low") if k in values}, rows,
                      f" after scaling by '{adj_col}' / '{close_col}'")
    if "volume" in values:
        vol = values["volume"]
        bad = np.isfinite(vol) & (vol < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where}: {rows.at(i)}, column '{price_source['volume']}': negative volume "
                            f"{vol[i]:g}; fix or remove the row")
    for key in ("open", "high", "low", "close", "volume"):
        if key in values:
            out[key] = values[key]
    for sym, n in out["symbol"].value_counts().items():
        report.rows_read[sym] = report.rows_read.get(sym, 0) + int(n)
        report.files.setdefault(sym, where)
    report.columns[where] = tuple(out.columns)
    return out


def _check_prices(columns: dict[str, np.ndarray], rows: Rows, how: str = "") -> None:
    """The first row (then the first column) whose price is infinite, not a number or not positive."""
    bad = {col: ~np.isfinite(v) | (v <= 0) for col, v in columns.items()}
    first = {col: int(np.flatnonzero(b)[0]) for col, b in bad.items() if b.any()}
    if not first:
        return
    col = min(first, key=first.get)
    i = first[col]
    value = columns[col][i]
    what = "infinite or not a number" if not np.isfinite(value) else f"{value:g} (not positive)"
    raise DataError(f"{rows.name}: {rows.at(i)}, column '{col}': price is {what}{how}; prices must be finite "
                    "and > 0 — fix or remove the row")


def _parse_numbers(series: pd.Series, rows: Rows, col: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse a price/volume column. Returns (values, empty_mask); text that is not a number is a DataError."""
    series = series.reset_index(drop=True)
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        return values, np.isnan(values)
    text = series.astype(str).str.strip()
    empty = (series.isna() | (text == "") | text.str.lower().isin(["nan", "na", "n/a", "null", "none"])).to_numpy()
    values = pd.to_numeric(text.where(~empty, None), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values) & ~empty
    # pandas parses 'inf' / 'infinity' as numbers; they are caught later by the price check.
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        hint = "price columns must hold numbers only"
        if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", text.iloc[i]):
            hint = ("it has thousands separators: read it with pandas.read_csv(path, thousands=',') and pass the "
                    "DataFrame, or save the file without them (a decimal comma would need decimal=',')")
        elif re.fullmatch(r"[-+]?\d{1,3}(\.\d{3})*,\d+|[-+]?\d+,\d+", text.iloc[i]):
            hint = ("it looks like a decimal comma: save the file with decimal points, or read it with "
                    "pandas.read_csv(path, sep=';', decimal=',', thousands='.') and pass the DataFrame")
        raise DataError(f"{rows.name}: {rows.at(i)}, column '{col}': '{text.iloc[i][:40]}' is not a number; {hint}")
    return values, empty


def _check_symbols(frame: pd.DataFrame, report: LoadReport, where: str) -> None:
    symbols = pd.Series(frame["symbol"].unique(), dtype=object)
    too_long = symbols[symbols.str.len() > MAX_SYMBOL_LEN]
    if len(too_long):
        sym = too_long.iloc[0]
        raise DataError(f"{report.files.get(sym, where)}: symbol '{_shown(sym)}' is {len(sym)} characters long; "
                        f"symbols may have at most {MAX_SYMBOL_LEN} — shorten it")
    control = symbols[symbols.str.contains(r"[\x00-\x1f\x7f]", regex=True)]
    if len(control):
        sym = control.iloc[0]
        raise DataError(f"{report.files.get(sym, where)}: symbol {_shown(sym)!r} contains a control character; "
                        "remove it")


def _finish(frame: pd.DataFrame, report: LoadReport, path: Path | None = None) -> pd.DataFrame:
    """Sort, drop duplicate timestamps (keeping the last), order columns and check each symbol has >= 2 bars."""
    where = str(path) if path is not None else report.source
    if len(frame) == 0:
        raise DataError(f"{where}: no row has a price (every price cell is empty); it needs at least 2 bars")
    frame = frame.reset_index(drop=True)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.as_unit("ns")
    frame["symbol"] = frame["symbol"].astype(str)
    _check_symbols(frame, report, where)
    ns = pd.DatetimeIndex(frame["timestamp"]).asi8
    # integer codes in symbol order sort like the strings, many times faster
    codes, symbols = pd.factorize(frame["symbol"], sort=True)
    same_symbol = codes[1:] == codes[:-1]
    if not np.all((codes[1:] > codes[:-1]) | (same_symbol & (ns[1:] >= ns[:-1]))):
        order = np.lexsort((np.arange(len(frame)), ns, codes))  # stable: a duplicate's last row stays last
        frame, codes, ns = frame.iloc[order].reset_index(drop=True), codes[order], ns[order]
        same_symbol = codes[1:] == codes[:-1]
    dup = np.zeros(len(frame), dtype=bool)
    dup[:-1] = same_symbol & (ns[1:] == ns[:-1])  # sorted: a row equal to the next one is not the last
    if dup.any():
        counts = frame.loc[dup, "symbol"].value_counts()
        for sym, n in counts.items():
            report.dropped[sym] = report.dropped.get(sym, 0) + int(n)
        log.warning(f"{_short(where)}: {int(dup.sum())} duplicate "
                    "timestamp(s); kept the last row of each")
        frame, codes = frame.loc[~dup].reset_index(drop=True), codes[~dup]
    counts = np.bincount(codes, minlength=len(symbols))
    short = np.flatnonzero(counts < 2)
    if len(short):
        sym = str(symbols[short[0]])
        raise DataError(f"{report.files.get(sym, where)}: symbol '{_shown(sym)}' has {int(counts[short[0]])} usable "
                        "bar(s); at least 2 are needed to compute a return")
    cols = [c for c in CANONICAL_COLUMNS if c in frame.columns]
    return frame[cols]
