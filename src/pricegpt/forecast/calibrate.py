"""Temperature calibration: the sampling temperature with the lowest CRPS on the validation split, and the CRPS
of sample forecasts it is scored with (evaluation scores with the same function).

CRPS from samples is the energy form E|X - y| - 0.5 E|X - X'|, with the pair term computed in O(S log S) from
the sorted samples (sum_{i,j} |x_i - x_j| = 2 sum_i (2i - S - 1) x_(i), i = 1..S). The *fair* estimator (pairs
i != j, divisor S(S - 1)) is unbiased for the CRPS of the distribution the samples come from, so a sampled
forecast is not penalised against a closed-form one for having finitely many samples.

Across processes (`torchrun --nproc-per-node=N -m pricegpt -- calibrate ...`): the processes sample each temperature's
origins together, each its share (shard.py), and rank 0 scores them and writes calibration.json, the same bytes as
one process (one seed per origin); the other processes return None.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from ..config import check_int, check_temperature
from ..data import iso, load_prices
from ..data.windows import (
    check_leakage,
    require_origins,
    resolve_cutoffs,
    run_cutoffs,
    select_origins,
    symbol_series,
)
from ..errors import ConfigError
from ..runs import load_run
from ..train.dist import dist_env
from .forecaster import Forecaster, forecaster_of, resolve_model
from .sampling import check_paths_memory, check_sampling, check_scored_samples
from .shard import sharding

log = logging.getLogger("pricegpt")

TEMPERATURE_GRID = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
# Validation origins: at most MAX_ORIGINS_PER_SYMBOL per symbol, more when few symbols would leave fewer than
# MIN_CALIBRATION_ORIGINS in all (a single 15-minute series calibrated on 50 origins picked its temperature by noise)
MAX_ORIGINS_PER_SYMBOL = 50
MIN_CALIBRATION_ORIGINS = 400
FEW_CALIBRATION_ORIGINS = 30  # fewer than this: a warning


def crps_samples(samples: np.ndarray, y: np.ndarray, fair: bool = True) -> np.ndarray:
    """CRPS of sample forecasts: samples (..., S), outcomes y (...) -> (...).

    fair=True divides the pair term by S(S - 1) (unbiased); fair=False by S^2 (the CRPS of the empirical CDF).
    """
    x = np.sort(np.asarray(samples, dtype=np.float64), axis=-1)
    y = np.asarray(y, dtype=np.float64)
    S = x.shape[-1]
    assert x.shape[:-1] == y.shape, f"samples {x.shape} and outcomes {y.shape} disagree"
    assert S >= 2 or not fair, "the fair CRPS needs at least 2 samples"
    abs_err = np.abs(x - y[..., None]).mean(axis=-1)
    weights = 2.0 * np.arange(1, S + 1) - S - 1
    pair_sum = 2.0 * (x * weights).sum(axis=-1)  # sum over all ordered pairs of |x_i - x_j|
    return abs_err - 0.5 * pair_sum / (S * (S - 1) if fair else S * S)


def calibrate_temperature(run, frame, splits, horizon: int, num_samples: int = 256,
                          grid=TEMPERATURE_GRID, max_origins: int | None = None, seed: int = 0,
                          progress: bool | None = None, save: bool = True) -> dict | None:
    """Pick the sampling temperature of the H-bar return on the VALIDATION split and store it in
    RUN/calibration.json. Returns what it stored (None on the processes of a torchrun launch other than rank 0,
    which writes).

    The rule (`choose_temperature`): the temperatures whose mean CRPS is within one standard error of the lowest
    (paired over the same origins) cannot be told apart by CRPS; of those, the one whose 90% interval covers
    closest to 90% of the outcomes. Origins are chosen as in evaluation, at most `max_origins` per symbol (default:
    MAX_ORIGINS_PER_SYMBOL, raised so that there are about MIN_CALIBRATION_ORIGINS in all when the data has few
    symbols).

    frame: prices (anything `load_prices` reads); splits: the cutoffs, or None for the run's. The origins are those
    of data.windows' "calibrate" stage: targets after the run's train_end and at or before its val_end, else a
    LeakageError. Every grid value is scored on the same origins with the same seeds (common random numbers), so
    differences between temperatures are not sampling noise of the origins. progress: a bar per temperature on
    stderr (None: only when stderr is a terminal)."""
    horizon, num_samples, seed = check_sampling(horizon, num_samples, seed)
    check_scored_samples(num_samples)
    grid = [check_temperature(t, "temperature grid value") for t in grid]
    if not grid:
        raise ConfigError("the temperature grid is empty; give at least one temperature")
    if max_origins is not None:
        max_origins = check_int(max_origins, "max_origins (--max-origins)", 1, 2**31 - 1)
    forecaster = run if isinstance(run, Forecaster) else forecaster_of(run)  # an ensemble is calibrated pooled
    run = forecaster.run
    frame = load_prices(frame)
    cutoffs = resolve_cutoffs(frame, "calibrate", run, train_end=None if splits is None else splits.train_end,
                              val_end=None if splits is None else splits.val_end)
    series = symbol_series(forecaster.features(frame), cutoffs.splits)
    if max_origins is None:
        max_origins = max(MAX_ORIGINS_PER_SYMBOL, -(-MIN_CALIBRATION_ORIGINS // max(1, len(series))))
    origins = select_origins(series, "val", horizon, max_origins=max_origins, min_context=forecaster.patch_len)
    require_origins(origins, series, cutoffs, horizon)
    if origins.n < FEW_CALIBRATION_ORIGINS:
        log.warning(f"calibration: only {origins.n} validation origin(s); on so few the temperature is picked by "
                    f"noise (the default aims at {MIN_CALIBRATION_ORIGINS}): raise --max-origins or give the data a "
                    "longer validation split")
    check_leakage(origins, series, cutoffs, horizon)
    check_paths_memory(origins.n, num_samples, horizon)
    contexts, ends, times = origins.contexts(series), origins.context_end(series), origins.context_times(series)
    realised = origins.realised(series, horizon)[:, -1]
    crps, per_origin, coverage = {}, {}, {}
    with sharding(forecaster) as shards:
        for temperature in grid:
            cum = shards.sample_cumulative(forecaster, contexts, origins.symbols, horizon, num_samples, seed=seed,
                                           temperature=temperature, context_ends=ends, context_times=times,
                                           progress=progress, label=f"calibrate T={temperature:g}")
            if cum is None:  # another process gathers and scores
                continue
            key = f"{temperature:g}"
            per_origin[key] = crps_samples(cum[..., -1], realised)
            crps[key] = float(np.mean(per_origin[key]))
            lo, hi = np.quantile(cum[..., -1], [0.05, 0.95], axis=-1)
            coverage[key] = float(np.mean((realised >= lo) & (realised <= hi)))
            log.info(f"calibration: temperature {key} -> val CRPS {crps[key]:.6f}, 90% coverage {coverage[key]:.1%}")
    if not shards.is_main:
        return None
    lowest, best, tied = choose_temperature(grid, per_origin, coverage)
    at_edge = len(grid) > 1 and lowest in (min(grid), max(grid))
    if at_edge:
        log.warning(f"calibration: the lowest-CRPS temperature {lowest:g} is at the edge of the grid {list(grid)}; "
                    "a wider grid may find a better one")
    calibration = {"temperature": float(best), "crps": crps, "coverage_90": coverage,
                   "lowest_crps_temperature": float(lowest), "within_one_se": [float(t) for t in tied],
                   "rule": "lowest CRPS within one paired standard error; of those, 90% coverage closest to 90%",
                   "split": "val", "n_origins": origins.n, "max_origins_per_symbol": max_origins,
                   "horizon_bars": horizon, "num_samples": num_samples, "seed": seed, "at_grid_edge": at_edge}
    if save:
        run.save_calibration(calibration)
    else:  # used in memory only (a pretrained model calibrated on a new series: its folder stays as shipped)
        run.calibration = dict(calibration)
    return calibration


def choose_temperature(grid, per_origin: dict[str, np.ndarray], coverage: dict[str, float]
                       ) -> tuple[float, float, list[float]]:
    """(the lowest-CRPS temperature, the chosen one, the temperatures within one standard error of the lowest).

    per_origin: each temperature's (f"{t:g}") CRPS per origin, all on the same origins with the same seeds;
    coverage: each one's 90% coverage. A temperature is within one standard error when its mean CRPS exceeds the
    lowest by at most the standard error of their paired per-origin difference; of those the one with 90%
    coverage closest to 0.9 is chosen (ties: the lower CRPS). The CRPS surface over the grid is flat within noise
    on real data while coverage moves by several points from one grid value to the next, so CRPS alone picks a
    temperature by sampling noise and often an under-covering one (MODEL_README, "Temperature calibration")."""
    means = {t: float(np.mean(per_origin[f"{t:g}"])) for t in grid}
    lowest = min(grid, key=lambda t: means[t])
    tied = []
    for t in grid:
        diff = per_origin[f"{t:g}"] - per_origin[f"{lowest:g}"]
        se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if means[t] - means[lowest] <= se:
            tied.append(t)
    best = min(tied, key=lambda t: (abs(coverage[f"{t:g}"] - 0.9), means[t]))
    return lowest, best, tied


def calibrate_run(run, data=None, *, horizon: int | None = None, num_samples: int = 256,
                  grid=TEMPERATURE_GRID, max_origins: int | None = None, seed: int = 0,
                  progress: bool | None = None) -> dict | None:
    """`calibrate_temperature` of a run directory (or a loaded Run) with the defaults evaluation uses, what
    `pricegpt calibrate` calls: data: anything `load_prices` reads (default: the run's meta["data"], read with its
    --date-format); the cutoffs are the run's; horizon: default the run's, else one token (patch_len bars).
    Writes RUN/calibration.json and returns it (None on the processes of a torchrun launch other than rank 0)."""
    check_sampling(1 if horizon is None else horizon, num_samples, seed)  # bad values: before the run is loaded
    if isinstance(run, (str, os.PathLike)):
        run = load_run(run, need_tokenizer=True)
    source = data if data is not None else run.meta.get("data")
    if source is None:
        raise ConfigError(f"{run.dir} does not record the data it was built from; pass --data PATH")
    frame = load_prices(source, date_format=run.meta.get("date_format") if data is None else None)
    horizon = horizon if horizon is not None else (run.meta.get("horizon") or forecaster_of(run).patch_len)
    return calibrate_temperature(run, frame, None, horizon, num_samples=num_samples, grid=grid,
                                 max_origins=max_origins, seed=seed, progress=progress)


# ------------------------------------------------------------------------------------------------ zero-shot
MODEL_TEMPERATURE = "the model's own calibration (its corpus' validation split)"


def check_zero_shot(out, command: str, what: str, writes: bool = True) -> None:
    """What every zero-shot stage (`evaluate --model`, `backtest --model`) needs before any work: an output folder
    when it writes one (a pretrained model's folder is not a run directory) and one process (its in-memory
    temperature is not shared across torchrun ranks)."""
    if out is None and writes:
        raise ConfigError(f"a zero-shot {what} needs an output directory (--out DIR)")
    if dist_env().world_size > 1:
        raise ConfigError(f"{command} --model runs in one process; launch it without torchrun")


def zero_shot_temperature(forecaster: Forecaster, frame, horizon: int, *, train_end=None, val_end=None,
                          calibrate: bool = True, num_samples: int = 256, seed: int = 0,
                          temperature: float | None = None, temperature_from: str = "given by the caller") -> str:
    """Set a pretrained forecaster's sampling temperature, in memory (its folder is never written), for a zero-shot
    stage on `frame`: `temperature` when given, else with `calibrate` the one chosen on the data's VALIDATION split
    (the data's own cutoffs or train_end / val_end), else the model's own. Returns where it came from."""
    run = forecaster.run
    if temperature is not None:
        run.calibration = {"temperature": temperature, "given": temperature_from}
        return temperature_from
    if not calibrate:
        return MODEL_TEMPERATURE
    splits = resolve_cutoffs(frame, "calibrate", run, train_end=train_end, val_end=val_end).splits
    calibrate_temperature(run, frame, splits, horizon, num_samples=num_samples, seed=seed, save=False)
    return "this data's validation split"


def zero_shot_record(model, forecaster: Forecaster, temperature_from: str) -> dict:
    """metrics.json's "zero_shot": the model as named and its folder, its data cutoff and the temperature used."""
    cutoff = run_cutoffs(forecaster.run)[1]
    return {"model": str(model), "folder": str(resolve_model(model)),
            "data_cutoff": None if cutoff is None else iso(cutoff),
            "temperature": forecaster.temperature, "temperature_from": temperature_from}
