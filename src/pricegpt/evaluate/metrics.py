"""Forecast metrics for the H-bar cumulative log return: CRPS, interval coverage and width, PIT, direction.

Every forecast is a *predictive distribution* for one number per origin. Three kinds share one interface
(`crps`, `cdf`, `quantile`), so the model and every baseline are scored by the same code:

- `SamplePredictive(samples (n, S))`: the model's paths and the bootstrap baseline,
- `NormalPredictive(mean (n,), std (n,))`: random walk, HistVol20, EWMA (closed-form CRPS),
- `StudentTPredictive(mean, scale, df)`: GARCH(1,1)-t (closed-form CRPS; needs scipy, which `arch` brings).

CRPS from samples (`crps_samples`) is the fair energy-form estimator of forecast/calibrate.py, which chooses the
sampling temperature with it: calibration and evaluation score with one function.

Conventions: central intervals [q((1-c)/2), q((1+c)/2)] with the probabilities rounded to 12 digits (so the 90%
interval is exactly [q(0.05), q(0.95)]), bounds included; PIT = F(y) (for samples: the fraction below y plus
half the ties); direction is the sign of the predictive median against the sign of the outcome, and a zero
median or a zero outcome counts as half a hit (a coin flip), so a zero-drift forecast scores exactly 0.5.

Per origin and in aggregate. `per_origin(pred, y)` gives one forecaster's per-origin columns (the `<col>_<name>`
columns of RUN/eval/origins.csv): crps, pit, the quantiles q01 q05 q25 q50 q75 q95, `level` (the smallest central
interval level of RELIABILITY_LEVELS, in percent, whose interval holds the outcome; 100 when even the 95%
interval misses it) and the hits hit50 / hit90 (level <= 50 / 90). `summary(columns, y)` computes every
aggregate of metrics.json from those columns only, so each is recomputable from origins.csv; coverage at level L
is the fraction of origins with level <= L (the reliability diagram), which at 50 and 90 is coverage_50/_90.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..forecast.calibrate import crps_samples

COVERAGE_LEVELS = (0.5, 0.9)
RELIABILITY_LEVELS = tuple(range(5, 100, 5))  # central interval levels, percent
QUANTILE_COLUMNS = {"q01": 0.01, "q05": 0.05, "q25": 0.25, "q50": 0.5, "q75": 0.75, "q95": 0.95}
OUTSIDE_LEVEL = 100  # `level` of an outcome outside even the widest interval
PIT_BINS = 10
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)


# ------------------------------------------------------------------------------------------------ CRPS
def normal_cdf(z) -> np.ndarray:
    return torch.special.ndtr(torch.as_tensor(np.asarray(z, dtype=np.float64))).numpy()


def normal_ppf(p) -> np.ndarray:
    return torch.special.ndtri(torch.as_tensor(np.asarray(p, dtype=np.float64))).numpy()


def crps_normal(mean, std, y) -> np.ndarray:
    """Closed-form CRPS of N(mean, std^2) at y (Gneiting & Raftery 2007)."""
    mean, std, y = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (mean, std, y)))
    z = (y - mean) / std
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return std * (z * (2 * normal_cdf(z) - 1) + 2 * pdf - _INV_SQRT_PI)


def crps_student_t(mean, scale, df, y) -> np.ndarray:
    """Closed-form CRPS of a location-scale Student-t (df > 1) at y (Jordan, Krueger & Lerch 2019, scoringRules)."""
    from scipy import special, stats  # optional: scipy comes with `arch` (the baselines extra), as GARCH needs it

    mean, scale, df, y = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (mean, scale, df, y)))
    assert np.all(df > 1), "the Student-t CRPS is finite only for df > 1"
    z = (y - mean) / scale
    cdf, pdf = stats.t.cdf(z, df), stats.t.pdf(z, df)
    const = 2 * np.sqrt(df) * special.beta(0.5, df - 0.5) / ((df - 1) * special.beta(0.5, df / 2) ** 2)
    return scale * (z * (2 * cdf - 1) + 2 * pdf * (df + z * z) / (df - 1) - const)


# ----------------------------------------------------------------------------------------- predictives
class SamplePredictive:
    """An ensemble forecast: samples (n, S)."""

    def __init__(self, samples: np.ndarray):
        self.samples = np.sort(np.asarray(samples, dtype=np.float64), axis=-1)
        assert self.samples.ndim == 2, f"samples must be (origins, samples), got {self.samples.shape}"

    def crps(self, y):
        return crps_samples(self.samples, y)

    def cdf(self, y):
        y = np.asarray(y, dtype=np.float64)[:, None]
        return ((self.samples < y).sum(-1) + 0.5 * (self.samples == y).sum(-1)) / self.samples.shape[-1]

    def quantile(self, q: float):
        return np.quantile(self.samples, q, axis=-1)

    def quantiles(self, probs) -> np.ndarray:
        return np.quantile(self.samples, np.asarray(probs, dtype=np.float64), axis=-1).T


class NormalPredictive:
    def __init__(self, mean, std):
        self.mean, self.std = np.broadcast_arrays(np.asarray(mean, dtype=np.float64), np.asarray(std, np.float64))
        assert np.all(self.std > 0), "normal predictive needs std > 0"

    def crps(self, y):
        return crps_normal(self.mean, self.std, y)

    def cdf(self, y):
        return normal_cdf((np.asarray(y, dtype=np.float64) - self.mean) / self.std)

    def quantile(self, q: float):
        return self.mean + self.std * float(normal_ppf(q))

    def quantiles(self, probs) -> np.ndarray:
        return self.mean[..., None] + self.std[..., None] * normal_ppf(np.asarray(probs, dtype=np.float64))[None, :]


class StudentTPredictive:
    def __init__(self, mean, scale, df):
        self.mean, self.scale, self.df = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64)
                                                               for a in (mean, scale, df)))

    def crps(self, y):
        return crps_student_t(self.mean, self.scale, self.df, y)

    def cdf(self, y):
        from scipy import stats  # optional, see crps_student_t

        return stats.t.cdf((np.asarray(y, dtype=np.float64) - self.mean) / self.scale, self.df)

    def quantile(self, q: float):
        from scipy import stats  # optional, see crps_student_t

        return self.mean + self.scale * stats.t.ppf(q, self.df)

    def quantiles(self, probs) -> np.ndarray:
        from scipy import stats  # optional, see crps_student_t

        probs = np.asarray(probs, dtype=np.float64)
        return self.mean[..., None] + self.scale[..., None] * stats.t.ppf(probs, self.df[..., None])


# -------------------------------------------------------------------------------------- other metrics
def central_probs(level: float) -> tuple[float, float]:
    """The probabilities of the central `level` interval's bounds, rounded so that 0.9 gives exactly 0.05, 0.95."""
    return round((1 - level) / 2, 12), round((1 + level) / 2, 12)


