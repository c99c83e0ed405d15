"""Calibration a risk user checks, computed from the per-origin table of one horizon (RUN/eval/origins.csv, see
origins.py), so every number here is recomputable from that file:

- `reliability`: coverage of the central interval at every level 5%, 10%, ..., 95% for each forecaster: the
  fraction of origins whose `level_<name>` (the smallest level whose interval holds the outcome) is <= the level.
  At 50% and 90% it is exactly coverage_50 / coverage_90.
- `by_regime`: origins split into terciles of `vol20` (the standard deviation of the 20 returns before the origin,
  the volatility a forecaster sees when it forecasts), thresholds pooled over all origins of the split
  (`volatility_regimes`: low <= t1 < mid <= t2 < high); per tercile its size, the model's coverage, every
  forecaster's CRPS and 90% coverage and the model's CRPS ratio to each baseline (histvol20 among them).
- `var_tests`: Value-at-Risk of the H-bar log return at 1% and 5% (the q01 / q05 quantile; an exceedance is an
  outcome strictly below it) for the model, garch and fhs: the exceedance rate, Kupiec's (1995) unconditional
  coverage LR test, Christoffersen's (1998) independence LR test on the first-order Markov transitions of each
  symbol's exceedances in time order (counts pooled over symbols, never across two symbols) and their sum, the
  conditional-coverage test. Chi-square p-values in closed form: 1 dof erfc(sqrt(x / 2)), 2 dof exp(-x / 2).
  The tests take origins as independent; symbols moving together on a date make them optimistic.
- `p_up`: the model's P(up) = the fraction of its sampled H-bar returns above zero against the outcome
  realised > 0: Brier score, against the 0.5 climatology (Brier 0.25) and against the train split's frequency of
  positive H-bar returns of the symbol (`p_up_train`), with Brier skill scores 1 - Brier / reference, and a
  10-bin reliability curve (mean predicted P(up), observed up frequency, counts; the bin of p is floor(10 p),
  1.0 in the last).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .metrics import COVERAGE_LEVELS, RELIABILITY_LEVELS

REGIMES = ("low", "mid", "high")
VAR_LEVELS = {"1%": "q01", "5%": "q05"}
VAR_FORECASTERS = ("model", "garch", "fhs")
P_UP_BINS = 10


def _mean(values) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if len(values) else None


# ------------------------------------------------------------------------------------------------ reliability
def reliability(table: pd.DataFrame, names: list[str]) -> dict:
    """{"levels": [0.05, ..., 0.95], "coverage": {name: [coverage at each level] or None}}; None for a forecaster
    without a `level_<name>` column or scores."""
    coverage = {}
    for name in names:
        column = f"level_{name}"
        level = table[column].dropna().to_numpy() if column in table else np.empty(0)
        coverage[name] = [float(np.mean(level <= L)) for L in RELIABILITY_LEVELS] if len(level) else None
    return {"levels": [L / 100 for L in RELIABILITY_LEVELS], "coverage": coverage}


# ------------------------------------------------------------------------------------------- volatility regimes
def volatility_regimes(vol: np.ndarray) -> tuple[np.ndarray, list[float] | None]:
    """Tercile labels ("low", "mid", "high"; "" where vol is NaN) and the pooled thresholds [t1, t2] (None when
    no vol is finite)."""
    vol = np.asarray(vol, dtype=np.float64)
    labels = np.full(len(vol), "", dtype=object)
    finite = np.isfinite(vol)
    if not finite.any():
        return labels, None
    t1, t2 = (float(t) for t in np.quantile(vol[finite], [1 / 3, 2 / 3]))
    labels[finite] = np.where(vol[finite] <= t1, "low", np.where(vol[finite] <= t2, "mid", "high"))
    return labels, [t1, t2]


def by_regime(table: pd.DataFrame, names: list[str]) -> dict:
    """{"feature", "thresholds": [t1, t2], "regimes": {low|mid|high: {"n", "vol_range", "model_coverage_50",
    "model_coverage_90", "crps_ratio": {baseline: model CRPS / baseline CRPS}, "crps": {name},
    "coverage_90": {name}}}} (None where a regime has no origins or a forecaster did not run)."""
    labels, thresholds = volatility_regimes(table["vol20"].to_numpy())
    terciles = {}
    for regime in REGIMES:
        rows = table[labels == regime]
        entry = {"n": len(rows),
                 "vol_range": [float(rows["vol20"].min()), float(rows["vol20"].max())] if len(rows) else None}
        for level in COVERAGE_LEVELS:
            entry[f"model_coverage_{round(level * 100)}"] = _mean(rows[f"hit{round(level * 100)}_model"])
        crps = {n: _mean(rows[f"crps_{n}"].dropna()) if f"crps_{n}" in rows else None for n in names}
        entry["crps_ratio"] = {n: crps["model"] / crps[n] if crps["model"] is not None and crps[n] else None
                               for n in names if n != "model"}
        entry["crps"] = crps
        entry["coverage_90"] = {n: _mean(rows[f"hit90_{n}"].dropna()) if f"hit90_{n}" in rows else None
                                for n in names}
        terciles[regime] = entry
    return {"feature": "vol20: standard deviation of the 20 log returns before the origin",
            "thresholds": thresholds, "regimes": terciles}


# ---------------------------------------------------------------------------------------------- VaR backtests
def _xlogy(x: float, y: float) -> float:
    return 0.0 if x == 0 else x * math.log(y)


def chi2_sf(x: float, dof: int) -> float:
    """Upper tail of the chi-square distribution with 1 or 2 degrees of freedom."""
    x = max(float(x), 0.0)
    if dof == 1:
        return math.erfc(math.sqrt(x / 2.0))
    if dof == 2:
        return math.exp(-x / 2.0)
    raise ValueError(f"chi2_sf is implemented for 1 or 2 degrees of freedom, got {dof}")


def kupiec(n: int, exceedances: int, p: float) -> float:
    """Kupiec's unconditional coverage LR statistic: 2 [log L(x / n) - log L(p)] of `exceedances` in n trials."""
    x = exceedances
    rate = x / n
    return max(0.0, 2.0 * (_xlogy(n - x, 1 - rate) + _xlogy(x, rate) - _xlogy(n - x, 1 - p) - _xlogy(x, p)))


