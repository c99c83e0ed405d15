"""Volatility forecasts judged as a risk desk judges them: QLIKE and the MSE of log variance against realised variance.

For each origin of the main horizon H, every forecaster gives a variance of the H-bar cumulative log return:
  vol_head  the model's volatility head (model.vol_bars; `Forecaster.variance_of_contexts`), when the model has one;
  model     the variance of the model's own sampled paths;
  garch     the variance of GARCH(1,1)-t's simulated sums (evaluate/baselines.py);
  ewma      RiskMetrics EWMA: H s^2.
The realised variance is the sum of the H target bars' squared log returns (a less noisy proxy than the squared
H-bar return, with the same expectation for uncorrelated returns). Losses per origin:
  QLIKE     RV / f - log(RV / f) - 1 (Patton 2011: robust to the noise of the proxy, 0 for a perfect forecast);
  mse_log   (log f - log RV)^2.
An origin whose realised variance is 0 (every target bar flat) has no loss. The headline forecaster (the head, or
the paths without one) is compared with GARCH and EWMA on QLIKE by the same paired date-block bootstrap as the
CRPS (significance.compare): a difference with its 95% interval, a ratio, Diebold-Mariano and a verdict.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import significance
from .metrics import NormalPredictive, SamplePredictive

VOL_FORECASTERS = ("vol_head", "model", "garch", "ewma")
VOL_BASELINES = ("garch", "ewma")


def predictive_variance(pred) -> np.ndarray | None:
    """(n,) variance of a predictive distribution (samples: their variance; normal: std^2); None for None."""
    if pred is None:
        return None
    if isinstance(pred, SamplePredictive):
        return np.var(pred.samples, axis=-1)
    if isinstance(pred, NormalPredictive):
        return pred.std ** 2
    raise TypeError(f"no variance for a {type(pred).__name__}")


def realised_variance(per_bar_returns: np.ndarray) -> np.ndarray:
    """(n, H) target-bar log returns -> (n,) sum of squares."""
    return np.sum(np.asarray(per_bar_returns, dtype=np.float64) ** 2, axis=-1)


def qlike(forecast: np.ndarray, realised: np.ndarray) -> np.ndarray:
    """Per-origin QLIKE RV/f - log(RV/f) - 1; NaN where RV <= 0 or f is not a positive finite number."""
    f, rv = np.asarray(forecast, dtype=np.float64), np.asarray(realised, dtype=np.float64)
    ok = (rv > 0) & np.isfinite(f) & (f > 0)
    ratio = np.where(ok, rv / np.where(ok, f, 1.0), np.nan)
    return ratio - np.log(ratio) - 1.0


def mse_log(forecast: np.ndarray, realised: np.ndarray) -> np.ndarray:
    """Per-origin (log f - log RV)^2; NaN where RV <= 0 or f is not a positive finite number."""
    f, rv = np.asarray(forecast, dtype=np.float64), np.asarray(realised, dtype=np.float64)
    ok = (rv > 0) & np.isfinite(f) & (f > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, (np.log(np.where(ok, f, 1.0)) - np.log(np.where(ok, rv, 1.0))) ** 2, np.nan)


def volatility_block(table: pd.DataFrame, variances: dict[str, np.ndarray | None], realised: np.ndarray,
                     horizon: int, seed: int = 0) -> dict:
    """metrics.json's forecast.volatility: {"horizon_bars", "realised", "n_origins", "forecasters": {name: {"qlike",
    "mse_log", "n"} or None}, "headline", "comparison": {baseline: {...} or None}, "notes"}.

    table: the per-origin table (its `symbol` and `origin` columns pair the losses by date); variances: name ->
    (n,) forecast variances of the H-bar return, parallel to the table's rows (None: did not run)."""
    notes: dict[str, str] = {}
    losses = pd.DataFrame({"symbol": table["symbol"].to_numpy(), "origin": table["origin"].to_numpy()})
    forecasters = {}
    for name in VOL_FORECASTERS:
        f = variances.get(name)
        if f is None:
            forecasters[name] = None
            continue
        q, m = qlike(f, realised), mse_log(f, realised)
        losses[f"{significance.LOSS_PREFIX}{name}"] = q
        known = np.isfinite(q)
        forecasters[name] = {"qlike": float(np.mean(q[known])) if known.any() else None,
                             "mse_log": float(np.mean(m[known])) if known.any() else None, "n": int(known.sum())}
    flat = int(np.sum(np.asarray(realised) <= 0))
    if flat:
        notes["realised"] = f"{flat} origin(s) with zero realised variance (flat target bars) have no loss"
    headline = "vol_head" if forecasters.get("vol_head") else "model"
    compared = [b for b in VOL_BASELINES if forecasters.get(b)]
    comparison = {b: None for b in VOL_BASELINES}
    if forecasters.get(headline) and not forecasters[headline]["n"]:
        notes["comparison"] = "no origin has a non-zero realised variance: the variance forecasts were not compared"
    elif forecasters.get(headline) and compared:
        reasons: dict[str, str] = {}
        result = significance.compare(losses, headline, compared, seed=seed, notes=reasons)
        for b in compared:
            entry = result.get(b)
            if entry is None:
                notes[f"comparison {b}"] = reasons.get(b, "not compared")
                continue
            comparison[b] = {"qlike_diff": entry["crps_diff"], "qlike_diff_ci": entry["crps_diff_ci"],
                             "qlike_ratio": entry["crps_ratio"], "qlike_ratio_ci": entry["crps_ratio_ci"],
                             "dm_stat": entry["dm_stat"], "dm_pvalue": entry["dm_pvalue"],
                             "verdict": entry["verdict"]}
    for b in VOL_BASELINES:
        if not forecasters.get(b):
            notes.setdefault(f"comparison {b}", f"{b} did not run, so it was not compared")
    return {"horizon_bars": int(horizon), "realised": "sum of the target bars' squared log returns",
            "n_origins": int(len(table)), "forecasters": forecasters, "headline": headline,
            "comparison": comparison, "notes": notes}
