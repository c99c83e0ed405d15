"""Honest evaluation of a trained run: token metrics, probabilistic forecasts of the H-bar return against the
baselines on the same origins, paired significance, calibration, and a report. `evaluate_run(run)` writes RUN/eval/
(metrics.json, origins.csv, the report; see ARCHITECTURE.md); `origins_frame(run)` returns the per-origin table
without writing anything.

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

Several horizons. `horizons` (default: the run's horizon, then 1) are scored in one evaluation; the first is the
main one (metrics.json's `forecast`), every one is in `forecasts_by_horizon[str(H)]` and in origins.csv (its
`horizon` column). A horizon up to the main one is scored on the main horizon's origins with the first H bars
of the same sampled paths (no extra sampling; still non-overlapping targets); a longer one on its own origins
(every H bars) with its own paths. `horizon=H` is the single-horizon form.

Per horizon, every aggregate is computed from the per-origin table (origins.py): the forecasters' scores
(metrics.summary), the paired comparison of the model with each baseline (significance.compare: date-block
bootstrap intervals, Diebold-Mariano, a verdict; the headline verdict against the baseline with the lowest mean
CRPS; Hansen's model confidence set when `arch` is installed) and calibration (calibration.py: reliability at
every level, coverage by volatility regime, VaR tests, P(up)). With fewer than significance.MIN_DATES origin
dates the comparisons and the headline verdict are None, with the reason in `notes`.
Every value (horizons, num_samples, max_origins, seed) is checked, and the memory of the paths estimated, before
the model scores anything.

Across processes (`torchrun --nproc-per-node=N -m pricegpt -- evaluate ...`): every process runs the set-up and
its checks, the processes sample the origins of every horizon (and of the ablation runs) together, each its share
(forecast/shard.py), and rank 0 gathers the paths and does everything else alone: token metrics, baselines,
significance, the files, which are byte for byte those of one process (one seed per origin). The other processes
return None.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import check_bool, check_int, check_memory, show
from ..data import iso, load_prices
from ..data.windows import (
    Origins,
    SymbolSeries,
    check_leakage,
    require_origins,
    resolve_cutoffs,
    run_cutoffs,
    select_origins,
    source_name,
    symbol_series,
)
from ..errors import ConfigError
from ..fileio import atomic_dir, check_holds_only, json_ready, write_json
from ..forecast import Forecaster, check_paths_memory, check_sampling, forecaster_of, paths_bytes, risk
from ..forecast.sampling import check_scored_samples
from ..forecast.shard import sharding
from ..rundir import RunDir
from ..runs import load_run
from . import calibration, report, significance, tokens, volatility
from .baselines import BASELINES, baseline_forecasts
from .metrics import SamplePredictive, coverage_and_width, coverage_by_horizon, summary
from .origins import combine, forecaster_columns, origin_table, write_csv

log = logging.getLogger("pricegpt")

DEFAULT_NUM_SAMPLES = 256
FORECASTERS = ("model", *BASELINES)
OHLC = ("open", "high", "low", "close")


@dataclass
class _Horizon:
    """One horizon's origins; `sampled`: it has its own paths (else the main horizon's first H bars)."""

    horizon: int
    origins: Origins
    sampled: bool
    rule: str


@dataclass
class _Paths:
    """What the model sampled: cumulative paths (origins, S, H) of each sampled horizon, and each ablation run's
    H-bar returns (origins, S) on the main horizon's origins."""

    cumulative: dict[int, np.ndarray]
    ablations: dict[str, np.ndarray]


@dataclass
class _Setup:
    """Everything resolved before the model scores anything."""

    run: object
    forecaster: Forecaster
    source: object
    frame: pd.DataFrame
    splits: object
    series: dict[str, SymbolSeries]
    horizons: list[_Horizon]
    overlapping: int
    own_cutoffs: bool
    num_samples: int
    seed: int