def quantiles(pred, probs) -> np.ndarray:
    """(n, len(probs)) predictive quantiles; one call for predictives that have `quantiles`, else one per prob."""
    if hasattr(pred, "quantiles"):
        return np.asarray(pred.quantiles(probs), dtype=np.float64)
    return np.stack([np.asarray(pred.quantile(p), dtype=np.float64) for p in probs], axis=-1)


def interval(pred, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Central `level` interval (lower, upper) per origin."""
    lo, hi = central_probs(level)
    return pred.quantile(lo), pred.quantile(hi)


def coverage_and_width(pred, y, level: float) -> tuple[float, float]:
    """Fraction of outcomes inside the central `level` interval (bounds included) and its mean width."""
    lo, hi = interval(pred, level)
    y = np.asarray(y, dtype=np.float64)
    return float(np.mean((y >= lo) & (y <= hi))), float(np.mean(hi - lo))


def pit_histogram(pit: np.ndarray, bins: int = PIT_BINS) -> list[int]:
    """Counts of PIT values in `bins` equal bins of [0, 1] (a calibrated forecast gives a flat histogram)."""
    counts, _ = np.histogram(np.clip(pit, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return counts.astype(int).tolist()


def direction_hits(median: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 where sign(median) == sign(y), 0 where they differ, 0.5 where either is exactly zero."""
    s_pred, s_true = np.sign(median), np.sign(y)
    return np.where((s_pred == 0) | (s_true == 0), 0.5, (s_pred == s_true).astype(np.float64))


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (successes may be fractional: half-hits for ties)."""
    if n == 0:
        return float("nan"), float("nan")
    z = float(normal_ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def per_origin(pred, y: np.ndarray) -> dict[str, np.ndarray]:
    """One forecaster's per-origin columns (module docstring): crps, pit, q01..q95, level, hit50, hit90."""
    y = np.asarray(y, dtype=np.float64)
    bounds = [central_probs(level / 100) for level in RELIABILITY_LEVELS]
    probs = sorted({*QUANTILE_COLUMNS.values(), *(p for pair in bounds for p in pair)})
    q = np.broadcast_to(quantiles(pred, probs), (len(y), len(probs)))  # a scalar predictive serves every y
    at = {p: q[:, k] for k, p in enumerate(probs)}
    inside = np.stack([(y >= at[lo]) & (y <= at[hi]) for lo, hi in bounds], axis=1)
    inside = np.logical_or.accumulate(inside, axis=1)  # nested intervals: inside at L means inside above L
    level = np.where(inside.any(axis=1), np.asarray(RELIABILITY_LEVELS)[np.argmax(inside, axis=1)], OUTSIDE_LEVEL)
    out = {"crps": np.asarray(pred.crps(y), dtype=np.float64), "pit": np.asarray(pred.cdf(y), dtype=np.float64)}
    out.update({name: at[p] for name, p in QUANTILE_COLUMNS.items()})
    out["level"] = level.astype(np.int64)
    for c in COVERAGE_LEVELS:
        out[f"hit{round(c * 100)}"] = level <= round(c * 100)
    return out


def summary(columns, y: np.ndarray) -> dict:
    """metrics.json's entry of one forecaster from its per-origin columns (`per_origin`'s keys, or a DataFrame
    slice of origins.csv renamed to them) and the outcomes y (n,)."""
    y = np.asarray(y, dtype=np.float64)
    crps, pit, median = (np.asarray(columns[k], dtype=np.float64) for k in ("crps", "pit", "q50"))
    hits = direction_hits(median, y)
    out = {"crps": float(np.mean(crps))}
    for c in COVERAGE_LEVELS:
        level = round(c * 100)
        lo, hi = (np.asarray(columns[f"q{round(100 * p):02d}"], dtype=np.float64) for p in central_probs(c))
        out[f"coverage_{level}"] = float(np.mean(np.asarray(columns[f"hit{level}"], dtype=np.float64)))
        out[f"width_{level}"] = float(np.mean(hi - lo))
    lo, hi = wilson_interval(float(hits.sum()), len(hits))
    out.update({"directional_accuracy": float(hits.mean()), "directional_accuracy_ci95": [lo, hi],
                "mae_median": float(np.mean(np.abs(median - y))), "pit_histogram": pit_histogram(pit)})
    return out


def score(pred, y: np.ndarray) -> dict:
    """All forecast metrics of one predictive against outcomes y (n,) (`summary`), plus `per_origin`: numpy
    arrays crps, pit, inside_50, inside_90 for plots, meant to be dropped before writing."""
    columns = per_origin(pred, y)
    return {**summary(columns, y), "per_origin": {"crps": columns["crps"], "pit": columns["pit"],
                                                  "inside_50": columns["hit50"], "inside_90": columns["hit90"]}}


def coverage_by_horizon(paths_cum: np.ndarray, realised_cum: np.ndarray, level: float = 0.9) -> list[float]:
    """Coverage of the central `level` interval at each horizon step: paths (n, S, H), realised (n, H) -> (H,)."""
    lo = np.quantile(paths_cum, (1 - level) / 2, axis=1)
    hi = np.quantile(paths_cum, (1 + level) / 2, axis=1)
    return np.mean((realised_cum >= lo) & (realised_cum <= hi), axis=0).tolist()
