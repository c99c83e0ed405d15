"""Crash-safe file output: everything is written to a temporary name beside its target and renamed into place.

A kill at any instant leaves either the old file or the new one, never a half-written file. Directories are
built under a temporary sibling and renamed as a whole, so a half-built output directory never appears.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError, PriceGPTError

_UMASK = os.umask(0)
os.umask(_UMASK)


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


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary sibling name and rename it onto `path` when the block succeeds.

    An existing `path` is an OutputExistsError unless `overwrite`; with `overwrite` the old directory is only
    removed after the new one is complete. On failure the partial directory is removed.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; choose another --out or remove it first")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)
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
