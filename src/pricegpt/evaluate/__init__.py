"""Honest evaluation of a trained run: token metrics, probabilistic forecasts of the H-bar return against five
baselines on the same origins, and a report. `evaluate_run(run)` writes RUN/eval/ (see ARCHITECTURE.md).

Forecast origins (`select_origins`). Per symbol, bars are indexed by their return (bar 0 is the first return).
An origin is the position `i` of its first TARGET bar: the context is bars [0, i), the target bars [i, i + H).
Candidates are the bars of the split whose whole target lies in the split, starting at the split's first bar and
strided by H, so targets do not overlap; `max_origins` keeps that many per symbol, evenly spaced. The context
must hold at least one patch. So every context ends strictly before its target's first bar.

Guards:
- the split cutoffs are the run's (train_end/val_end from its metadata, else the tokenizer's train_end). If the
  data given has no origins under those cutoffs (a different file that ends earlier), its own 70/85% cutoffs are
  used instead, and then
- any origin whose target starts at or before the run's train_end (the model trained on it) is refused with a
  PriceGPTError, unless `allow_overlap`; such a run is then flagged in metrics.json ("overlap_allowed"). For the
  test split the cutoff is the run's val_end: the validation bars chose the best checkpoint and the temperature.
- baselines fit their parameters on the train split only and see only bars before each origin (baselines.py).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import SPLIT_NAMES, Splits, iso, parse_time, time_splits
from ..errors import ConfigError, DataError, PriceGPTError

log = logging.getLogger("pricegpt")

DEFAULT_NUM_SAMPLES = 256
EVAL_DIR = "eval"


# --------------------------------------------------------------------------------------------------- series
@dataclass
class SymbolSeries:
    """One symbol's bars in time order: timestamps (n,) datetime64[ns] (UTC) of each return, features (n, F)
    with the log return in column 0, and split labels (n,) (0 train, 1 val, 2 test)."""

    symbol: str
    timestamps: np.ndarray
    features: np.ndarray
    labels: np.ndarray

    @property
    def returns(self) -> np.ndarray:
        return self.features[:, 0]

    @property
    def train_len(self) -> int:
        """Bars in the train split; they are a prefix because bars are in time order."""
        return int(np.sum(self.labels == 0))


def symbol_series(features: dict[str, tuple[np.ndarray, np.ndarray]], splits: Splits) -> dict[str, SymbolSeries]:
    """SymbolSeries per symbol from `{symbol: (timestamps, features)}` (tokenizer.bar_features)."""
    return {s: SymbolSeries(s, times, values, splits.label(pd.to_datetime(times, utc=True)))
            for s, (times, values) in features.items()}


@dataclass
class Origins:
    """Forecast origins: symbols (n,) and index (n,), the position of each origin's first target bar."""

    symbols: np.ndarray
    index: np.ndarray

    @property
    def n(self) -> int:
        return len(self.index)

    def contexts(self, series: dict[str, SymbolSeries], features: dict | None = None) -> list[np.ndarray]:
        """Features of the bars before each origin (views, no copies). `features` ({symbol: (times, values)})
        lets another tokenizer's features of the same bars be used (an ablation run)."""
        if features is None:
            return [series[s].features[:i] for s, i in zip(self.symbols, self.index)]
        return [features[s][1][:i] for s, i in zip(self.symbols, self.index)]

    def realised(self, series: dict[str, SymbolSeries], horizon: int) -> np.ndarray:
        """(n, horizon) realised cumulative log returns over each target."""
        return np.stack([np.cumsum(series[s].returns[i:i + horizon]) for s, i in zip(self.symbols, self.index)])

    def context_end(self, series: dict[str, SymbolSeries]) -> np.ndarray:
        return np.array([series[s].timestamps[i - 1] for s, i in zip(self.symbols, self.index)])

    def target_start(self, series: dict[str, SymbolSeries]) -> np.ndarray:
        return np.array([series[s].timestamps[i] for s, i in zip(self.symbols, self.index)])


def select_origins(series: dict[str, SymbolSeries], split: str, horizon: int, max_origins: int | None = None,
                   min_context: int = 1) -> Origins:
    """Non-overlapping origins of `split` (see the module docstring), symbols in sorted order."""
    if split not in SPLIT_NAMES:
        raise ConfigError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
    code = SPLIT_NAMES.index(split)
    symbols, index = [], []
    for symbol in sorted(series):
        labels = series[symbol].labels
        n = len(labels)
        in_split = np.flatnonzero(labels == code)
        if len(in_split) == 0:
            continue
        first = max(int(in_split[0]), min_context)
        last = int(in_split[-1]) - horizon + 1  # the last start whose whole target stays inside the split
        candidates = np.arange(first, min(last, n - horizon) + 1, horizon)
        if max_origins is not None and len(candidates) > max_origins:
            candidates = candidates[np.unique(np.linspace(0, len(candidates) - 1, max_origins).round().astype(int))]
        symbols += [symbol] * len(candidates)
        index += candidates.tolist()
    return Origins(np.array(symbols, dtype=object), np.array(index, dtype=np.int64))


