"""Timestamp columns of a price file, read vectorised: `parse_timestamps` (dates and times), `parse_clock`.

ONE date format is inferred per column from all its values, never value by value. Month-first (m/d/Y), day-first
(d/m/Y) and ISO (Y-m-d) dates with `/`, `.` or `-` separators, 2- or 4-digit years, an optional time (H:MM,
H:MM:SS, fractions, AM/PM) and an optional zone (Z, UTC, +05:30) are read vectorised: values are grouped by their
shape (every digit counted as 0), each shape is matched once and the digits are cut out of a character matrix. A
column consistent with day-first only is read day-first (noted); one consistent with both (every day <= 12) is
read month-first (noted as ambiguous, naming --date-format); a column that mixes formats is refused naming the
first lines that disagree. Other text falls back to pandas (ISO 8601, or one format guessed from the first value).
Numbers are Unix s/ms/us/ns (by magnitude) or YYYYMMDD[HHMM[SS]] digits; Excel serial day numbers are refused with
the conversion to use. Times with a zone are converted to UTC; times without one are taken as UTC. `date_format`
(a strptime format) overrides the inference.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError


@dataclass(frozen=True)
class Rows:
    """Where a table's rows came from, for error messages: a file and the line of each row, or a DataFrame."""

    name: str  # the file path, or "the DataFrame"
    numbers: np.ndarray  # the file line (or the DataFrame row, counted from 1) of each row
    word: str = "line"

    def at(self, i: int) -> str:
        return f"{self.word} {int(self.numbers[i])}"

    def take(self, keep: np.ndarray) -> Rows:
        return replace(self, numbers=self.numbers[keep])


@dataclass(frozen=True)
class DateNote:
    """How a timestamp column was read, worth a warning; `kind` groups the same note across a folder's files."""

    kind: str
    message: str


_DATE = re.compile(r"(?a)(?P<a>\d{1,4})(?P<s1>[-/.])(?P<b>\d{1,2})(?P<s2>[-/.])(?P<c>\d{1,4})"
                   r"(?:(?P<T>T|\s+)(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<F>\d{1,9}))?)?"
                   r"\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?)?"
                   r"\s*(?P<tz>Z|UTC|GMT|(?P<sign>[+-])(?P<tzh>\d{2})(?::?(?P<tzm>\d{2}))?)?")
_CLOCK = re.compile(r"(?a)(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:[.,](?P<F>\d{1,9}))?)?"
                    r"\s*(?P<ampm>[AaPp]\.?[Mm]\.?)?|(?P<digits>\d{1,6})")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_MAX_SHAPE_LEN = 48  # longer text is no date these patterns read; it keeps the character matrix small
_MAX_DAYS = 106_750  # |days from 1970| whose nanoseconds fit in 64 bits (1677-09-22 .. 2262-04-10)
_FIRST_PLAUSIBLE_UNIX = 1e8  # 1973-03-03 as Unix seconds: smaller whole numbers in a date column count bars
_EXCEL_SERIALS = (10_000, 100_000)  # Excel day numbers 1927 .. 2173; as Unix seconds, the first 28 hours of 1970
_DIGIT_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
_HINT = "use ISO (2020-01-31 or 2020-01-31T15:30:00Z), US (1/31/2020) or Unix seconds, or pass --date-format"


def parse_timestamps(values: pd.Series, rows: Rows, col: str,
                     date_format: str | None = None) -> tuple[pd.Series, DateNote | None]:
    """The timestamps of one column as UTC (datetime64[ns, UTC], index 0..n-1), and a note to warn with or None.

    Formats and rules: the module docstring. Every problem is a DataError naming rows.name, the line and `col`."""
    values = values.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _checked(pd.to_datetime(values, utc=True), values, rows, col), None
    text = values.astype(str).str.strip()
    empty = values.isna().to_numpy() | text.str.lower().isin(["", "nan", "nat", "none", "null"]).to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise DataError(f"{rows.name}: {rows.at(i)}, column '{col}': empty timestamp; every row needs a date")
    if date_format is not None:
        return _parse_with_format(text, rows, col, date_format), None
    strings = text.to_numpy(dtype=object)
    if _NUMBER.fullmatch(strings[0]):  # parsing a million dates as numbers first would take seconds
        numbers = pd.to_numeric(text, errors="coerce")
        if numbers.notna().all():
            return _parse_numbers(strings, numbers.to_numpy(dtype=np.float64), rows, col), None
    return _parse_text(strings, rows, col)