def transitions(sequences: list[np.ndarray]) -> tuple[int, int, int, int]:
    """(n00, n01, n10, n11): counts of consecutive pairs (previous, next) of 0/1 exceedances within each
    sequence."""
    n = np.zeros((2, 2), dtype=np.int64)
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        if len(seq) > 1:
            np.add.at(n, (seq[:-1], seq[1:]), 1)
    return int(n[0, 0]), int(n[0, 1]), int(n[1, 0]), int(n[1, 1])


def christoffersen(n00: int, n01: int, n10: int, n11: int) -> float:
    """Christoffersen's independence LR statistic: a first-order Markov chain of exceedances against a constant
    exceedance probability."""
    total = n00 + n01 + n10 + n11
    if total == 0:
        return 0.0
    pi = (n01 + n11) / total
    pi0 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi1 = n11 / (n10 + n11) if n10 + n11 else 0.0
    markov = _xlogy(n00, 1 - pi0) + _xlogy(n01, pi0) + _xlogy(n10, 1 - pi1) + _xlogy(n11, pi1)
    constant = _xlogy(n00 + n10, 1 - pi) + _xlogy(n01 + n11, pi)
    return max(0.0, 2.0 * (markov - constant))


def var_test(sequences: list[np.ndarray], p: float) -> dict:
    """Exceedance rate and the Kupiec, Christoffersen and conditional coverage tests of 0/1 exceedance sequences
    (one per symbol, in time order) of a VaR at tail probability p."""
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if sequences else np.empty(0)
    n, x = len(flat), int(flat.sum())
    if n == 0:
        return {"n": 0, "exceedances": 0, "rate": None, "expected_rate": p, "kupiec_lr": None,
                "kupiec_pvalue": None, "christoffersen_lr": None, "christoffersen_pvalue": None,
                "conditional_lr": None, "conditional_pvalue": None, "transitions": [0, 0, 0, 0]}
    counts = transitions(sequences)
    uc, ind = kupiec(n, x, p), christoffersen(*counts)
    return {"n": n, "exceedances": x, "rate": x / n, "expected_rate": p, "kupiec_lr": uc,
            "kupiec_pvalue": chi2_sf(uc, 1), "christoffersen_lr": ind, "christoffersen_pvalue": chi2_sf(ind, 1),
            "conditional_lr": uc + ind, "conditional_pvalue": chi2_sf(uc + ind, 2), "transitions": list(counts)}