def check_no_overlap(origins: Origins, series: dict[str, SymbolSeries], cutoff: pd.Timestamp | None,
                     allow_overlap: bool = False, what: str = "train_end") -> int:
    """Refuse (PriceGPTError) origins whose target starts at or before `cutoff` (the run's `what`: train_end, or
    val_end for the test split); returns how many there are (non-zero only with allow_overlap)."""
    if cutoff is None or origins.n == 0:
        return 0
    starts = origins.target_start(series)
    overlapping = int(np.sum(starts <= np.datetime64(cutoff.tz_convert("UTC").tz_localize(None).as_unit("ns"))))
    if overlapping and not allow_overlap:
        first = pd.Timestamp(starts.min()).tz_localize("UTC")
        raise PriceGPTError(
            f"{overlapping} of {origins.n} evaluation origins (from {iso(first)}) are at or before the run's "
            f"{what} {iso(cutoff)}: the model was trained (or selected) on those bars, so the scores would be "
            f"leaked. Evaluate on data after {what}, or pass --allow-overlap to do it anyway (the report is flagged)")
    return overlapping


# ------------------------------------------------------------------------------------------------ evaluation
def evaluate_run(run, data=None, split: str = "test", allow_overlap: bool = False, num_samples: int | None = None,
                 horizon: int | None = None, max_origins: int | None = None, seed: int = 0, out=None,
                 ablation_runs: dict | None = None) -> dict:
    """Evaluate `run` (a directory or a loaded Run) and write `out` (default RUN/eval/) as a whole: the previous
    results stay untouched if anything fails. Returns the metrics.json dict.

    data: price source (default: the run's meta["data"]); horizon: bars (default: the run's meta horizon, else
    one token = patch_len bars); num_samples: paths per origin (default 256); max_origins: cap per symbol;
    ablation_runs: {name: run_dir} scored on the same origins (forecast.ablations[name] = {crps, coverage_90}).
    """
    from ..data import load_prices
    from ..fileio import atomic_dir, write_json
    from ..forecast import Forecaster, risk
    from ..runs import load_run
    from . import report, tokens
    from .baselines import BASELINES, baseline_forecasts
    from .metrics import SamplePredictive, coverage_by_horizon, score

    run = load_run(run, need_tokenizer=True) if isinstance(run, (str, os.PathLike)) else run
    forecaster = Forecaster(run)
    source = data if data is not None else run.meta.get("data")
    if source is None:
        raise ConfigError(f"{run.dir} does not record the data it was built from; pass --data PATH")
    frame = load_prices(source)
    horizon = int(horizon or run.meta.get("horizon") or forecaster.patch_len)
    num_samples = int(num_samples or DEFAULT_NUM_SAMPLES)
    run_train_end = _run_train_end(run)
    features = forecaster.features(frame)
    splits, series, origins = _origins_for(run, frame, features, split, horizon, max_origins, forecaster.patch_len)
    run_val_end = parse_time(run.meta["val_end"], "the run's val_end") if run.meta.get("val_end") else None
    if split == "test" and run_val_end is not None:
        overlapping = check_no_overlap(origins, series, run_val_end, allow_overlap, what="val_end")
    else:
        overlapping = check_no_overlap(origins, series, run_train_end, allow_overlap)
    log.info(f"evaluate: {origins.n} origins of the {split} split, horizon {horizon} bars, {num_samples} samples")

    token_metrics = tokens.token_metrics(run.model, run.tokenizer, frame, splits, split)

    cum = forecaster.sample_cumulative(origins.contexts(series), origins.symbols, horizon, num_samples, seed=seed)
    realised = origins.realised(series, horizon)
    y = realised[:, -1]
    scored = {"model": score(SamplePredictive(cum[..., -1]), y)}
    returns = {s: series[s].returns for s in series}
    train_len = {s: series[s].train_len for s in series}
    predictives, notes = baseline_forecasts(returns, train_len, origins.symbols, origins.index, horizon,
                                            num_samples, seed)
    for name in BASELINES:
        scored[name] = None if predictives[name] is None else score(predictives[name], y)

    forecast = {"horizon_bars": horizon, "num_samples": num_samples, "n_origins": origins.n,
                "temperature": forecaster.temperature,
                "origins_rule": f"every {horizon} bars of the split (non-overlapping targets)"
                                + (f", at most {max_origins} per symbol evenly spaced" if max_origins else "")}
    for name, result in scored.items():
        forecast[name] = None if result is None else _public(result)
    reference = scored["histvol20"]["crps"]
    forecast["crps_relative_to_histvol20"] = {name: (None if r is None else r["crps"] / reference)
                                              for name, r in scored.items()}
    forecast["coverage_by_horizon"] = {"50": coverage_by_horizon(cum, realised, 0.5),
                                       "90": coverage_by_horizon(cum, realised, 0.9)}
    forecast["per_symbol"] = _per_symbol(origins, scored)
    forecast["risk"] = _risk_by_symbol(origins, cum, risk)
    if ablation_runs:
        forecast["ablations"] = _ablations(ablation_runs, frame, series, origins, horizon, num_samples, seed, y)
    forecast["notes"] = notes

    metrics = {"split": split, "train_end": iso(splits.train_end), "val_end": iso(splits.val_end),
               "run_train_end": None if run_train_end is None else iso(run_train_end),
               "data": str(source), "n_symbols": len({str(s) for s in origins.symbols}),
               "n_tokens": token_metrics.pop("n_tokens"), "tokens": token_metrics, "forecast": forecast,
               "overlap_allowed": bool(allow_overlap), "overlapping_origins": overlapping}
    metrics = _json_ready(metrics)

    out = Path(out) if out is not None else Path(run.dir) / EVAL_DIR
    with atomic_dir(out, overwrite=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        report.write_report(tmp, metrics, run=run, series=series, origins=origins, cum=cum, realised=realised)
    log.info(f"evaluate: wrote {out}")
    return metrics


def _run_train_end(run) -> pd.Timestamp | None:
    value = run.meta.get("train_end") or getattr(run.tokenizer.config, "train_end", None)
    return None if value is None else parse_time(value, "the run's train_end")


def _origins_for(run, frame, features, split, horizon, max_origins, min_context):
    """Splits, series and origins: the run's cutoffs, or the data's own when those leave no origin."""
    meta = run.meta
    train_end = _run_train_end(run)
    candidates = []
    if train_end is not None:
        try:
            candidates.append(time_splits(frame, train_end=train_end, val_end=meta.get("val_end")))
        except PriceGPTError as err:
            log.info(f"evaluate: the run's cutoffs do not fit this data ({err}); using the data's own")
    candidates.append(time_splits(frame))
    for splits in candidates:
        series = symbol_series(features, splits)
        origins = select_origins(series, split, horizon, max_origins=max_origins, min_context=min_context)
        if origins.n:
            if splits is not candidates[0]:
                log.warning(f"evaluate: the data has no {split} origins under the run's cutoffs; using its own "
                            f"cutoffs train_end {iso(splits.train_end)}, val_end {iso(splits.val_end)}")
            return splits, series, origins
    raise DataError(f"no {split} origins with a full {horizon}-bar target in the data; use a smaller --horizon "
                    "or data that extends further")


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "per_origin"}


