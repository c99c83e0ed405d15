"""What every sampling stage shares: its values checked before any work (`check_sampling`, `check_symbols`,
`check_paths_memory`), the seed of each forecast origin (`origin_seed`: a function of the origin alone, so batching
never changes its paths) and the progress bars (`progress_bar`: a terminal or a notebook, never a log file)."""

from __future__ import annotations

import contextlib
import hashlib
import sys

from ..config import check_int, check_memory, check_num_samples, check_seed, derive_seed, show
from ..config.checks import MAX_HORIZON_BARS
from ..errors import ConfigError, DataError

PATH_COPIES = 3  # float64 copies of all paths alive at once (paths, cumulative, sorted for the scores)


def check_scored_samples(num_samples: int) -> None:
    """A stage that scores its paths with the CRPS (evaluation, calibration) needs at least 2 per origin: the fair
    CRPS compares pairs of samples."""
    if num_samples < 2:
        raise ConfigError(f"--num-samples {num_samples} is too few to score a forecast; the CRPS compares pairs of "
                          "sample paths: use at least 2 (256 is the default)")


def symbol_list(symbols) -> list[str]:
    """A caller's `symbols` as a list of distinct names: one name (a str) is a list of one; anything else must be
    a non-empty iterable of names (ConfigError otherwise; duplicates are refused, each symbol is forecast once)."""
    if isinstance(symbols, str):
        return [symbols]
    try:
        names = [str(s) for s in symbols]
    except TypeError:
        raise ConfigError(f"symbols must be a list of symbol names, got {show(symbols)}") from None
    if not names:
        raise ConfigError("symbols is empty; name at least one symbol, or pass None for every symbol in the data")
    if len(set(names)) < len(names):
        raise ConfigError(f"symbols {show(names)} names a symbol twice; give each once")
    return names


def check_symbols(wanted: list[str], available: list[str]) -> None:
    """DataError naming the symbols the data lacks and (some of) those it has."""
    missing = [s for s in wanted if s not in available]
    if missing:
        known = sorted(available)
        shown = ", ".join(show(s) for s in known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        raise DataError(f"symbol(s) {', '.join(show(s) for s in missing[:5])} not in the data; available: "
                        f"{shown or 'none'}")


# ------------------------------------------------------------------------------------------ values and seeds
def check_sampling(horizon, num_samples, seed, *, horizon_flag: str = "--horizon") -> tuple[int, int, int]:
    """(horizon, num_samples, seed) as ints inside their bounds, else a ConfigError naming the flag and the bound:
    horizon in [1, MAX_HORIZON_BARS], num_samples in [1, 1,000,000], seed in [0, 2**63 - 1]."""
    return (check_int(horizon, horizon_flag, 1, MAX_HORIZON_BARS),
            check_num_samples(num_samples, "num_samples (--num-samples)"), check_seed(seed, "seed (--seed)"))


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a progress bar: `progress` when given; None: in a terminal (stderr is a tty) and in a
    notebook (a Jupyter kernel), not when stderr goes to a file or a CI log."""
    if progress is not None:
        return bool(progress)
    with contextlib.suppress(AttributeError, ValueError):  # no, a replaced or a closed stderr
        if sys.stderr.isatty():
            return True
    return in_notebook()


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel: IPython (imported by the kernel, never here) has a shell with a
    kernel. A terminal IPython has none (its stderr is a tty anyway)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return getattr(shell, "kernel", None) is not None


@contextlib.contextmanager
def progress_bar(total: int, progress: bool | None, label: str, unit: str = "origin"):
    """A tqdm.auto bar (a widget in a notebook, text on stderr elsewhere) while the block runs when
    `show_progress(progress)`, else an object whose `update` does nothing. The bar disappears when done: the
    command line prints what was computed."""
    if not show_progress(progress):
        yield _NoBar()
        return
    from tqdm.auto import tqdm  # imported only when a bar is shown (tqdm.auto pulls in IPython's machinery)

    with tqdm(total=total, desc=label, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr) as bar:
        yield bar


def paths_bytes(n_origins: int, num_samples: int, horizon: int) -> int:
    """Host memory of the sampled paths of `n_origins` origins: the float64 paths and the copies scoring them
    makes (cumulative returns, sorted samples)."""
    return PATH_COPIES * 8 * int(n_origins) * int(num_samples) * int(horizon)


def check_paths_memory(n_origins: int, num_samples: int, horizon: int) -> None:
    """ConfigError, before anything is sampled, when the paths would need more than half the free memory."""
    check_memory(paths_bytes(n_origins, num_samples, horizon),
                 f"{n_origins:,} origin(s) x {num_samples:,} sample paths x {horizon:,} bars",
                 "use a smaller --num-samples (or fewer origins: --max-origins, a shorter split)")


def origin_seed(seed: int, symbol: str, key: int, block: int = 0) -> int:
    """The sampling seed of one origin: derived from (seed, symbol, key) only, key = the timestamp (ns) of the
    context's last bar; `block` numbers the engine calls of an origin whose samples exceed one call."""
    symbol_key = int.from_bytes(hashlib.sha256(str(symbol).encode("utf-8")).digest()[:8], "little")
    return derive_seed(seed, symbol_key, int(key), int(block))
