"""Paired significance of CRPS differences: is the model better than a baseline, or was it luck?

Input is the per-origin loss table (RUN/eval/origins.csv as a DataFrame): columns `symbol`, `origin` (a timestamp)
and one loss column `crps_<name>` per forecaster. Losses are paired: every forecaster is scored on the same rows.

Why dates, not rows. Forecast errors of different symbols at the same date are cross-correlated (one market move hits
them all) and errors of nearby dates are serially correlated (volatility clusters), so rows are far from independent.
Everything here therefore works on per-date aggregates (`date_losses`): the sum of each forecaster's losses over the
origins of a date and their count. The mean over all origins (the `crps` of metrics.json) is sum over dates / count,
and the per-date *loss series* used for block lengths, the DM test and the MCS is the date's sum times
n_dates / n_origins: its mean is exactly that pooled mean, and with the same symbols on every date it is the date
average.

- `date_block_bootstrap`: Politis & Romano's stationary bootstrap over dates (blocks of consecutive dates with
  geometric lengths, wrapping around), so a resampled date brings all its symbols along. Each replicate recomputes
  the pooled mean of every forecaster as (resampled sum) / (resampled count). Vectorised over replicates (index
  arrays built by cumulative sums, then one gather per forecaster): 2000 replicates of 5000 dates take ~0.3 s.
- `politis_white_block_length`: the expected block length, from Politis & White (2004) with the correction of Patton,
  Politis & White (2009), implemented from the paper (arch's `optimal_block_length` is close; the tests compare).
  `compare` computes it on the per-date loss differential and clips it to [1, n_dates / 2].
- `diebold_mariano`: DM statistic on the per-date loss differential with the Newey-West (Bartlett) long-run
  variance at lag floor(4 (T/100)^(2/9)) (the textbook rule, kept apart from the bootstrap's tuning so the two
  checks do not share a choice) and a two-sided normal p-value. No Harvey-Leybourne-Newbold correction: it is
  derived for the truncated (rectangular) variance of h-step forecasts, not for Newey-West, and `compare` needs at
  least MIN_DATES dates anyway, where the verdict comes from the bootstrap, not from DM.
  A constant differential has no variance: DM 0 with p-value 1 when it is zero; when it is a non-zero constant the
  statistic is infinite and reported as None with p-value 0.
- `compare`: per baseline the mean CRPS difference (model minus baseline; negative is good for the model) and the
  CRPS ratio (ratio of means, recomputed in every replicate), each with a percentile interval, the DM test and a
  verdict from the interval of the difference: `better` (all below 0), `worse` (all above 0), else
  `no significant difference`.
- `headline_verdict`: the comparison against the baseline with the lowest mean CRPS.
- `model_confidence_set`: Hansen, Lunde & Nason's MCS over all forecasters via `arch.bootstrap.MCS` when arch is
  installed (an optional dependency), on the per-date losses.

Missing losses are dropped pairwise: a comparison of the model with B uses the rows where both are finite (so one
baseline's gaps do not shrink another's comparison); the MCS uses the rows where all its forecasters are finite.
Row order does not matter, not even in the last digit (rows are put in (origin, symbol) order first). A comparison
over fewer than MIN_DATES dates cannot give a trustworthy interval, so it is None with the reason in `notes`, the
way a baseline that cannot run is reported.

Calibration (tests/test_significance.py simulates 10 correlated symbols with clustered volatility): two equally good
forecasters are declared different in about 6% of datasets at 200 dates (nominal 5%), 8% at 50 dates and 11-12% at
10-20 dates (percentile intervals are a little optimistic in short samples); a forecaster 15% too wide is declared
worse about 90% of the time at 2000 origins when symbols are mildly correlated (0.2), much less often when they
move together strongly (40-55% at 0.5): then 2000 origins hold far fewer independent observations.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError

MIN_DATES = 10
DEFAULT_N_BOOT = 2000
DEFAULT_LEVEL = 0.95
LOSS_PREFIX = "crps_"
VERDICTS = ("better", "no significant difference", "worse")
_CELLS_PER_CHUNK = 2_000_000  # replicates x dates per chunk: bounded memory, and int32 indices suffice


# ------------------------------------------------------------------------------------------ per-date losses
@dataclass
class DateLosses:
    """Per-date aggregates of paired losses: dates (D,) sorted, names (K,), sums (D, K), counts (D,)."""

    dates: pd.DatetimeIndex
    names: list[str]
    sums: np.ndarray
    counts: np.ndarray

    @property
    def n_dates(self) -> int:
        return len(self.dates)

    @property
    def means(self) -> np.ndarray:
        """(K,) mean loss over all origins."""
        return self.sums.sum(axis=0) / self.counts.sum()

    @property
    def series(self) -> np.ndarray:
        """(D, K) per-date losses scaled so that their mean over dates is the mean over origins."""
        return self.sums * (self.n_dates / self.counts.sum())


def loss_names(table: pd.DataFrame) -> list[str]:
    """Forecaster names that have a loss column `crps_<name>` in `table`, in column order."""
    return [c[len(LOSS_PREFIX):] for c in table.columns if str(c).startswith(LOSS_PREFIX)]


def date_losses(table: pd.DataFrame, names: list[str], unit: str = "date") -> DateLosses:
    """Aggregate the losses `crps_<name>` of `names` per date, over the rows where all of them are finite.

    unit: "date" groups origins by their UTC calendar day (intraday origins of one day move together too);
    "origin" groups by the exact origin timestamp. Raises DataError for a table that cannot be paired.
    """
    return _aggregate(*_paired_losses(table, names, unit), names)


def _paired_losses(table: pd.DataFrame, names: list[str], unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked grouping keys (n,) and losses (n, K), rows in (origin, symbol) order: sums then add up in the
    same order however the table was sorted, so results do not depend on its row order even in the last digit."""
    losses = _check_table(table, names)
    origins = _origins(table)
    order = np.lexsort((pd.factorize(table["symbol"].astype(str), sort=True)[0], origins.to_numpy()))
    if unit == "date":
        keys = origins.dt.floor("D").to_numpy()
    elif unit == "origin":
        keys = origins.to_numpy()
    else:
        raise ConfigError(f"unit must be 'date' (UTC calendar day of the origin) or 'origin', got {unit!r}")
    return keys[order], losses[order]