def _per_symbol(origins: Origins, scored: dict) -> dict:
    out = {}
    for symbol in sorted({str(s) for s in origins.symbols}):
        mask = origins.symbols == symbol
        row = {"n_origins": int(mask.sum())}
        for level in ("50", "90"):
            row[f"model_coverage_{level}"] = float(np.mean(scored["model"]["per_origin"][f"inside_{level}"][mask]))
        for name, result in scored.items():
            row[f"crps_{name}"] = None if result is None else float(np.mean(result["per_origin"]["crps"][mask]))
        out[symbol] = row
    return out


def _risk_by_symbol(origins: Origins, cum: np.ndarray, risk) -> dict:
    """Risk numbers from the paths of each symbol's last origin (per-bar returns recovered from cumulative)."""
    out = {}
    for symbol in sorted({str(s) for s in origins.symbols}):
        last = int(np.flatnonzero(origins.symbols == symbol)[-1])
        paths = np.diff(cum[last], axis=-1, prepend=0.0)
        out[symbol] = {"origin_index": int(origins.index[last]), **risk(paths)}
    return out


def _ablations(ablation_runs: dict, frame, series, origins, horizon, num_samples, seed, y) -> dict:
    from ..forecast import Forecaster
    from .metrics import SamplePredictive, coverage_and_width

    out = {}
    for name, run_dir in ablation_runs.items():
        forecaster = Forecaster.from_run(run_dir)
        contexts = origins.contexts(series, forecaster.features(frame))
        cum = forecaster.sample_cumulative(contexts, origins.symbols, horizon, num_samples, seed=seed)
        pred = SamplePredictive(cum[..., -1])
        out[name] = {"run": str(run_dir), "crps": float(np.mean(pred.crps(y))),
                     "coverage_90": coverage_and_width(pred, y, 0.9)[0]}
    return out


def _json_ready(value):
    """Plain Python values; NaN/inf become None (metrics.json is strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


__all__ = ["Origins", "SymbolSeries", "check_no_overlap", "evaluate_run", "select_origins", "symbol_series"]