def var_tests(table: pd.DataFrame, names=VAR_FORECASTERS) -> dict:
    """{name: {"1%": var_test, "5%": var_test} or None (not run)} for the VaR forecasters."""
    ordered = table.sort_values(["symbol", "origin"], kind="stable")
    out = {}
    for name in names:
        if f"q01_{name}" not in ordered or ordered[f"q01_{name}"].isna().all():
            out[name] = None
            continue
        rows = ordered[ordered[f"q01_{name}"].notna()]
        realised = rows["realised"].to_numpy()
        starts = np.flatnonzero(rows["symbol"].to_numpy()[1:] != rows["symbol"].to_numpy()[:-1]) + 1
        out[name] = {}
        for label, column in VAR_LEVELS.items():
            exceed = (realised < rows[f"{column}_{name}"].to_numpy()).astype(np.int64)
            sequences = np.split(exceed, starts) if len(exceed) else []
            out[name][label] = var_test(sequences, float(label.rstrip("%")) / 100)
    return out


# ---------------------------------------------------------------------------------------------------- P(up)
def brier(p, outcome) -> float:
    p, outcome = np.asarray(p, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    return float(np.mean((p - outcome) ** 2))


def reliability_curve(p, outcome, bins: int = P_UP_BINS) -> dict:
    """{"bin_edges", "mean_predicted", "observed_frequency", "counts"} over `bins` equal bins of [0, 1] (None
    where a bin is empty)."""
    p, outcome = np.asarray(p, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    which = np.clip(np.floor(p * bins), 0, bins - 1).astype(np.int64)
    count = np.bincount(which, minlength=bins)
    forecast_sum = np.bincount(which, weights=p, minlength=bins)
    outcome_sum = np.bincount(which, weights=outcome, minlength=bins)
    return {"bin_edges": [k / bins for k in range(bins + 1)],
            "mean_predicted": [float(f / c) if c else None for f, c in zip(forecast_sum, count)],
            "observed_frequency": [float(o / c) if c else None for o, c in zip(outcome_sum, count)],
            "counts": count.astype(int).tolist()}


def p_up(table: pd.DataFrame) -> dict:
    """The model's P(up) scored against the outcome realised > 0 (module docstring)."""
    p, reference = table["p_up_model"].to_numpy(np.float64), table["p_up_train"].to_numpy(np.float64)
    up = (table["realised"].to_numpy(np.float64) > 0).astype(np.float64)
    if len(up) == 0:
        return {"n": 0}
    model, half, train = brier(p, up), brier(np.full(len(up), 0.5), up), brier(reference, up)
    return {"n": len(up), "up_rate": float(up.mean()), "mean_p_up": float(p.mean()),
            "mean_p_up_train": float(reference.mean()),
            "brier": model, "brier_climatology": half, "brier_train_frequency": train,
            "bss_climatology": 1.0 - model / half,
            "bss_train_frequency": 1.0 - model / train if train > 0 else None,
            "reliability": reliability_curve(p, up)}


__all__ = ["REGIMES", "VAR_FORECASTERS", "brier", "by_regime", "chi2_sf", "christoffersen", "kupiec", "p_up",
           "reliability", "reliability_curve", "transitions", "var_test", "var_tests", "volatility_regimes"]