def _aggregate(keys: np.ndarray, losses: np.ndarray, names: list[str]) -> DateLosses:
    """keys (n,) datetime64 (UTC), losses (n, K) -> DateLosses over the rows where every loss is finite."""
    keep = np.isfinite(losses).all(axis=1)
    dates, day = np.unique(keys[keep], return_inverse=True)
    sums = np.stack([np.bincount(day, weights=column, minlength=len(dates)) for column in losses[keep].T], axis=1)
    counts = np.bincount(day, minlength=len(dates)).astype(np.float64)
    return DateLosses(pd.DatetimeIndex(dates).tz_localize("UTC"), list(names),
                      sums.reshape(len(dates), len(names)), counts)


def _origins(table: pd.DataFrame) -> pd.Series:
    """Origins as naive UTC timestamps (naive input is taken as UTC)."""
    try:
        origins = pd.to_datetime(table["origin"], utc=True, format="ISO8601")
    except (ValueError, TypeError) as err:
        raise DataError(f"column origin of the per-origin loss table is not a timestamp: {err}") from None
    if origins.isna().any():
        raise DataError(f"column origin of the per-origin loss table has {int(origins.isna().sum())} missing "
                        "timestamps")
    return origins.dt.tz_convert(None)


def _check_table(table: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The (n, K) losses `crps_<name>` of `names` (NaN where missing), after checking the table can be paired."""
    if not isinstance(table, pd.DataFrame):
        raise DataError(f"the per-origin loss table must be a pandas DataFrame, got {type(table).__name__}")
    columns = [LOSS_PREFIX + n for n in names]
    missing = [c for c in ["symbol", "origin", *columns] if c not in table.columns]
    if missing:
        raise DataError(f"the per-origin loss table has no column {', '.join(missing)}; it has "
                        f"{', '.join(map(str, table.columns))}")
    if "horizon" in table.columns and table["horizon"].nunique() > 1:
        raise DataError(f"the per-origin loss table mixes horizons {sorted(table['horizon'].unique().tolist())}; "
                        "compare one horizon at a time (filter on the horizon column)")
    duplicated = table.duplicated(["symbol", "origin"])
    if duplicated.any():
        row = table[duplicated].iloc[0]
        raise DataError(f"the per-origin loss table has {int(duplicated.sum())} repeated (symbol, origin) rows, "
                        f"first {row['symbol']} at {row['origin']}: each origin must be scored once per forecaster")
    losses = np.empty((len(table), len(columns)))
    for j, column in enumerate(columns):
        values = pd.to_numeric(table[column], errors="coerce")
        unreadable = int((values.isna() & table[column].notna()).sum())
        if unreadable:
            raise DataError(f"column {column} of the per-origin loss table has {unreadable} values that are not "
                            "numbers")
        losses[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isinf(losses[:, j]).any():
            raise DataError(f"column {column} of the per-origin loss table has {int(np.isinf(losses[:, j]).sum())} "
                            "infinite losses: a forecast without a finite CRPS cannot be compared")
    return losses


# ----------------------------------------------------------------------------------------------- bootstrap
def politis_white_block_length(x) -> float:
    """Expected block length of the stationary bootstrap for the mean of the series x (n,), by Politis & White
    (2004) with Patton, Politis & White's (2009) correction: b = (2 G^2 / D_SB)^(1/3) n^(1/3), D_SB = 2 g(0)^2.

    G = sum_k lambda(k/M) |k| gamma(k) and g(0) = sum_k lambda(k/M) gamma(k) over |k| <= M, with the flat-top window
    lambda(t) = min(1, 2 (1 - |t|)) and M = 2 m (at most m_max = ceil(sqrt(n)) + K_N), where m >= 1 is the first
    lag after which K_N = 5 consecutive autocorrelations lie within +-2 sqrt(log10(n) / n) (m_max if none).
    Capped at ceil(min(3 sqrt(n), n / 3)); not clipped below (white noise gives about 1 to 2, or less).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    assert x.ndim == 1 and np.isfinite(x).all(), "the block length needs a finite 1-d series"
    if n < 4:
        return 1.0
    x = x - x.mean()
    k_n = max(5, math.ceil(math.sqrt(math.log10(n))))
    m_max = math.ceil(math.sqrt(n)) + k_n
    lags = min(m_max + k_n, n - 1)
    gamma = np.array([x[k:] @ x[:n - k] / n for k in range(lags + 1)])
    if gamma[0] <= 1e-300:
        return 1.0
    insignificant = np.abs(gamma[1:] / gamma[0]) < 2.0 * math.sqrt(math.log10(n) / n)  # rho(1..lags)
    m_hat = m_max
    for m in range(1, lags - k_n + 1):
        if insignificant[m:m + k_n].all():  # rho(m+1) .. rho(m+k_n)
            m_hat = m
            break
    big_m = min(2 * m_hat, m_max, lags)
    k = np.arange(1, big_m + 1)
    window = np.minimum(1.0, 2.0 * (1.0 - k / big_m))
    g_big = 2.0 * np.sum(window * k * gamma[k])
    g_zero = gamma[0] + 2.0 * np.sum(window * gamma[k])
    if g_zero <= 0:  # the flat-top spectral estimate can go negative (strong negative correlation): short blocks
        return 1.0
    b = (g_big ** 2 / g_zero ** 2) ** (1.0 / 3.0) * n ** (1.0 / 3.0)
    return float(min(b, math.ceil(min(3.0 * math.sqrt(n), n / 3.0))))


def date_block_bootstrap(sums: np.ndarray, counts: np.ndarray, block_length: float,
                         n_boot: int = DEFAULT_N_BOOT, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Stationary-bootstrap replicates of the pooled mean loss: sums (D, K) and counts (D,) per date (in time
    order, from `date_losses`) -> (n_boot, K) replicate means, each sum of resampled sums / sum of resampled counts.

    Blocks of consecutive dates start at uniform dates and last Geometric(1 / block_length) dates, wrapping around
    at the end (Politis & Romano 1994), so every date is equally likely at every position.
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    n_dates = len(counts)
    assert sums.ndim == 2 and sums.shape[0] == n_dates, f"sums {sums.shape} and counts {counts.shape} disagree"
    assert n_dates >= 1 and block_length >= 1, f"need dates and block_length >= 1, got {n_dates}, {block_length}"
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    values = np.column_stack([sums, counts])  # (D, K + 1)
    out = np.empty((n_boot, sums.shape[1]))
    chunk = max(1, _CELLS_PER_CHUNK // n_dates)
    for first in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - first)
        index = _stationary_indices(rng, rows, n_dates, block_length)
        # gathers, not a matrix product of multiplicities: BLAS threads stall on a busy machine at these sizes
        totals = np.stack([np.take(column, index).sum(axis=1) for column in values.T], axis=1)
        out[first:first + rows] = totals[:, :-1] / totals[:, -1:]
    return out


def _stationary_indices(rng: np.random.Generator, rows: int, n_dates: int, block_length: float) -> np.ndarray:
    """(rows, n_dates) resampled date indices.

    A block starts at position 0 and wherever a Bernoulli(1 / block_length) fires, at a uniform date; inside it the
    index is start + (position - block's first position), wrapped. The per-block offset (start - first position) is
    carried forward by a cumulative sum of its changes, which is cheaper than gathering by block."""
    jumps = rng.random((rows, n_dates), dtype=np.float32) < 1.0 / block_length
    jumps[:, 0] = True
    flat = np.flatnonzero(jumps)
    offset = rng.integers(0, n_dates, size=len(flat), dtype=np.int32) - (flat % n_dates).astype(np.int32)
    change = np.diff(offset, prepend=np.int32(0))
    row_first = np.searchsorted(flat, np.arange(rows) * n_dates)
    change[row_first] = offset[row_first]  # each row's cumulative sum starts afresh
    index = np.zeros((rows, n_dates), dtype=np.int32)
    index.ravel()[flat] = change
    np.cumsum(index, axis=1, out=index)
    index += np.arange(n_dates, dtype=np.int32)
    index -= n_dates * (index >= n_dates)  # start + steps into the block lies in [0, 2 n_dates)
    return index


# --------------------------------------------------------------------------------------- Diebold-Mariano
def newey_west_lags(n: int) -> int:
    """The usual Newey-West truncation lag floor(4 (n / 100)^(2/9))."""
    return int(math.floor(4.0 * (n / 100.0) ** (2.0 / 9.0)))


def newey_west_variance(x, lags: int | None = None) -> float:
    """Long-run variance of x (n,): gamma(0) + 2 sum_{k=1..L} (1 - k / (L + 1)) gamma(k), gamma with divisor n
    (Bartlett kernel, never negative). lags L defaults to `newey_west_lags(n)`."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    lags = newey_west_lags(n) if lags is None else int(lags)
    x = x - x.mean()
    total = x @ x / n
    for k in range(1, min(lags, n - 1) + 1):
        total += 2.0 * (1.0 - k / (lags + 1.0)) * (x[k:] @ x[:-k]) / n
    return float(total)


def diebold_mariano(differential, lags: int | None = None) -> tuple[float | None, float]:
    """(statistic, two-sided normal p-value) of H0: mean(differential) = 0, with the Newey-West variance.

    A constant differential: (0.0, 1.0) when it is zero, (None, 0.0) otherwise (the statistic is infinite)."""
    d = np.asarray(differential, dtype=np.float64)
    n = len(d)
    mean = float(d.mean())
    variance = newey_west_variance(d, lags)
    scale = float(np.max(np.abs(d))) if n else 0.0
    if variance <= (1e-12 * scale) ** 2:  # constant up to rounding
        return (0.0, 1.0) if abs(mean) <= 1e-12 * scale else (None, 0.0)
    stat = mean / math.sqrt(variance / n)
    return float(stat), float(math.erfc(abs(stat) / math.sqrt(2.0)))


# ----------------------------------------------------------------------------------------------- comparison
def compare(table: pd.DataFrame, model: str = "model", baselines: list[str] | None = None, seed: int = 0,
            n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL, unit: str = "date",
            notes: dict | None = None) -> dict:
    """Paired comparison of `model` with each baseline (names without the `crps_` prefix; default: every other
    loss column of `table`). Returns {baseline: {"crps_diff", "crps_diff_ci": [lo, hi], "crps_ratio",
    "crps_ratio_ci": [lo, hi], "dm_stat", "dm_pvalue", "verdict", "block_length", "n_dates"}} of plain floats,
    or {baseline: None} with the reason in `notes[baseline]` when a baseline has no scores or too few dates.

    Each baseline draws its replicates from a generator seeded by (seed, its name): its result does not depend on
    which other baselines are compared. `level` is the central coverage of both intervals.
    """
    if not 0.0 < level < 1.0:
        raise ConfigError(f"the interval level must lie strictly between 0 and 1, got {level}")
    if n_boot < 100:
        raise ConfigError(f"n_boot must be at least 100 for a {level:.0%} percentile interval, got {n_boot}")
    baselines = [n for n in loss_names(table) if n != model] if baselines is None else list(baselines)
    if model in baselines:
        raise ConfigError(f"{model!r} is the model; it cannot also be a baseline")
    keys, losses = _paired_losses(table, [model, *baselines], unit)
    if not np.isfinite(losses[:, 0]).any():
        raise DataError(f"column {LOSS_PREFIX + model} of the per-origin loss table has no finite loss")
    notes = {} if notes is None else notes
    return {baseline: _compare_pair(keys, losses[:, [0, j + 1]], model, baseline, seed, n_boot, level, notes)
            for j, baseline in enumerate(baselines)}


def _compare_pair(keys, losses, model, baseline, seed, n_boot, level, notes) -> dict | None:
    """One baseline: keys (n,), losses (n, 2) of the model and the baseline."""
    if not np.isfinite(losses[:, 1]).any():
        notes[baseline] = f"no finite {LOSS_PREFIX + baseline} loss: {baseline} was not compared with {model}"
        return None
    losses = _aggregate(keys, losses, [model, baseline])
    if losses.n_dates < MIN_DATES:
        notes[baseline] = (f"only {losses.n_dates} dates have losses for both {model} and {baseline}; at least "
                           f"{MIN_DATES} are needed for a block-bootstrap interval, so no verdict")
        return None
    model_mean, baseline_mean = losses.means
    if baseline_mean <= 0:
        notes[baseline] = f"the mean {LOSS_PREFIX + baseline} is {baseline_mean:g}: no CRPS ratio can be formed"
        return None
    differential = losses.series[:, 0] - losses.series[:, 1]
    block = float(np.clip(politis_white_block_length(differential), 1.0, losses.n_dates / 2.0))
    rng = np.random.default_rng([seed, zlib.crc32(baseline.encode())])
    replicates = date_block_bootstrap(losses.sums, losses.counts, block, n_boot, rng)
    tails = [(1.0 - level) / 2.0, (1.0 + level) / 2.0]
    diff_ci = np.quantile(replicates[:, 0] - replicates[:, 1], tails)
    ratio_ci = np.quantile(replicates[:, 0] / replicates[:, 1], tails)
    dm_stat, dm_pvalue = diebold_mariano(differential)
    return {"crps_diff": float(model_mean - baseline_mean), "crps_diff_ci": [float(v) for v in diff_ci],
            "crps_ratio": float(model_mean / baseline_mean), "crps_ratio_ci": [float(v) for v in ratio_ci],
            "dm_stat": dm_stat, "dm_pvalue": dm_pvalue, "verdict": verdict(diff_ci),
            "block_length": block, "n_dates": losses.n_dates}


def verdict(diff_ci) -> str:
    """The model relative to a baseline from the interval of the mean CRPS difference (model minus baseline)."""
    lo, hi = diff_ci
    return "better" if hi < 0 else "worse" if lo > 0 else "no significant difference"


def headline_verdict(comparison: dict, means: dict) -> dict:
    """The comparison with the best baseline: the one of `comparison` (not None) with the lowest mean CRPS in
    `means` ({name: mean CRPS over the same origins}; ties go to the first name in sorted order).
    Returns {"best_baseline", "verdict", "crps_ratio", "crps_ratio_ci"}, all None when nothing was compared."""
    candidates = [name for name, entry in comparison.items() if entry is not None and means.get(name) is not None
                  and math.isfinite(means[name])]
    if not candidates:
        return {"best_baseline": None, "verdict": None, "crps_ratio": None, "crps_ratio_ci": None}
    best = min(sorted(candidates), key=lambda name: means[name])
    entry = comparison[best]
    return {"best_baseline": best, "verdict": entry["verdict"], "crps_ratio": entry["crps_ratio"],
            "crps_ratio_ci": list(entry["crps_ratio_ci"])}


# ----------------------------------------------------------------------------------- model confidence set
def model_confidence_set(table: pd.DataFrame, columns: list[str] | None = None, size: float = 0.1, seed: int = 0,
                         n_boot: int = 1000, unit: str = "date", notes: dict | None = None) -> dict | None:
    """Hansen, Lunde & Nason's (2011) model confidence set at `size` over the forecasters `columns` (names without
    the `crps_` prefix; default all), on their per-date losses over the rows where all are finite, with arch's
    stationary bootstrap (range statistic) at the largest Politis-White block length of each forecaster's loss
    minus the average loss. Returns {"included": [names], "pvalues": {name: p}, "size", "block_length",
    "n_dates"}, or None with the reason in notes["model_confidence_set"] (arch missing, too little data)."""
    notes = {} if notes is None else notes
    names = loss_names(table) if columns is None else list(columns)
    keys, losses = _paired_losses(table, names, unit)
    has_scores = np.isfinite(losses).any(axis=0)
    scored = [n for n, ok in zip(names, has_scores) if ok]
    if len(scored) < 2:
        notes["model_confidence_set"] = f"needs at least two forecasters with losses, got {scored}"
        return None
    try:
        from arch.bootstrap import MCS  # optional dependency (the `baselines` extra): only this function needs it
    except ImportError:
        notes["model_confidence_set"] = "arch is not installed (pip install 'pricegpt[baselines]')"
        return None
    losses = _aggregate(keys, losses[:, has_scores], scored)
    if losses.n_dates < MIN_DATES:
        notes["model_confidence_set"] = (f"only {losses.n_dates} dates have losses for all of {', '.join(scored)}; "
                                         f"at least {MIN_DATES} are needed")
        return None
    series = losses.series
    relative = series - series.mean(axis=1, keepdims=True)
    block = max(politis_white_block_length(column) for column in relative.T)
    block = int(round(float(np.clip(block, 1.0, losses.n_dates / 2.0))))
    mcs = MCS(pd.DataFrame(series, columns=scored), size=size, reps=n_boot, block_size=block, method="R",
              bootstrap="stationary", seed=np.random.default_rng(seed))
    mcs.compute()
    pvalues = mcs.pvalues["Pvalue"]
    return {"included": sorted(str(n) for n in mcs.included), "pvalues": {str(n): float(pvalues[n]) for n in scored},
            "size": float(size), "block_length": block, "n_dates": losses.n_dates}


__all__ = ["DEFAULT_LEVEL", "DEFAULT_N_BOOT", "MIN_DATES", "VERDICTS", "DateLosses", "compare", "date_block_bootstrap",
           "date_losses", "diebold_mariano", "headline_verdict", "loss_names", "model_confidence_set",
           "newey_west_lags", "newey_west_variance", "politis_white_block_length", "verdict"]
