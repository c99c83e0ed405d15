"""Crash-safe file output: everything is written to a temporary name beside its target and renamed into place.

A kill at any instant leaves either the old file or the new one, never a half-written file. Directories are
built under a temporary sibling and renamed as a whole, so a half-built output directory never appears.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError, PriceGPTError

_UMASK = os.umask(0)
os.umask(_UMASK)

# Every directory pricegpt builds carries this empty file; only such a directory may ever be replaced or removed.
OUTPUT_MARKER = ".pricegpt-output"
_INPUTS: set[Path] = set()  # resolved paths of the data read in this process: never inside a replaced directory


def _friendly_os_error(err: OSError, path: Path) -> PriceGPTError:
    if err.errno == errno.ENOSPC:
        return PriceGPTError(f"no space left on the device while writing {path}; free some disk space and rerun")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PriceGPTError(f"permission denied writing {path}; choose a directory you can write to")
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return PriceGPTError(f"cannot write {path}: a file is in the way where a folder is needed; choose another "
                             "output path")
    return PriceGPTError(f"cannot write {path}: {err.strerror or err}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success it is renamed onto `path`.

    On any exception the temporary file is removed and the previous `path` (if any) is untouched.
    """
    path = Path(path)
    clean_stale_temporaries(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    except OSError as err:
        raise _friendly_os_error(err, path) from err
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        # again after writing: some writers (safetensors) replace the file and leave it 0600
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise _friendly_os_error(err, path) from err
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def make_dirs(path: str | os.PathLike) -> Path:
    """`mkdir -p path`; a permission problem, a file in the way or a full disk is a PriceGPTError naming it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _friendly_os_error(err, path) from err
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False, default=_json_default) + "\n")


def json_ready(value):
    """Plain Python values for strict JSON: numpy scalars and arrays become numbers and lists, NaN/inf None."""
    import math

    import numpy as np

    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# ----------------------------------------------------------------------------------- names and cells from users
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_file_names(symbols: list[str]) -> dict[str, str]:
    """THE file stem per symbol: the symbol itself when it is a plain name, else a sanitised name plus a short hash
    (no path separators, at most 59 characters); unique even on case-insensitive file systems."""
    import hashlib

    names, taken = {}, set()
    for symbol in symbols:
        stem = symbol
        if not _SAFE_NAME.match(symbol) or symbol.endswith(".") or symbol.lower() in _RESERVED \
                or symbol.lower() in taken:
            cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", symbol).strip("_")[:48] or "symbol"
            stem = f"{cleaned}-{hashlib.sha256(symbol.encode('utf-8')).hexdigest()[:10]}"
        taken.add(stem.lower())
        names[symbol] = stem
    return names


def csv_safe_cell(value):
    """A text cell a spreadsheet would run as a formula (starting with = + - @, a tab or a carriage return) gets
    a leading quote; everything else, numbers included, is returned unchanged."""
    return f"'{value}" if isinstance(value, str) and value.startswith(CSV_FORMULA_START) else value


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def note_input(path: str | os.PathLike) -> None:
    """Record a file or folder this process reads data from: no output replacement may ever delete it."""
    with contextlib.suppress(OSError, RuntimeError):
        _INPUTS.add(Path(path).resolve())


def mark_output(path: str | os.PathLike) -> None:
    """Mark a directory as written by pricegpt, so that a later `--force` may replace it."""
    with contextlib.suppress(FileExistsError):
        Path(path, OUTPUT_MARKER).touch(mode=0o666 & ~_UMASK, exist_ok=True)


def check_replaceable(path: str | os.PathLike, flag: str = "--force") -> None:
    """Refuse to replace or remove `path` unless pricegpt wrote it and it holds nothing the user gave as input.

    Never the filesystem root, the home or current directory (or anything above them), nor a directory that is
    or contains the input data; only directories carrying pricegpt's marker file.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as err:
        raise OutputExistsError(f"{path} exists and cannot be resolved ({err}); choose another --out") from err
    protected = {Path(resolved.anchor), Path.home().resolve(), Path.cwd().resolve()}
    if path.is_symlink() or not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a folder pricegpt wrote; {flag} never replaces it: "
                                "choose another --out")
    for place in protected:
        if resolved == place or resolved in place.parents:
            what = "the current directory" if place == Path.cwd().resolve() else "the root or home directory"
            raise OutputExistsError(f"{path} is {what} or above it; {flag} never deletes it: choose another --out")
    for data in _INPUTS:
        if data == resolved or resolved in data.parents:
            raise OutputExistsError(f"{path} contains the input data {data}; {flag} never deletes it: choose "
                                    "another --out")
    if not (path / OUTPUT_MARKER).is_file():
        raise OutputExistsError(f"{path} exists and was not written by pricegpt (no {OUTPUT_MARKER} marker); "
                                f"{flag} only replaces pricegpt's own folders: choose another --out or remove it "
                                "yourself")


def check_holds_only(path: str | os.PathLike, names, what: str, suffixes=()) -> None:
    """OutputExistsError unless `path` is absent or a folder holding nothing but files named in `names` (or ending
    in one of `suffixes`) and pricegpt's marker: a stage that replaces its own output (an evaluation, a backtest)
    never replaces a run directory or anything else of the user's. `what` names that output ("an evaluation")."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    allowed = {*names, OUTPUT_MARKER}
    entries = list(path.iterdir()) if path.is_dir() and not path.is_symlink() else None
    if entries is None or not all(e.is_file() and (e.name in allowed or e.suffix in suffixes) for e in entries):
        raise OutputExistsError(f"{path} exists and does not hold {what}; choose another --out or remove it ({what} "
                                "replaces only an earlier one's folder)")


def remove_output(path: str | os.PathLike, flag: str = "--force") -> None:
    """Delete a directory pricegpt wrote (after check_replaceable); a missing one is fine."""
    check_replaceable(path, flag)
    shutil.rmtree(path, ignore_errors=True)


def clean_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove the hidden `.NAME.*.tmp` / `.NAME.old` siblings a killed earlier build of `path` left behind.

    Only names made by atomic_path/atomic_dir for this very target are touched; a build running concurrently in
    another process into the same target is not supported anyway (its rename would race ours).
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return
    # exactly the names tempfile.mkstemp/mkdtemp made for this target (8 random characters), so that the
    # temporaries of another target whose name extends this one ("a" vs "a.b") are never touched
    made_here = re.compile(rf"\.{re.escape(path.name)}\.([a-z0-9_]{{8}}\.tmp|old)")
    for stale in parent.iterdir():
        if not made_here.fullmatch(stale.name):
            continue
        if stale.name.endswith(".old") and not path.exists() and not path.is_symlink():
            # killed between atomic_dir's two renames: the previous output is complete, put it back
            with contextlib.suppress(OSError):
                os.replace(stale, path)
                continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                stale.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, flag: str = "--force") -> Iterator[Path]:
    """Build a directory under a temporary sibling name and rename it onto `path` when the block succeeds.

    An existing `path` is an OutputExistsError unless `overwrite`; with `overwrite` it must be a directory that
    pricegpt wrote (check_replaceable), and the old directory is only removed after the new one is complete. On
    failure the partial directory is removed; temporaries of an earlier, killed build of `path` are cleaned first.
    The new directory carries pricegpt's marker file.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another --out or remove it first")
    if overwrite:
        check_replaceable(path, flag)
    clean_stale_temporaries(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)
        mark_output(tmp)
    except OSError as err:
        raise _friendly_os_error(err, path) from err
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _friendly_os_error(err, path) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
