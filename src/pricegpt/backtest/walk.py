"""Walk-forward backtest: forecasts -> target positions -> net returns after costs -> performance statistics.

    metrics = run_backtest("runs/x", strategy="sign", cost_bps=1.0)     # writes runs/x/backtest/

`walk_forward` / `run_backtest` drive any object with the Forecaster's batched method `sample_cumulative(contexts,
symbols, horizon, num_samples, *, seed, context_ends)` -> (origins, num_samples, horizon) cumulative log returns,
such as `Forecaster` or strategies.BootstrapForecaster. The statistics are stats.py's, the positions
strategies.py's.

Conventions
- Timing. Bars are indexed by their close-to-close return. The origins are data.windows' `decision_origins`: every
  `rebalance` bars (default: the horizon H) from the first test bar (timestamp > val_end, the leakage rule of
  data.windows: never a bar that trained or selected the model). The decision of origin i is made at the close of
  bar i - 1 from the data up to and including that close; its position is held from bar i on, i.e. it earns bar
  i's return first, and stays until the next decision. So the backtest trades exactly the test bars. In
  positions.csv a row (timestamp, position) is the position HELD DURING that bar (decided at the previous close);
  in decisions.csv `timestamp` is the close the decision was made at.
- Seeds. The forecaster samples each decision from a seed derived from (seed, symbol, decision timestamp)
  (forecast.origin_seed), so a decision's random stream depends neither on the other symbols nor on how many bars
  come later: truncating or changing data after a date leaves every earlier decision bit-identical. So the
  decisions are forecast together, in as few forecaster calls as the paths' memory allows (DECISION_PATHS_BYTES),
  not one call per decision time. For the same reason the processes of `torchrun --nproc-per-node=N -m pricegpt --
  backtest ...` sample each call's decisions together, each its share (forecast/shard.py), and rank 0 gathers the
  paths, decides and writes the same files as one process; the other processes return None.
- Values. Every setting is checked before any work (BacktestConfig: costs in [0, 10000] bps, seeds in
  [0, 2**63 - 1], ...), and the test split must hold at least two decisions whose whole H-bar target is in the
  data (else a DataError saying how many bars it has), so no Sharpe comes from a single decision.
- Returns and costs: stats.simulate. No liquidation cost at the end. Buy-and-hold is the price return (position 1,
  no costs), so its total return is last close / first close - 1 over the window (first = the close of the first
  decision bar). Momentum (sign of the trailing N-bar return) trades on the same decision bars with the same
  costs. The portfolio holds 1/n of its capital in each symbol, rebalanced to equal weights every bar (its per-bar
  return is the mean of the symbols'; bars where a symbol has no bar earn 0 for it).
- Annualisation: stats.bars_per_year, per symbol from the whole data (portfolio: from the union of timestamps).
  The Sharpe CI (stats.sharpe_ci) is of the portfolio's net returns.
- Test split: data.windows' "backtest" stage: bars after the given val_end, else the run's val_end; when the data
  has no bar after the run's (another file), the data's own 85% cutoff as in evaluation. Any decision whose first
  held bar is at or before the run's val_end is refused (LeakageError): those bars chose the checkpoint and the
  temperature (`allow_overlap` trades them anyway, and metrics.json's settings say so and how many).

Zero-shot (`backtest_model`, `pricegpt backtest --model NAME|DIR`): a pretrained forecaster on a file it never saw,
as evaluate_model scores one: the file's own cutoffs (or the given train_end / val_end) split it, the sampling
temperature is chosen on its validation split in memory (forecast.calibrate_temperature(..., save=False); the
model's folder is never written, so OUT is required), and decisions must trade bars after both the file's val_end
and the model's data cutoff: an earlier one is refused before anything is sampled (LeakageError), unless
allow_overlap, which metrics.json flags ("overlap_allowed", "overlapping_decisions"). metrics.json gains
"zero_shot": {model, folder, data_cutoff, train_end, val_end, temperature, temperature_from}.

Outputs (OUT = RUN/backtest/ by default, built in a temporary directory and renamed): metrics.json (blocks strategy,
buy_and_hold, momentum = the portfolio's; portfolio, per_symbol, sharpe_ci, risk, settings), positions.csv (timestamp,
symbol, position held, momentum_position, bar_return), decisions.csv (each decision's forecast summary, targets and,
for the risk report only, the realised H-bar return) and equity.png.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from .. import plots
from ..config import check_bool, check_int, check_num_samples, check_number, check_seed, check_temperature
from ..data import iso, load_prices
from ..data.windows import (
    Cutoffs,
    check_leakage,
    decision_origins,
    require_origins,
    resolve_cutoffs,
    return_features,
    run_cutoffs,
    source_name,
    symbol_series,
)
from ..errors import ConfigError, LeakageError
from ..fileio import atomic_dir, atomic_path, check_holds_only, csv_safe_cell, json_ready, write_json
from ..forecast import MAX_HORIZON_BARS, Forecaster, check_paths_memory, forecaster_of, paths_bytes
from ..forecast.calibrate import check_zero_shot, zero_shot_record, zero_shot_temperature
from ..forecast.shard import sharding
from ..rundir import RunDir
from ..runs import load_run
from .stats import bars_per_year, performance, sharpe_ci, simulate
from .strategies import STRATEGIES, forecast_summary, kelly_positions, momentum_positions, sign_positions

log = logging.getLogger("pricegpt")

OUTPUT_FILES = ("metrics.json", "positions.csv", "decisions.csv", "equity.png")
MAX_COST_BPS = 10_000.0  # 100% of the traded value per unit of turnover: anything above is a typo
MIN_DECISIONS = 2  # decisions with a whole H-bar target the test split must hold
MAX_BOOT = 100_000
DECISION_PATHS_BYTES = 256 * 2**20  # bounds the paths of the decisions forecast in one forecaster call


@dataclass
class BacktestConfig:
    """Everything that decides positions and costs; saved in metrics.json under `settings`."""

    strategy: str = "sign"
    cost_bps: float = 1.0
    slippage_bps: float = 0.0
    horizon: int = 1                # bars of the forecast whose cumulative return drives the decision
    rebalance: int | None = None    # bars between decisions; None = horizon
    num_samples: int = 256
    seed: int = 0
    long_above: float = 0.55        # sign: long when P(up) > long_above
    short_below: float = 0.45       # sign: short when P(up) < short_below
    long_only: bool = False         # no short positions (strategy and momentum)
    kelly_fraction: float = 0.5     # kelly: fraction of the full Kelly position mean / variance
    kelly_cap: float = 1.0          # kelly: |position| <= cap
    momentum_lookback: int = 20
    n_boot: int = 1000

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        self.horizon = check_int(self.horizon, "--horizon", 1, MAX_HORIZON_BARS)
        self.rebalance = check_int(self.horizon if self.rebalance is None else self.rebalance, "--rebalance", 1,
                                   MAX_HORIZON_BARS)
        self.num_samples = check_num_samples(self.num_samples, "--num-samples")
        self.seed = check_seed(self.seed, "--seed")
        self.momentum_lookback = check_int(self.momentum_lookback, "--momentum-lookback", 1, MAX_HORIZON_BARS)
        self.n_boot = check_int(self.n_boot, "n_boot", 1, MAX_BOOT)
        for name, flag in (("cost_bps", "--cost-bps"), ("slippage_bps", "--slippage-bps")):
            setattr(self, name, check_number(getattr(self, name), flag, 0.0, MAX_COST_BPS,
                                             hint="basis points of the traded value, e.g. 1 for 0.01%"))
        self.long_above = check_number(self.long_above, "--long-above", 0.0, 1.0)
        self.short_below = check_number(self.short_below, "--short-below", 0.0, 1.0)
        if not self.short_below <= self.long_above:
            raise ConfigError(f"sign thresholds need 0 <= short_below ({self.short_below}) <= long_above "
                              f"({self.long_above}) <= 1")
        self.long_only = check_bool(self.long_only, "--long-only")
        self.kelly_fraction = check_number(self.kelly_fraction, "--kelly-fraction", 0.0, 1.0, lo_open=True)
        self.kelly_cap = check_number(self.kelly_cap, "kelly_cap", 0.0, 100.0, lo_open=True)


# ------------------------------------------------------------------------------------------- walk-forward
@dataclass
class WalkForward:
    """What the walk-forward produced. decisions: one row per (decision timestamp, symbol) with the forecast summary
    and the targets; bars: one row per (held bar, symbol) with bar_return (simple), position and momentum_position."""

    decisions: pd.DataFrame
    bars: pd.DataFrame
    config: BacktestConfig
    overlapping: int = 0            # decisions the leakage rule would refuse (only with allow_overlap)


def plan_decisions(frame: pd.DataFrame, forecaster, cutoffs: Cutoffs, config: BacktestConfig,
                   allow_overlap: bool = False):
    """(series, origins, overlapping): the decisions of the test bars, checked before anything is forecast: a
    DataError when fewer than MIN_DECISIONS have a whole horizon in the data, a LeakageError when one trades a bar
    the leakage rule forbids (unless allow_overlap; overlapping counts them)."""
    features = forecaster.features(frame) if hasattr(forecaster, "features") else return_features(frame)
    series = symbol_series(features, cutoffs.splits)
    origins = decision_origins(series, config.rebalance, min_context=int(getattr(forecaster, "patch_len", 1)))
    require_origins(origins, series, cutoffs, config.horizon, minimum=MIN_DECISIONS)
    overlapping = check_leakage(origins, series, cutoffs, config.horizon, allow_overlap=allow_overlap)
    return series, origins, overlapping


def walk_forward(frame: pd.DataFrame, forecaster, cutoffs, config: BacktestConfig,
                 allow_overlap: bool = False) -> WalkForward | None:
    """Decisions over the test bars of every symbol of the canonical price `frame` (module docstring).

    cutoffs: a data.windows.Cutoffs of the "backtest" stage (run_backtest's), or a val_end (then the test bars
    are those after it, with no run to guard). Refuses a test split with fewer than MIN_DECISIONS decisions
    whose whole horizon is in the data, and origins the leakage rule forbids (unless allow_overlap: then they
    are traded and counted in `overlapping`), before forecasting anything (plan_decisions).
    None on the processes of a torchrun launch other than rank 0 (they only sample their share)."""
    if not isinstance(cutoffs, Cutoffs):
        cutoffs = resolve_cutoffs(frame, "backtest", val_end=cutoffs)
    series, origins, overlapping = plan_decisions(frame, forecaster, cutoffs, config, allow_overlap)
    H, N = config.horizon, config.momentum_lookback
    decided_at = origins.context_end(series)
    order = np.argsort(decided_at, kind="stable")  # decision time, then symbol
    per_call = max(1, DECISION_PATHS_BYTES // paths_bytes(1, config.num_samples, H))
    check_paths_memory(min(per_call, origins.n), config.num_samples, H)
    rows = []
    # Every decision has its own seed, so deciding them all in a few large forecaster calls gives the same
    # paths as one call per decision time (and lets the forecaster batch its engine calls).
    with sharding(forecaster) as shards:
        for start in range(0, len(order), per_call):
            batch = order[start:start + per_call]
            symbols = [str(origins.symbols[k]) for k in batch]
            contexts = [series[s].features[:origins.index[k]] for s, k in zip(symbols, batch)]
            times = {"context_times": [series[s].timestamps[:origins.index[k]] for s, k in zip(symbols, batch)]} \
                if getattr(forecaster, "uses_times", False) else {}
            cum = shards.sample_cumulative(forecaster, contexts, symbols, H, config.num_samples, seed=config.seed,
                                           context_ends=decided_at[batch], **times)
            if cum is None:  # another process gathers and decides
                continue
            cum = np.asarray(cum, dtype=np.float64)
            assert cum.shape == (len(batch), config.num_samples, H), f"forecaster returned {cum.shape}"
            rows += _decision_rows(series, origins, batch, decided_at, forecast_summary(cum), H, N)
            log.info(f"backtest: forecast {min(start + per_call, len(order))}/{len(order)} decisions")
    if not shards.is_main:
        return None
    decisions = pd.DataFrame(rows).sort_values(["symbol", "timestamp"], ignore_index=True)
    if config.strategy == "sign":
        decisions["target"] = sign_positions(decisions["p_up"], config.long_above, config.short_below,
                                             config.long_only)
    else:
        decisions["target"] = kelly_positions(decisions["mean"], decisions["var"], config.kelly_fraction,
                                              config.kelly_cap, config.long_only)
    decisions["momentum_target"] = momentum_positions(decisions["trailing_return"], config.long_only)
    bars = [_held_positions(series[symbol], origins.index[origins.symbols == symbol],
                            decisions[decisions["symbol"] == symbol]) for symbol in sorted(set(origins.symbols))]
    return WalkForward(decisions, pd.concat(bars, ignore_index=True), config, overlapping)


def _decision_rows(series, origins, batch, decided_at, summary: dict, H: int, N: int) -> list[dict]:
    """One row per decision of `batch` (positions among `origins`): its time, symbol, trailing N-bar return, the
    realised H-bar return and the forecast summary (strategies.forecast_summary of its paths)."""
    rows = []
    for j, k in enumerate(batch):
        symbol = str(origins.symbols[k])
        lr, i = series[symbol].returns, int(origins.index[k])
        # the outcome of the forecast, for the risk report only (never used for positions)
        realised = math.expm1(lr[i:i + H].sum()) if i + H <= len(lr) else float("nan")
        row = {"timestamp": pd.Timestamp(decided_at[k]).tz_localize("UTC"), "symbol": symbol,
               "trailing_return": float(lr[max(0, i - N):i].sum()), "realised_return": realised}
        for key, value in summary.items():
            if isinstance(value, dict):
                row.update({f"{key}_{level}": float(v[j]) for level, v in value.items()})
            else:
                row[key] = float(value[j])
        rows.append(row)
    return rows


def _held_positions(series, starts, decisions) -> pd.DataFrame:
    """Bars first origin .. last with the position held during each: each target from its origin's bar until
    the next origin."""
    n = len(series.returns)
    position, momentum = np.zeros(n), np.zeros(n)
    ends = list(starts[1:]) + [n]
    for i, end, target, mom in zip(starts, ends, decisions["target"], decisions["momentum_target"]):
        position[i:end], momentum[i:end] = target, mom
    window = slice(int(starts[0]), n)
    return pd.DataFrame({"timestamp": pd.to_datetime(series.timestamps[window], utc=True), "symbol": series.symbol,
                         "bar_return": np.expm1(series.returns[window]), "position": position[window],
                         "momentum_position": momentum[window]})


# ----------------------------------------------------------------------------------------------- metrics
def backtest_metrics(walk: WalkForward, frame: pd.DataFrame) -> dict:
    """metrics.json's performance blocks (strategy, buy_and_hold, momentum per symbol and for the portfolio),
    the Sharpe CI, the risk report and the settings."""
    config, bars, decisions = walk.config, walk.bars, walk.decisions
    per_symbol, risk_report = {}, {}
    for symbol, group in bars.groupby("symbol", sort=True):
        bpy = bars_per_year(frame.loc[frame["symbol"] == symbol, "timestamp"])
        blocks = _blocks(group["position"].to_numpy(), group["momentum_position"].to_numpy(),
                         np.ones(len(group)), group["bar_return"].to_numpy(), bpy, config)
        mine = decisions[decisions["symbol"] == symbol]
        per_symbol[symbol] = {**blocks, "n_bars": len(group), "n_decisions": len(mine), "bars_per_year": bpy,
                              "first_decision": _iso(mine["timestamp"].iloc[0]),
                              "last_decision": _iso(mine["timestamp"].iloc[-1])}
        risk_report[symbol] = _risk_report(mine, config.horizon)
    panel = portfolio_panel(bars)
    bpy = bars_per_year(frame["timestamp"].drop_duplicates())
    blocks, net = _blocks(*panel[1:], bpy, config, with_net=True)
    return {
        "cost_bps": config.cost_bps, "slippage_bps": config.slippage_bps,
        **blocks,
        "sharpe_ci": sharpe_ci(net, bpy, n_boot=config.n_boot, seed=config.seed),
        "portfolio": {**blocks, "n_symbols": len(per_symbol), "n_bars": len(panel[0]), "bars_per_year": bpy,
                      "weighting": "equal capital per symbol, rebalanced every bar"},
        "per_symbol": per_symbol,
        "risk": risk_report,
        "settings": {**asdict(config), "thresholds": {"long_above": config.long_above,
                                                      "short_below": config.short_below},
                     "n_decisions": len(decisions), "n_decision_times": decisions["timestamp"].nunique(),
                     "first_decision": _iso(decisions["timestamp"].min()),
                     "last_decision": _iso(decisions["timestamp"].max()),
                     "bars_per_year": bpy,
                     "position_timing": "decided at a bar's close, held from the next bar until the next decision",
                     "annualisation": "bars per year = (bars - 1) / span in years, from the data"},
    }


def _blocks(position, momentum, held, bar_returns, bpy, config, with_net=False):
    """strategy / buy_and_hold / momentum performance of (T,) or (T, n) arrays (n: the portfolio's mean).
    held marks the bars in each symbol's window: buy-and-hold is long 1 there, without costs."""
    def run(positions, cost, slippage):
        net, turnover = simulate(positions, bar_returns, cost, slippage)
        if net.ndim == 2:
            net, turnover = net.mean(axis=1), turnover.mean(axis=1)
        return net, performance(net, bpy, turnover, positions)

    net, strategy = run(position, config.cost_bps, config.slippage_bps)
    blocks = {"strategy": strategy, "buy_and_hold": run(held.astype(np.float64), 0.0, 0.0)[1],
              "momentum": run(momentum, config.cost_bps, config.slippage_bps)[1]}
    return (blocks, net) if with_net else blocks


def _risk_report(decisions: pd.DataFrame, horizon: int) -> dict:
    """The forecast module's risk numbers at the symbol's last decision (same keys as `forecast.risk`), their
    means over all decisions, and how often the realised H-bar loss exceeded the forecast VaR (over decisions with
    a complete H-bar outcome; a calibrated forecast gives about 0.05 and 0.01)."""
    keys = [c for c in decisions.columns if c in ("p_up", "mean") or c.startswith(("var_", "es_", "p_touch_"))]
    loss = -decisions["realised_return"].to_numpy()
    complete = np.isfinite(loss)

    def nested(values) -> dict:
        out: dict = {}
        for key in keys:
            name = "expected_return" if key == "mean" else key
            if key.startswith("p_touch_"):
                side, level = key.rsplit("_", 1)
                out.setdefault(side, {})[level] = float(values[key])
            else:
                out[name] = float(values[key])
        return out

    return {"horizon": horizon, "origin": _iso(decisions["timestamp"].iloc[-1]), **nested(decisions.iloc[-1]),
            "mean_over_decisions": nested(decisions[keys].mean()), "n_decisions": len(decisions),
            "var_breach_rate": {k: (float(np.mean(loss[complete] > decisions[k].to_numpy()[complete]))
                                    if complete.any() else None) for k in keys if k.startswith("var_")},
            "n_realised": int(complete.sum())}


def _iso(ts) -> str:
    return iso(pd.Timestamp(ts))


# ------------------------------------------------------------------------------------------------ driver
def unknown_options(options: dict) -> None:
    """ConfigError naming keyword arguments that are no BacktestConfig field (a typo would otherwise be a
    TypeError)."""
    names = {f.name for f in fields(BacktestConfig)}
    unknown = sorted(str(k) for k in set(options) - names)
    if unknown:
        raise ConfigError(f"unknown backtest option(s) {', '.join(unknown)}; valid options are "
                          f"{', '.join(sorted(names))}")


def run_backtest(run=None, data=None, *, strategy: str = "sign", cost_bps: float = 1.0, slippage_bps: float = 0.0,
                 horizon: int | None = None, rebalance: int | None = None, num_samples: int | None = 256,
                 seed: int = 0, out=None, forecaster=None, val_end=None, write: bool = True, train_end=None,
                 allow_overlap: bool = False, extra: dict | None = None, **options) -> dict:
    """Walk-forward backtest of `run` (a directory or a loaded Run) on `data` (anything `load_prices` reads: a path,
    sample:NAME, a price frame; default: the run's data) over the test split, writing `out` (default
    RUN/backtest/; required for a pretrained model's run, whose folder is never written) as a whole.

    forecaster: any object with `sample_cumulative` (default: the run's Forecaster). val_end: where the test split
    starts (default: the run's val_end; without a run, the data's own 85% cutoff); with a run it may not be
    earlier than the run's (LeakageError, unless allow_overlap, which metrics.json flags). train_end: the data's
    train cutoff when the run never saw the data (a pretrained model; data.windows.resolve_cutoffs). horizon:
    default the run's horizon, else one token (patch_len bars), else 1. options: further BacktestConfig fields
    (long_above, short_below, long_only, kelly_fraction, kelly_cap, momentum_lookback, n_boot); extra: more
    top-level keys for metrics.json. Every value, the output folder and the leakage rule are checked before
    anything is forecast. Returns the metrics.json dict (None on the processes of a torchrun launch other than
    rank 0). A pretrained model on a new file: `backtest_model`."""
    check_bool(allow_overlap, "allow_overlap")
    unknown_options(options)
    if run is not None and not hasattr(run, "meta"):
        run = load_run(run, need_tokenizer=forecaster is None)
    if forecaster is None:
        if run is None:
            raise ConfigError("run_backtest needs a run or a forecaster")
        forecaster = forecaster_of(run)
    meta = run.meta if run is not None else {}
    horizon = horizon if horizon is not None else (meta.get("horizon") or getattr(forecaster, "patch_len", 1))
    config = BacktestConfig(strategy=strategy, cost_bps=cost_bps, slippage_bps=slippage_bps, horizon=horizon,
                            rebalance=rebalance, num_samples=256 if num_samples is None else num_samples, seed=seed,
                            **options)
    pretrained = bool(getattr(run, "pretrained", False))
    if out is None and pretrained and write:
        raise ConfigError("a pretrained model's folder is not a run directory: give the backtest an --out DIR")
    if out is None and run is not None:
        out = RunDir(run.dir).backtest
    if write and out is not None:
        check_output_dir(out)
    source = data if data is not None else meta.get("data")
    if source is None:
        where = run.dir if run is not None else "run_backtest"
        raise ConfigError(f"{where} does not record the data it was built from; pass --data PATH")
    # the run's own data is read as the pipeline read it (its --date-format, if one was given)
    frame = load_prices(source, date_format=meta.get("date_format") if data is None else None)
    cutoffs = resolve_cutoffs(frame, "backtest", run, train_end=train_end, val_end=val_end)
    log.info(f"backtest: {config.strategy}, horizon {config.horizon}, rebalance {config.rebalance}, test after "
             f"{_iso(cutoffs.splits.val_end)}, {config.num_samples} samples")
    walk = walk_forward(frame, forecaster, cutoffs, config, allow_overlap=allow_overlap)
    if walk is None:  # a process of a torchrun launch other than rank 0: it sampled its share
        return None
    metrics = backtest_metrics(walk, frame)
    run_train_end, run_val_end = run_cutoffs(run)
    # a pretrained model's own train_end is not this data's: the data's cutoffs split it (zero-shot)
    train_end = cutoffs.splits.train_end if pretrained else run_train_end
    metrics["settings"].update({"train_end": None if train_end is None else _iso(train_end),
                                "val_end": _iso(cutoffs.splits.val_end), "data": source_name(source),
                                "run": None if run is None else str(run.dir),
                                "run_val_end": None if run_val_end is None else _iso(run_val_end),
                                "forecaster": type(forecaster).__name__,
                                "overlap_allowed": bool(allow_overlap), "overlapping_decisions": walk.overlapping})
    metrics = json_ready({**metrics, **(extra or {})})
    if write and out is not None:
        write_outputs(out, metrics, walk)
        log.info(f"backtest: wrote {out}")
    return metrics


def backtest_model(model, data, out, *, train_end=None, val_end=None, calibrate: bool = True,
                   allow_overlap: bool = False, strategy: str = "sign", cost_bps: float = 1.0,
                   slippage_bps: float = 0.0, horizon: int | None = None, rebalance: int | None = None,
                   num_samples: int | None = 256, seed: int = 0, write: bool = True,
                   temperature: float | None = None, temperature_from: str = "given by the caller",
                   **options) -> dict:
    """Zero-shot walk-forward backtest of a pretrained forecaster (a folder or a built-in name such as
    "pricegpt-small") on any price data (module docstring, "Zero-shot"), written to `out` like `run_backtest`.

    The data's own cutoffs split it (train_end / val_end, default 70% / 85% of its time span) when the model never
    saw a bar of it; with `calibrate` the sampling temperature is chosen on its validation split (in memory only);
    decisions trade bars after both the data's val_end and the model's data cutoff, else a LeakageError before
    any sampling, unless allow_overlap. temperature: use this one instead of choosing one (e.g. the one
    evaluate_model chose on the same split, as `pricegpt skill --model` does), said so by temperature_from.
    horizon: default the model's. Other arguments as in `run_backtest`. Returns metrics.json's dict, with
    "zero_shot". One process (not under torchrun)."""
    check_zero_shot(out, "backtest", "backtest", writes=write)
    num_samples = 256 if num_samples is None else num_samples
    if temperature is not None:
        temperature = check_temperature(temperature, "temperature")
    # every value is checked before the model is loaded (the horizon again once the model's default is known)
    check_bool(allow_overlap, "allow_overlap")
    unknown_options(options)
    BacktestConfig(strategy=strategy, cost_bps=cost_bps, slippage_bps=slippage_bps,
                   horizon=1 if horizon is None else horizon, rebalance=rebalance, num_samples=num_samples,
                   seed=seed, **options)
    if write:
        check_output_dir(out)
    forecaster = Forecaster.from_pretrained(model)
    run = forecaster.run
    frame = load_prices(data)
    horizon = horizon if horizon is not None else (run.meta.get("horizon") or forecaster.patch_len)
    config = BacktestConfig(strategy=strategy, cost_bps=cost_bps, slippage_bps=slippage_bps, horizon=horizon,
                            rebalance=rebalance, num_samples=num_samples, seed=seed, **options)
    cutoffs = resolve_cutoffs(frame, "backtest", run, train_end=train_end, val_end=val_end)
    try:  # refused here, before the temperature is chosen: nothing is sampled for a backtest that cannot run
        plan_decisions(frame, forecaster, cutoffs, config, allow_overlap)
    except LeakageError as err:
        raise LeakageError(f"{err}, or pass --allow-overlap to trade them anyway (the metrics are flagged)") from None
    temperature_from = zero_shot_temperature(forecaster, frame, config.horizon, train_end=train_end, val_end=val_end,
                                             calibrate=calibrate, num_samples=num_samples, seed=seed,
                                             temperature=temperature, temperature_from=temperature_from)
    record = zero_shot_record(model, forecaster, temperature_from)
    zero_shot = {key: record[key] for key in ("model", "folder", "data_cutoff")}
    zero_shot.update(train_end=_iso(cutoffs.splits.train_end), val_end=_iso(cutoffs.splits.val_end),
                     temperature=record["temperature"], temperature_from=temperature_from)
    # the source itself (not the frame read from it), so that metrics.json names the file
    return run_backtest(run, data, strategy=strategy, cost_bps=cost_bps, slippage_bps=slippage_bps,
                        horizon=config.horizon, rebalance=rebalance, num_samples=num_samples, seed=seed, out=out,
                        forecaster=forecaster, train_end=train_end, val_end=val_end, write=write,
                        allow_overlap=allow_overlap, extra={"zero_shot": zero_shot}, **options)


# ------------------------------------------------------------------------------------------------ outputs
def check_output_dir(out) -> None:
    """OutputExistsError unless `out` is absent or holds nothing but a previous backtest's files."""
    check_holds_only(out, OUTPUT_FILES, "a backtest")


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """The table with every text cell that a spreadsheet would run as a formula (starting with = + - @, a tab or a
    carriage return) prefixed with a quote; numbers are left alone."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = [csv_safe_cell(v) for v in out[column]]
    return out


def write_outputs(out, metrics: dict, walk: WalkForward) -> None:
    """metrics.json, positions.csv, decisions.csv and equity.png, built in a temporary directory and renamed onto
    `out`. An existing `out` is replaced only when it holds nothing but a previous backtest's files. Symbols in
    the CSVs are neutralised against spreadsheet formulas (`csv_safe`)."""
    check_output_dir(out)
    positions = walk.bars.assign(timestamp=walk.bars["timestamp"].map(_iso))
    positions = positions[["timestamp", "symbol", "position", "momentum_position", "bar_return"]]
    decisions = walk.decisions.assign(timestamp=walk.decisions["timestamp"].map(_iso))
    with atomic_dir(out, overwrite=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        for name, table in (("positions.csv", positions), ("decisions.csv", decisions)):
            with atomic_path(tmp / name) as path:
                csv_safe(table).to_csv(path, index=False, float_format="%.10g")
        plot_equity(tmp / "equity.png", walk, metrics)


def portfolio_panel(bars: pd.DataFrame):
    """(timestamps (T,), position, momentum, held, bar_returns), each (T, n_symbols) over the union of the
    symbols' bars. A symbol without a bar at a timestamp earns 0 then and keeps its position (no phantom
    turnover); held marks the bars from its first held bar on."""
    panel = bars.pivot(index="timestamp", columns="symbol")
    position = panel["position"].ffill()
    return (panel.index, position.fillna(0.0).to_numpy(), panel["momentum_position"].ffill().fillna(0.0).to_numpy(),
            position.notna().to_numpy(), panel["bar_return"].fillna(0.0).to_numpy())


def portfolio_returns(walk: WalkForward) -> pd.DataFrame:
    """Per-bar portfolio net returns of strategy, buy_and_hold and momentum (index: timestamp)."""
    c = walk.config
    index, position, momentum, held, returns = portfolio_panel(walk.bars)
    out = {name: simulate(positions, returns, cost, slippage)[0].mean(axis=1)
           for name, positions, cost, slippage in (("strategy", position, c.cost_bps, c.slippage_bps),
                                                   ("buy_and_hold", held.astype(np.float64), 0.0, 0.0),
                                                   ("momentum", momentum, c.cost_bps, c.slippage_bps))}
    return pd.DataFrame(out, index=index)


def plot_equity(path, walk: WalkForward, metrics: dict) -> None:
    """equity.png: the portfolio's strategy, buy-and-hold and momentum, their drawdowns below."""
    returns = portfolio_returns(walk)
    labels = {"strategy": f"{walk.config.strategy} strategy", "buy_and_hold": "buy and hold",
              "momentum": f"momentum ({walk.config.momentum_lookback} bars)"}
    curves = {}
    for name, label in labels.items():
        sharpe = metrics[name]["sharpe"]
        curves[f"{label} (Sharpe {'n/a' if sharpe is None else f'{sharpe:.2f}'})"] = returns[name].to_numpy()
    plots.equity_curves(path, returns.index, curves,
                        title=f"walk-forward backtest, {metrics['portfolio']['n_symbols']} symbol(s) equal weight, "
                              f"{walk.config.cost_bps:g} bps cost")
