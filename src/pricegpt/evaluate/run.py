"""Honest evaluation of a trained run: token metrics, probabilistic forecasts of the H-bar return against five
baselines on the same origins, and a report. `evaluate_run(run)` writes RUN/eval/ (see ARCHITECTURE.md).

Origins and the leakage rule come from data.windows (the same for calibration and backtests):
- the cutoffs are the run's (train_end/val_end from its metadata, else the tokenizer's train_end); when the data
  given has no bar of the split under them (a different file), its own 70/85% cutoffs label it instead;
- origins: from the split's first bar every H bars (targets never overlap), the whole target inside the split,
  at most `max_origins` per symbol evenly spaced; an origin is its first target bar, its context every bar
  before it (at least one patch);
- test origins must start after the run's val_end (the validation bars chose the checkpoint and the
  temperature), val origins after its train_end: others are refused with a LeakageError, unless
  `allow_overlap`, and then the report is flagged ("overlap_allowed");
- baselines fit their parameters on the train split only and see only bars before each origin (baselines.py).
Every value (horizon, num_samples, max_origins, seed) is checked, and the memory of the paths estimated, before
the model scores anything.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..config import check_int
from ..data import iso, load_prices
from ..data.windows import (
    Origins,
    check_leakage,
    require_origins,
    resolve_cutoffs,
    run_cutoffs,
    select_origins,
    source_name,
    symbol_series,
)
from ..errors import ConfigError
from ..fileio import atomic_dir, json_ready, write_json
from ..forecast import Forecaster, check_paths_memory, check_sampling, risk
from ..rundir import RunDir
from ..runs import load_run
from . import report, tokens
from .baselines import BASELINES, baseline_forecasts
from .metrics import SamplePredictive, coverage_and_width, coverage_by_horizon, score

log = logging.getLogger("pricegpt")

DEFAULT_NUM_SAMPLES = 256


def evaluate_run(run, data=None, split: str = "test", allow_overlap: bool = False, num_samples: int | None = None,
                 horizon: int | None = None, max_origins: int | None = None, seed: int = 0, out=None,
                 ablation_runs: dict | None = None) -> dict:
    """Evaluate `run` (a directory or a loaded Run) and write `out` (default RUN/eval/) as a whole: the previous
    results stay untouched if anything fails. Returns the metrics.json dict.

    data: price source, anything `load_prices` reads (a path, sample:NAME, a DataFrame; default: the run's
    meta["data"]); horizon: bars (default: the run's meta horizon, else one token = patch_len bars);
    num_samples: paths per origin (default 256); max_origins: cap per symbol; ablation_runs: {name: run_dir}
    scored on the same origins (forecast.ablations[name] = {crps, coverage_90}).
    """
    if split not in ("val", "test"):
        raise ConfigError(f"--split must be val or test, got {split!r}")
    num_samples = DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
    if max_origins is not None:
        max_origins = check_int(max_origins, "--max-origins", 1, 2**31 - 1)
    check_sampling(1 if horizon is None else horizon, num_samples, seed)
    run = load_run(run, need_tokenizer=True) if isinstance(run, (str, os.PathLike)) else run
    forecaster = Forecaster(run)
    horizon = horizon if horizon is not None else (run.meta.get("horizon") or forecaster.patch_len)
    horizon, num_samples, seed = check_sampling(horizon, num_samples, seed)
    source = data if data is not None else run.meta.get("data")
    if source is None:
        raise ConfigError(f"{run.dir} does not record the data it was built from; pass --data PATH")
    # the run's own data is read as the pipeline read it (its --date-format, if one was given)
    frame = load_prices(source, date_format=run.meta.get("date_format") if data is None else None)
    features = forecaster.features(frame)
    cutoffs = resolve_cutoffs(frame, split, run)
    splits = cutoffs.splits
    series = symbol_series(features, splits)
    origins = select_origins(series, split, horizon, max_origins=max_origins, min_context=forecaster.patch_len)
    require_origins(origins, series, cutoffs, horizon)
    overlapping = check_leakage(origins, series, cutoffs, horizon, allow_overlap)
    check_paths_memory(origins.n, num_samples, horizon)
    log.info(f"evaluate: {origins.n} origins of the {split} split, horizon {horizon} bars, {num_samples} samples")

    token_metrics = tokens.token_metrics(run.model, run.tokenizer, frame, splits, split)

    cum = forecaster.sample_cumulative(origins.contexts(series), origins.symbols, horizon, num_samples, seed=seed,
                                       context_ends=origins.context_end(series))
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
                                + (f", at most {max_origins} per symbol evenly spaced" if max_origins else ""),
                "seeds": "one per origin, from (seed, symbol, the context's last timestamp)"}
    for name, result in scored.items():
        forecast[name] = None if result is None else _public(result)
    reference = scored["histvol20"]["crps"]
    forecast["crps_relative_to_histvol20"] = {name: (None if r is None else r["crps"] / reference)
                                              for name, r in scored.items()}
    forecast["coverage_by_horizon"] = {"50": coverage_by_horizon(cum, realised, 0.5),
                                       "90": coverage_by_horizon(cum, realised, 0.9)}
    forecast["per_symbol"] = _per_symbol(origins, scored)
    forecast["risk"] = _risk_by_symbol(origins, cum)
    if ablation_runs:
        forecast["ablations"] = _ablations(ablation_runs, frame, series, origins, horizon, num_samples, seed, y)
    forecast["notes"] = notes

    run_train_end, run_val_end = run_cutoffs(run)
    metrics = {"split": split, "train_end": iso(splits.train_end), "val_end": iso(splits.val_end),
               "run_train_end": None if run_train_end is None else iso(run_train_end),
               "run_val_end": None if run_val_end is None else iso(run_val_end),
               "data": source_name(source), "n_symbols": len({str(s) for s in origins.symbols}),
               "n_tokens": token_metrics.pop("n_tokens"), "tokens": token_metrics, "forecast": forecast,
               "own_cutoffs": cutoffs.own, "overlap_allowed": bool(allow_overlap),
               "overlapping_origins": overlapping}
    metrics = json_ready(metrics)

    out = Path(out) if out is not None else RunDir(run.dir).eval
    with atomic_dir(out, overwrite=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        report.write_report(tmp, metrics, run=run, series=series, origins=origins, cum=cum, realised=realised)
    log.info(f"evaluate: wrote {out}")
    return metrics


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


def _risk_by_symbol(origins: Origins, cum: np.ndarray) -> dict:
    """Risk numbers from the paths of each symbol's last origin (per-bar returns recovered from cumulative)."""
    out = {}
    for symbol in sorted({str(s) for s in origins.symbols}):
        last = int(np.flatnonzero(origins.symbols == symbol)[-1])
        paths = np.diff(cum[last], axis=-1, prepend=0.0)
        out[symbol] = {"origin_index": int(origins.index[last]), **risk(paths)}
    return out


def _ablations(ablation_runs: dict, frame, series, origins, horizon, num_samples, seed, y) -> dict:
    out = {}
    for name, run_dir in ablation_runs.items():
        forecaster = Forecaster.from_run(run_dir)
        contexts = origins.contexts(series, forecaster.features(frame))
        cum = forecaster.sample_cumulative(contexts, origins.symbols, horizon, num_samples, seed=seed,
                                           context_ends=origins.context_end(series))
        pred = SamplePredictive(cum[..., -1])
        out[name] = {"run": str(run_dir), "crps": float(np.mean(pred.crps(y))),
                     "coverage_90": coverage_and_width(pred, y, 0.9)[0]}
    return out