# ---------------------------------------------------------------------------------------------------- public
def evaluate_run(run, data=None, split: str = "test", allow_overlap: bool = False, num_samples: int | None = None,
                 horizon: int | None = None, max_origins: int | None = None, seed: int = 0, out=None,
                 ablation_runs: dict | None = None, horizons=None, train_end=None, val_end=None,
                 extra: dict | None = None) -> dict | None:
    """Evaluate `run` (a directory, a loaded Run or a Forecaster) and write `out` (default RUN/eval/) as a whole:
    the previous results stay untouched if anything fails. Returns the metrics.json dict (None on the processes of
    a torchrun launch other than rank 0, which writes).

    data: price source, anything `load_prices` reads (a path, sample:NAME, a DataFrame; default: the run's
    meta["data"]); horizons: bars, a list (default: the run's meta horizon, else one token = patch_len bars, then
    1); horizon: one horizon instead of a list; num_samples: paths per origin (default 256); max_origins: cap per
    symbol; ablation_runs: {name: run_dir} scored on the same origins of the main horizon
    (forecast.ablations[name] = {crps, coverage_90}); train_end / val_end: the data's cutoffs instead of the run's
    (a pretrained model on a new series; see `evaluate_model`); extra: more top-level keys for metrics.json.
    """
    setup = _setup(run, data, split, allow_overlap, num_samples, horizon, horizons, max_origins, seed,
                   train_end, val_end)
    if out is None and getattr(setup.run, "pretrained", False):
        raise ConfigError("a pretrained model's folder is not a run directory: give the evaluation an --out DIR")
    out = Path(out) if out is not None else RunDir(setup.run.dir).eval
    check_eval_dir(out)  # before anything is sampled
    paths = _sample(setup, ablation_runs)
    if paths is None:
        return None
    run, series = setup.run, setup.series
    token_metrics = tokens.token_metrics(run.model, run.tokenizer, setup.frame, setup.splits, split)

    blocks, tables, main = {}, [], None
    for scored in _score(setup, paths):
        table, h = scored["table"], scored["horizon"]
        tables.append(table)
        blocks[str(h.horizon)] = _forecast_block(setup, h, table, scored["cum"], scored["realised"],
                                                 scored["notes"])
        if main is None:
            main = scored
    forecast = blocks[str(setup.horizons[0].horizon)]
    forecast["volatility"] = _volatility(setup, main)
    if ablation_runs:
        forecast["ablations"] = _ablations(ablation_runs, paths, main["realised"][:, -1])

    run_train_end, run_val_end = run_cutoffs(run)
    metrics = {"split": split, "train_end": iso(setup.splits.train_end), "val_end": iso(setup.splits.val_end),
               "run_train_end": None if run_train_end is None else iso(run_train_end),
               "run_val_end": None if run_val_end is None else iso(run_val_end),
               "data": source_name(setup.source), "n_symbols": len({str(s) for s in main["horizon"].origins.symbols}),
               "n_tokens": token_metrics.pop("n_tokens"), "tokens": token_metrics, "forecast": forecast,
               "horizons": [h.horizon for h in setup.horizons], "forecasts_by_horizon": blocks,
               "own_cutoffs": setup.own_cutoffs, "overlap_allowed": bool(allow_overlap),
               "overlapping_origins": setup.overlapping, **(extra or {})}
    members = getattr(setup.forecaster, "members", None)
    if members is not None:  # the paths are the members' pooled; the token metrics are the first member's
        metrics["ensemble"] = {"size": len(members), "members": [str(m.run.dir) for m in members],
                               "token_metrics_of": str(members[0].run.dir)}
    metrics = json_ready(metrics)

    table = combine(tables)
    check_eval_dir(out)
    with atomic_dir(out, overwrite=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_csv(tmp / "origins.csv", table)
        report.write_report(tmp, metrics, run=run, series=series, origins=main["horizon"].origins, cum=main["cum"],
                            realised=main["realised"], origins_table=table)
    log.info(f"evaluate: wrote {out}")
    return metrics


def evaluate_model(model, data, out, *, train_end=None, val_end=None, calibrate: bool = True,
                   allow_overlap: bool = False, num_samples: int | None = None, horizon: int | None = None,
                   horizons=None, max_origins: int | None = None, seed: int = 0) -> dict:
    """Zero-shot evaluation of a pretrained forecaster (a folder or a built-in name such as "pricegpt-small") on
    any price data, written to `out` like `evaluate_run`.

    The data's own cutoffs split it (train_end / val_end, default 70% / 85% of its time span) when the model never
    saw a bar of it (else the model's, see data.windows.resolve_cutoffs): the baselines fit on its train split,
    and with `calibrate` the sampling temperature is chosen on its VALIDATION split (the model's weights are not
    touched and its folder is not written); test origins must lie after both the data's val_end and the model's
    data cutoff (LeakageError otherwise, unless allow_overlap, which the report flags). metrics.json gains
    "zero_shot": {model, folder, data_cutoff, temperature, temperature_from}. One process (not under torchrun)."""
    from ..forecast.calibrate import check_zero_shot, zero_shot_record, zero_shot_temperature

    check_zero_shot(out, "evaluate", "evaluation")
    check_sampling(1, DEFAULT_NUM_SAMPLES if num_samples is None else num_samples, seed)
    forecaster = Forecaster.from_pretrained(model)
    frame = load_prices(data)
    main = resolve_horizons(horizon, horizons, forecaster.run.meta.get("horizon") or forecaster.patch_len)[0]
    temperature_from = zero_shot_temperature(forecaster, frame, main, train_end=train_end, val_end=val_end,
                                             calibrate=calibrate, seed=seed,
                                             num_samples=DEFAULT_NUM_SAMPLES if num_samples is None else num_samples)
    extra = {"zero_shot": zero_shot_record(model, forecaster, temperature_from)}
    return evaluate_run(forecaster, data=frame, split="test", allow_overlap=allow_overlap, num_samples=num_samples,
                        horizon=horizon, horizons=horizons, max_origins=max_origins, seed=seed, out=out,
                        train_end=train_end, val_end=val_end, extra=extra)


def origins_frame(run, data=None, split: str = "test", *, horizons=None, horizon: int | None = None,
                  num_samples: int | None = None, max_origins: int | None = None, seed: int = 0,
                  allow_overlap: bool = False) -> pd.DataFrame | None:
    """The per-origin table evaluate_run writes as origins.csv (columns: see evaluate/origins.py), as a DataFrame
    with time stamps as UTC Timestamps, for a run directory, a loaded Run or a Forecaster (e.g.
    `Forecaster.from_pretrained(DIR)`): the same origins, seeds and scores, without token metrics, significance
    or any file written. Arguments as in `evaluate_run` (under torchrun too: None on all processes but rank 0)."""
    setup = _setup(run, data, split, allow_overlap, num_samples, horizon, horizons, max_origins, seed)
    paths = _sample(setup)
    return None if paths is None else combine([scored["table"] for scored in _score(setup, paths)])


def resolve_horizons(horizon, horizons, default: int) -> list[int]:
    """The horizons to score, main one first, duplicates dropped: `horizons`, else [horizon], else [default, 1]."""
    if horizon is not None and horizons is not None:
        raise ConfigError("give one horizon (--horizon) or a list (--horizons), not both")
    flag = "--horizons" if horizons is not None else "--horizon"
    if horizons is None:
        horizons = [horizon] if horizon is not None else [default, 1]
    elif isinstance(horizons, (str, bytes)) or not hasattr(horizons, "__iter__"):
        raise ConfigError(f"--horizons must be a list of bar counts such as [1, 4, 16], got {horizons!r}")
    checked = [check_sampling(h, 1, 0, horizon_flag=flag)[0] for h in horizons]
    if not checked:
        raise ConfigError("--horizons is empty; give at least one horizon in bars, such as 1,4")
    return list(dict.fromkeys(checked))


# ---------------------------------------------------------------------------------------------- set-up
EVAL_FILES = ("metrics.json", "origins.csv", "report.md", "report.html")


def check_eval_dir(out: Path) -> None:
    """OutputExistsError unless `out` is absent or holds nothing but an earlier evaluation's files (metrics.json,
    origins.csv, the report and its PNGs)."""
    check_holds_only(out, EVAL_FILES, "an evaluation", suffixes=(".png",))


def _forecaster(run) -> Forecaster:
    if isinstance(run, Forecaster):
        return run
    if not isinstance(run, (str, os.PathLike)) and not hasattr(run, "meta"):
        raise ConfigError(f"the run to evaluate must be a run directory, a loaded Run or a Forecaster, got "
                          f"{show(run)}; to evaluate a pretrained model use evaluate_model")
    return forecaster_of(load_run(run, need_tokenizer=True) if isinstance(run, (str, os.PathLike)) else run)


def _setup(run, data, split, allow_overlap, num_samples, horizon, horizons, max_origins, seed, train_end=None,
           val_end=None) -> _Setup:
    if split not in ("val", "test"):
        raise ConfigError(f"--split must be val or test, got {split!r}")
    check_bool(allow_overlap, "allow_overlap (--allow-overlap)")
    num_samples = DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
    if max_origins is not None:
        max_origins = check_int(max_origins, "--max-origins", 1, 2**31 - 1)
    _, num_samples, seed = check_sampling(1, num_samples, seed)
    check_scored_samples(num_samples)
    if horizon is not None or horizons is not None:
        resolve_horizons(horizon, horizons, 1)  # bad values are refused before the run is loaded
    forecaster = _forecaster(run)
    run = forecaster.run
    wanted = resolve_horizons(horizon, horizons, run.meta.get("horizon") or forecaster.patch_len)
    source = data if data is not None else run.meta.get("data")
    if source is None:
        raise ConfigError(f"{run.dir} does not record the data it was built from; pass --data PATH")
    # the run's own data is read as the pipeline read it (its --date-format, if one was given)
    frame = load_prices(source, date_format=run.meta.get("date_format") if data is None else None)
    cutoffs = resolve_cutoffs(frame, split, run, train_end=train_end, val_end=val_end)
    series = symbol_series(forecaster.features(frame), cutoffs.splits)
    flag = "--horizons" if horizons is not None else "--horizon"
    main = wanted[0]
    main_origins = select_origins(series, split, main, max_origins=max_origins, min_context=forecaster.patch_len)
    cap = f", at most {max_origins} per symbol evenly spaced" if max_origins else ""
    planned = []
    for h in wanted:
        if h <= main and h != main:
            planned.append(_Horizon(h, main_origins, False, f"the {main}-bar horizon's origins (every {main} bars"
                                    f"{cap}), scored on the first {h} bar(s) of the same paths"))
            continue
        origins = main_origins if h == main else select_origins(series, split, h, max_origins=max_origins,
                                                                min_context=forecaster.patch_len)
        planned.append(_Horizon(h, origins, True, f"every {h} bars of the split (non-overlapping targets){cap}"))
    overlapping = 0
    for h in planned:
        if h.sampled:
            require_origins(h.origins, series, cutoffs, h.horizon, flag=flag)
        bad = check_leakage(h.origins, series, cutoffs, h.horizon, allow_overlap)
        overlapping = bad if h.horizon == main else overlapping
    sampled = [h for h in planned if h.sampled]
    if len(sampled) == 1:
        check_paths_memory(sampled[0].origins.n, num_samples, sampled[0].horizon)
    else:  # every horizon is sampled before any is scored: their paths are alive together
        check_memory(sum(paths_bytes(h.origins.n, num_samples, h.horizon) for h in sampled),
                     " + ".join(f"{h.origins.n:,} origin(s) x {h.horizon:,} bars" for h in sampled)
                     + f", {num_samples:,} sample paths each",
                     "use a smaller --num-samples (or fewer origins: --max-origins; fewer --horizons)")
    log.info(f"evaluate: {split} split, horizons {', '.join(str(h.horizon) for h in planned)} bars "
             f"({', '.join(str(h.origins.n) for h in planned)} origins), {num_samples} samples")
    return _Setup(run, forecaster, source, frame, cutoffs.splits, series, planned, overlapping, cutoffs.own,
                  num_samples, seed)


def _ohlc(frame: pd.DataFrame, series: dict[str, SymbolSeries]) -> dict[str, np.ndarray] | None:
    """{symbol: (n, 4) open, high, low, close of the bar of each return}, None without open/high/low."""
    if not all(c in frame.columns for c in OHLC):
        return None
    out = {}
    for symbol, group in frame.groupby(frame["symbol"].astype(str), sort=False):
        if symbol not in series:
            continue
        times = group["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
        order = np.argsort(times, kind="stable")
        wanted = series[symbol].timestamps
        position = order[np.searchsorted(times[order], wanted)]
        assert np.array_equal(times[position], wanted), f"{symbol}: the price rows do not match its returns"
        out[symbol] = group[list(OHLC)].to_numpy(dtype=np.float64)[position]
    return out


# ------------------------------------------------------------------------------------------------ sampling
def _sample(setup: _Setup, ablation_runs: dict | None = None) -> _Paths | None:
    """The model's paths of every sampled horizon and each ablation run's on the main horizon's origins, all
    sampled before anything is scored so that the processes of a torchrun launch sample them together and rank 0
    alone scores them (forecast/shard.py); None on the other processes."""
    series, main = setup.series, setup.horizons[0]
    # loaded first: a damaged ablation run fails every process alike, before the process group
    others = {name: Forecaster.from_run(run_dir) for name, run_dir in (ablation_runs or {}).items()}
    cumulative, ablations = {}, {}
    with sharding(setup.forecaster) as shards:
        for h in setup.horizons:
            if h.sampled:
                cumulative[h.horizon] = shards.sample_cumulative(
                    setup.forecaster, h.origins.contexts(series), h.origins.symbols, h.horizon, setup.num_samples,
                    seed=setup.seed, context_ends=h.origins.context_end(series),
                    context_times=h.origins.context_times(series))
        for name, other in others.items():
            cum = shards.sample_cumulative(other, main.origins.contexts(series, other.features(setup.frame)),
                                           main.origins.symbols, main.horizon, setup.num_samples, seed=setup.seed,
                                           context_ends=main.origins.context_end(series),
                                           context_times=main.origins.context_times(series))
            ablations[name] = None if cum is None else cum[..., -1]
    return _Paths(cumulative, ablations) if shards.is_main else None


# ------------------------------------------------------------------------------------------------- scoring
def _score(setup: _Setup, paths: _Paths):
    """Per horizon (main first): {"horizon", "table", "cum" (n, S, H) model paths, "realised" (n, H), "notes"}."""
    series = setup.series
    returns = {s: series[s].returns for s in series}
    train_len = {s: series[s].train_len for s in series}
    times = {s: series[s].timestamps for s in series}
    ohlc = _ohlc(setup.frame, series)
    main_cum = None
    for h in setup.horizons:
        origins, H = h.origins, h.horizon
        cum = paths.cumulative[H] if h.sampled else main_cum[..., :H]
        main_cum = cum if main_cum is None else main_cum
        realised = origins.realised(series, H)
        predictives, notes = baseline_forecasts(returns, train_len, origins.symbols, origins.index, H,
                                                setup.num_samples, setup.seed, times=times, ohlc=ohlc)
        final = cum[..., -1]
        predictives = {"model": SamplePredictive(final), **{name: predictives.get(name) for name in BASELINES}}
        table = origin_table(series, origins, H, realised[:, -1], predictives, np.mean(final > 0, axis=-1))
        yield {"horizon": h, "table": table, "cum": cum, "realised": realised, "notes": dict(notes),
               "predictives": predictives}


def _volatility(setup: _Setup, main: dict) -> dict:
    """forecast.volatility (volatility.py) on the main horizon's origins: the volatility head (if the model has
    one), the paths' variance, GARCH and EWMA against the realised variance of the target bars."""
    h = main["horizon"]
    forecaster, predictives = setup.forecaster, main["predictives"]
    variances = {name: volatility.predictive_variance(predictives.get(name)) for name in volatility.VOL_BASELINES}
    variances["model"] = np.var(main["cum"][..., -1], axis=-1)
    if getattr(forecaster, "has_vol_head", False):
        variances["vol_head"] = forecaster.variance_of_contexts(
            h.origins.contexts(setup.series), h.origins.symbols, h.horizon,
            context_times=h.origins.context_times(setup.series))
    per_bar = np.diff(main["realised"], axis=-1, prepend=0.0)
    block = volatility.volatility_block(main["table"], variances, volatility.realised_variance(per_bar), h.horizon,
                                        seed=setup.seed)
    if "vol_head" not in variances:
        block["notes"]["vol_head"] = "the model has no volatility head (train with --set model.vol_bars=N)"
    return block


def _forecast_block(setup: _Setup, h: _Horizon, table: pd.DataFrame, cum: np.ndarray, realised: np.ndarray,
                    notes: dict) -> dict:
    """metrics.json's forecast entry of one horizon, every aggregate from its per-origin `table`."""
    ran = [name for name in FORECASTERS if f"crps_{name}" in table]
    y = table["realised"].to_numpy()
    block = {"horizon_bars": h.horizon, "num_samples": setup.num_samples, "n_origins": len(table),
             "n_dates": int(table["origin"].dt.floor("D").nunique()), "temperature": setup.forecaster.temperature,
             "origins_rule": h.rule, "seeds": "one per origin, from (seed, symbol, the context's last timestamp)"}
    for name in FORECASTERS:
        block[name] = summary(forecaster_columns(table, name), y) if name in ran else None
    reference = (block["histvol20"] or {}).get("crps")
    block["crps_relative_to_histvol20"] = {name: (None if block[name] is None or not reference
                                                  else block[name]["crps"] / reference) for name in FORECASTERS}
    block.update(_significance(table, block, ran, setup.seed, notes))
    block["reliability"] = calibration.reliability(table, list(FORECASTERS))
    block["by_regime"] = calibration.by_regime(table, list(FORECASTERS))
    block["var_tests"] = calibration.var_tests(table)
    block["p_up"] = calibration.p_up(table)
    block["coverage_by_horizon"] = {"50": coverage_by_horizon(cum, realised, 0.5),
                                    "90": coverage_by_horizon(cum, realised, 0.9)}
    block["per_symbol"] = _per_symbol(table, ran)
    block["risk"] = _risk_by_symbol(h.origins, cum)
    block["notes"] = notes
    return block


def _significance(table: pd.DataFrame, block: dict, ran: list[str], seed: int, notes: dict) -> dict:
    """comparison (every baseline; None with a note where it did not run or could not be compared), the
    headline verdict and the model confidence set."""
    baselines = [name for name in ran if name != "model"]
    reasons: dict[str, str] = {}
    compared = significance.compare(table, "model", baselines, seed=seed, notes=reasons) if baselines else {}
    comparison = {}
    for name in BASELINES:
        comparison[name] = compared.get(name)
        if comparison[name] is None:
            notes[f"comparison {name}"] = reasons.get(name, f"{name} did not run, so it was not compared")
    verdict = significance.headline_verdict(comparison, {n: block[n]["crps"] for n in baselines})
    if verdict["verdict"] is None:
        notes["verdict"] = "no baseline could be compared with the model (see the comparison notes)"
    mcs_notes: dict[str, str] = {}
    mcs = significance.model_confidence_set(table, ran, seed=seed, notes=mcs_notes)
    if mcs is None:
        notes["mcs"] = mcs_notes.get("model_confidence_set", "not computed")
    return {"comparison": comparison, "verdict": verdict, "mcs": mcs}


def _per_symbol(table: pd.DataFrame, ran: list[str]) -> dict:
    out = {}
    for symbol, rows in table.groupby("symbol", sort=True):
        row = {"n_origins": len(rows)}
        for level in ("50", "90"):
            row[f"model_coverage_{level}"] = float(rows[f"hit{level}_model"].mean())
        for name in FORECASTERS:
            row[f"crps_{name}"] = float(rows[f"crps_{name}"].mean()) if name in ran else None
        out[str(symbol)] = row
    return out


def _risk_by_symbol(origins: Origins, cum: np.ndarray) -> dict:
    """Risk numbers from the paths of each symbol's last origin (per-bar returns recovered from cumulative)."""
    out = {}
    for symbol in sorted({str(s) for s in origins.symbols}):
        last = int(np.flatnonzero(origins.symbols == symbol)[-1])
        paths = np.diff(cum[last], axis=-1, prepend=0.0)
        out[symbol] = {"origin_index": int(origins.index[last]), **risk(paths)}
    return out


def _ablations(ablation_runs: dict, paths: _Paths, y: np.ndarray) -> dict:
    """forecast.ablations: each ablation run's CRPS and 90% coverage on the main horizon's origins."""
    out = {}
    for name, run_dir in ablation_runs.items():
        pred = SamplePredictive(paths.ablations[name])
        out[name] = {"run": str(run_dir), "crps": float(np.mean(pred.crps(y))),
                     "coverage_90": coverage_and_width(pred, y, 0.9)[0]}
    return out


__all__ = ["DEFAULT_NUM_SAMPLES", "FORECASTERS", "evaluate_model", "evaluate_run", "origins_frame",
           "resolve_horizons"]