def parse_clock(values: pd.Series, rows: Rows, col: str) -> np.ndarray | None:
    """Nanoseconds since midnight (int64) for each value of a separate time-of-day column: 09:30, 9:30:15.5,
    2:30 PM, or MetaTrader's HHMMSS / HHMM digits. None when the column holds no times of day (it is ignored)."""
    values = values.reset_index(drop=True)
    text = values.astype(str).str.strip().where(values.notna(), "")
    strings = text.to_numpy(dtype=object)
    codes, matrix, matches = _shapes(strings, _CLOCK)
    known = np.array([m is not None for m in matches], dtype=bool)[codes]
    if not known.any():
        return None
    digits_only = all(m is None or m["digits"] is not None for m in matches)
    width = max(len(m["digits"]) for m in matches if m is not None) if digits_only else 0
    clock = np.zeros(len(strings), dtype=np.int64)
    bad = ~known
    if not digits_only:
        bad |= np.array([m is not None and m["digits"] is not None for m in matches], dtype=bool)[codes]
    for k, m in enumerate(matches):
        if m is None:
            continue
        at = codes == k
        if m["digits"] is not None and not digits_only:  # HHMM digits among 09:30 times: two formats
            continue
        if m["digits"] is not None:
            number = _digits(matrix, at, m.span("digits"))
            hour, minute, second = ((number // 10_000, number // 100 % 100, number % 100) if width > 4
                                    else (number // 100, number % 100, np.zeros_like(number)))
            fraction, meridiem = 0, None
        else:
            hour, minute, second, fraction = _clock_fields(matrix, at, m)
            meridiem = m["ampm"]
        hour, wrong = _hour24(hour, meridiem)
        clock[at] = ((hour * 60 + minute) * 60 + second) * 10**9 + fraction
        bad[at] |= wrong | (hour > 23) | (minute > 59) | (second > 59)
    if bad.any():
        if digits_only and (bad & known).any():  # numbers that are no times of day: another kind of "time" column
            return None
        i = int(np.flatnonzero(bad)[0])
        what = "empty time" if not strings[i] else f"'{strings[i][:40]}' is not a time of day"
        raise DataError(f"{rows.name}: {rows.at(i)}, column '{col}': {what}; write times like 09:30 or 09:30:00")
    return clock


def _parse_with_format(text: pd.Series, rows: Rows, col: str, date_format: str) -> pd.Series:
    if not isinstance(date_format, str) or "%" not in date_format:
        raise ConfigError(f"--date-format {date_format!r} is not a strptime format; write it like %d/%m/%Y "
                          "or %Y-%m-%d %H:%M")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(text, format=date_format, utc=True, errors="coerce")
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--date-format '{date_format}' is not a valid strptime format ({err}); write it like "
                          "%d/%m/%Y or %Y-%m-%d %H:%M") from None
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{rows.name}: {rows.at(i)}, column '{col}': '{text.iloc[i][:40]}' does not match "
                        f"--date-format '{date_format}'; fix the row or the format")
    return _checked(parsed, text, rows, col)


def _parse_numbers(strings: np.ndarray, numbers: np.ndarray, rows: Rows, col: str) -> pd.Series:
    """YYYYMMDD[HHMM[SS]] digits, or Unix seconds / ms / us / ns chosen by magnitude; Excel serials refused."""
    original = pd.Series(strings)
    lengths = original.str.len()
    if lengths.nunique() == 1 and int(lengths.iloc[0]) in _DIGIT_FORMATS and original.str.isdigit().all():
        digits_format = _DIGIT_FORMATS[int(lengths.iloc[0])]
        years = numbers // 10 ** (int(lengths.iloc[0]) - 4)
        if np.all((years >= 1800) & (years <= 2200)):
            parsed = pd.to_datetime(original, format=digits_format, utc=True, errors="coerce")
            if digits_format == "%Y%m%d" or parsed.notna().all():
                return _checked(parsed, original, rows, col)
    low, high = _EXCEL_SERIALS
    if np.all((numbers >= low) & (numbers < high)):
        raise DataError(f"{rows.name}: column '{col}': {rows.at(0)} holds {strings[0][:20]}, an Excel serial day "
                        "number (days since 1899-12-30), not a Unix time; save the dates as text from Excel "
                        "(format the column as yyyy-mm-dd) or convert them with "
                        "pandas.to_datetime(values, unit='D', origin='1899-12-30')")
    magnitude = np.nanmax(np.abs(numbers))
    if magnitude < _FIRST_PLAUSIBLE_UNIX:
        raise DataError(f"{rows.name}: column '{col}': whole numbers from {strings[0][:20]} to "
                        f"{str(np.nanmax(numbers))[:20]} are bar numbers or a counter, not times: as Unix seconds "
                        "they would all fall before March 1973. Give each bar its date and time (e.g. "
                        "2024-01-31 15:30), dates written as digits with --date-format (e.g. %Y%m for 202401), or, "
                        "for Unix times, the full number of seconds since 1970")
    unit = "s" if magnitude < 1e11 else "ms" if magnitude < 1e14 else "us" if magnitude < 1e17 else "ns"
    parsed = pd.Series(pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce"))
    return _checked(parsed, original, rows, col)


@dataclass(frozen=True)
class _DateShape:
    """One shape of date text: which field is the year, the separator, the year's digits, whether it has a zone."""

    match: re.Match
    order: str  # "ymd", or "xxy": month-first or day-first, decided from the whole column
    year_digits: int

    @property
    def key(self) -> tuple:
        return self.order, self.match["s1"], self.year_digits, self.match["tz"] is not None

    def strptime(self, day_first: bool) -> str:
        sep, m = self.match["s1"], self.match
        year = "%Y" if self.year_digits == 4 else "%y"
        fields = ["%Y", "%m", "%d"] if self.order == "ymd" else ["%d", "%m", year] if day_first else ["%m", "%d", year]
        form = sep.join(fields)
        if m["H"] is not None:
            form += ("T" if m["T"] == "T" else " ") + ("%I" if m["ampm"] else "%H") + ":%M"
            form += (":%S" if m["S"] else "") + (".%f" if m["F"] else "") + (" %p" if m["ampm"] else "")
        return form + ("%z" if m["sign"] else "Z" if m["tz"] == "Z" else f" {m['tz']}" if m["tz"] else "")


def _date_shape(match: re.Match | None) -> _DateShape | None:
    if match is None or match["s1"] != match["s2"]:
        return None
    la, lc = len(match["a"]), len(match["c"])
    if la == 4 and lc <= 2:
        return _DateShape(match, "ymd", 4)
    if la <= 2 and lc in (2, 4):
        return _DateShape(match, "xxy", lc)
    return None


def _parse_text(strings: np.ndarray, rows: Rows, col: str) -> tuple[pd.Series, DateNote | None]:
    codes, matrix, matches = _shapes(strings, _DATE)
    shapes = [_date_shape(m) for m in matches]
    known = np.array([s is not None for s in shapes], dtype=bool)[codes]
    if not known.any():
        return _parse_other(strings, rows, col), None
    if not known.all():
        _refuse_mixed(strings, rows, col, int(np.flatnonzero(~known)[0]), int(np.flatnonzero(known)[0]))
    key_ids: dict[tuple, int] = {}
    keys = np.array([key_ids.setdefault(s.key, len(key_ids)) for s in shapes])[codes]
    if (keys != keys[0]).any():
        _refuse_mixed(strings, rows, col, 0, int(np.flatnonzero(keys != keys[0])[0]))

    n = len(strings)
    a, b, c, clock, offset = (np.zeros(n, dtype=np.int64) for _ in range(5))
    bad = np.zeros(n, dtype=bool)
    for k, shape in enumerate(shapes):
        at, m = codes == k, shape.match
        a[at], b[at], c[at] = (_digits(matrix, at, m.span(g)) for g in "abc")
        if m["H"] is not None:
            hour, minute, second, fraction = _clock_fields(matrix, at, m)
            hour, wrong = _hour24(hour, m["ampm"])
            clock[at] = ((hour * 60 + minute) * 60 + second) * 10**9 + fraction
            bad[at] |= wrong | (hour > 23) | (minute > 59) | (second > 59)
        if m["sign"] is not None:
            tz_hours = _digits(matrix, at, m.span("tzh"))
            tz_minutes = _digits(matrix, at, m.span("tzm")) if m["tzm"] is not None else 0
            offset[at] = (1 if m["sign"] == "+" else -1) * (tz_hours * 60 + tz_minutes) * 60 * 10**9
            bad[at] |= (tz_hours > 14) | (tz_minutes > 59)

    first = shapes[codes[0]]
    note = None
    if first.order == "ymd":
        year, month, day = a, b, c
    else:
        day_first, note = _day_order(a, b, strings, rows, col, first)
        month, day = (b, a) if day_first else (a, b)
        year = c + np.where(c < 69, 2000, 1900) if first.year_digits == 2 else c
    days, wrong, outside = _days_since_1970(year, month, day)
    bad |= wrong | outside
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        if outside[i]:
            raise DataError(f"{rows.name}: {rows.at(i)}, column '{col}': '{strings[i][:40]}' is outside the "
                            f"supported dates {pd.Timestamp.min:%Y-%m-%d} .. {pd.Timestamp.max:%Y-%m-%d}; fix the row")
        raise DataError(f"{rows.name}: {rows.at(i)}, column '{col}': cannot parse '{strings[i][:40]}' as a "
                        f"date/time ({first.strptime(note is not None and note.kind == 'day-first')}): no such date "
                        "or time; fix the row")
    ns = days * (86_400 * 10**9) + clock - offset
    return pd.Series(pd.to_datetime(ns, unit="ns", utc=True)), note


def _day_order(a: np.ndarray, b: np.ndarray, strings: np.ndarray, rows: Rows, col: str,
               shape: _DateShape) -> tuple[bool, DateNote | None]:
    """Whether d/m/y-or-m/d/y dates are day-first, from all of them; refuses a column that needs both."""
    month_first, day_first = a <= 12, b <= 12
    if month_first.all():
        differ = np.flatnonzero(a != b)
        if not day_first.all() or len(differ) == 0:
            return False, None
        i = int(differ[0])
        return False, DateNote("ambiguous", f"column '{col}' is ambiguous: every date (like '{strings[i][:40]}', "
                               f"{rows.at(i)}) reads both month-first and day-first; read month-first "
                               f"({shape.strptime(False)}). If the dates are day-first, pass --date-format "
                               f"{_quoted(shape.strptime(True))}")
    if day_first.all():
        i = int(np.flatnonzero(~month_first)[0])
        return True, DateNote("day-first", f"column '{col}' read day-first ({shape.strptime(True)}): "
                              f"{rows.at(i)} has '{strings[i][:40]}', which has no month {int(a[i])}")
    only_day, only_month = ~month_first & day_first, month_first & ~day_first
    if only_day.any() and only_month.any():
        i, j = sorted((int(np.flatnonzero(only_day)[0]), int(np.flatnonzero(only_month)[0])))
        raise DataError(f"{rows.name}: column '{col}' mixes day-first and month-first dates: {rows.at(i)} has "
                        f"'{strings[i][:40]}' but {rows.at(j)} has '{strings[j][:40]}', and no one order reads "
                        "both; fix the rows or pass --date-format")
    i = int(np.flatnonzero(~month_first & ~day_first)[0])
    raise DataError(f"{rows.name}: {rows.at(i)}, column '{col}': cannot parse '{strings[i][:40]}' as a date/time: "
                    "neither of its first two numbers can be a month (1-12); fix the row")


def _quoted(date_format: str) -> str:
    return f'"{date_format}"' if " " in date_format else date_format


def _parse_other(strings: np.ndarray, rows: Rows, col: str) -> pd.Series:
    """Text the shapes do not cover (month names, compact ISO, ...): pandas, with ONE format for the column."""
    series = pd.Series(strings)
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for kwargs in ({"format": "ISO8601"}, {}):  # {}: one format guessed from the first value
            try:
                parsed = pd.to_datetime(series, utc=True, errors="coerce", **kwargs)
            except (ValueError, TypeError, OverflowError):
                continue
            if best is None or parsed.notna().sum() > best.notna().sum():
                best = parsed
            if parsed.notna().all():
                break
    if best is None or best.isna().all():
        raise DataError(f"{rows.name}: {rows.at(0)}, column '{col}': cannot parse '{strings[0][:40]}' as a "
                        f"date/time; {_HINT}")
    bad = best.isna().to_numpy()
    if bad.any():
        _refuse_mixed(strings, rows, col, int(np.flatnonzero(bad)[0]), int(np.flatnonzero(~bad)[0]))
    return _checked(best, series, rows, col)


def _refuse_mixed(strings: np.ndarray, rows: Rows, col: str, odd: int, usual: int):
    """Row `odd` does not fit the format of row `usual`: a mixed column, or a value that is no date at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            alone = pd.notna(pd.to_datetime(strings[odd], utc=True))
        except (ValueError, TypeError, OverflowError):
            alone = False
    if not alone:
        raise DataError(f"{rows.name}: {rows.at(odd)}, column '{col}': cannot parse '{strings[odd][:40]}' as a "
                        f"date/time; {_HINT}")
    i, j = sorted((odd, usual))
    raise DataError(f"{rows.name}: column '{col}' mixes date formats: {rows.at(i)} has '{strings[i][:40]}' but "
                    f"{rows.at(j)} has '{strings[j][:40]}'; write every date in one format (or pass --date-format "
                    "and fix the rows that do not match it)")


def _shapes(strings: np.ndarray, pattern: re.Pattern) -> tuple[np.ndarray, np.ndarray, list]:
    """Group values by shape (each digit counted as 0) and match each shape once.

    Returns (shape code per row, character matrix (rows, width) of uint32 code points, the match of each shape
    or None). Every row of a shape has its digits at the same positions, so a field is a slice of the matrix."""
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    fits = np.where(lengths <= _MAX_SHAPE_LEN, strings, "")
    chars = np.asarray(fits, dtype=str) if len(fits) else np.zeros(0, dtype="U1")
    width = max(chars.dtype.itemsize // 4, 1)
    chars = chars.astype(f"U{width}")
    matrix = chars.view(np.uint32).reshape(len(chars), width)
    digit = (matrix >= 48) & (matrix <= 57)
    shape = np.ascontiguousarray(np.where(digit, np.uint32(48), matrix)).view(f"U{width}").ravel()
    codes, uniques = pd.factorize(shape)
    return codes, matrix, [pattern.fullmatch(u) if u else None for u in uniques]


def _digits(matrix: np.ndarray, at: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    start, end = span
    block = matrix[at, start:end].astype(np.int64) - 48
    return block @ (10 ** np.arange(end - start - 1, -1, -1, dtype=np.int64))


def _clock_fields(matrix: np.ndarray, at: np.ndarray, m: re.Match) -> tuple:
    hour, minute = _digits(matrix, at, m.span("H")), _digits(matrix, at, m.span("M"))
    second = _digits(matrix, at, m.span("S")) if m["S"] is not None else np.zeros_like(hour)
    fraction = _digits(matrix, at, m.span("F")) * 10 ** (9 - len(m["F"])) if m["F"] is not None else 0
    return hour, minute, second, fraction


def _hour24(hour: np.ndarray, meridiem: str | None) -> tuple[np.ndarray, np.ndarray]:
    """24-hour clock from a 12-hour one with AM/PM (12 AM is midnight); also the rows whose hour cannot be."""
    if not meridiem:
        return hour, np.zeros(hour.shape, dtype=bool)
    wrong = (hour < 1) | (hour > 12)
    return hour % 12 + (12 if meridiem[0] in "Pp" else 0), wrong


def _days_since_1970(year: np.ndarray, month: np.ndarray,
                     day: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Days since 1970-01-01 of each date, the rows that are no date (month 13, 30 February) and the rows whose
    date does not fit in nanosecond timestamps."""
    wrong = (month < 1) | (month > 12) | (day < 1)
    months = np.where(wrong, 0, (year - 1970) * 12 + month - 1)
    start = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    end = (months + 1).astype("datetime64[M]").astype("datetime64[D]").astype(np.int64)
    wrong |= day > end - start
    days = np.where(wrong, 0, start + day - 1)
    outside = np.abs(days) > _MAX_DAYS
    return np.where(wrong | outside, 0, days), wrong, outside


def _checked(parsed: pd.Series, original: pd.Series, rows: Rows, col: str) -> pd.Series:
    """Refuse values pandas could not parse or that fall outside nanosecond timestamps; return them as ns UTC."""
    parsed = pd.Series(parsed).reset_index(drop=True)
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{rows.name}: {rows.at(i)}, column '{col}': cannot parse '{str(original.iloc[i])[:40]}' as "
                        f"a date/time; {_HINT}")
    try:
        return parsed.dt.tz_convert("UTC").dt.as_unit("ns")
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        # timestamps are nanoseconds since 1970 in 64 bits: years before 1677 or after 2262 do not fit
        low, high = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
        outside = ((parsed < low) | (parsed > high)).to_numpy()
        i = int(np.flatnonzero(outside)[0]) if outside.any() else 0
        raise DataError(f"{rows.name}: {rows.at(i)}, column '{col}': '{str(original.iloc[i])[:40]}' is outside the "
                        f"supported dates {pd.Timestamp.min:%Y-%m-%d} .. {pd.Timestamp.max:%Y-%m-%d}; fix the row"
                        ) from None
