"""Walk-forward backtest: forecasts -> target positions -> net returns after costs -> performance statistics.

    metrics = run_backtest("runs/x", strategy="sign", cost_bps=1.0)     # writes runs/x/backtest/
    print(headline(metrics))

Two layers. Pure functions (`simulate`, `performance`, `sharpe_ci`, `sign_positions`, `kelly_positions`,
`momentum_positions`, `bars_per_year`) know nothing of models; `walk_forward` / `run_backtest` drive any object with
the Forecaster's batched method `sample_cumulative(contexts, symbols, horizon, num_samples, *, seed, context_ends)`
-> (origins, num_samples, horizon) cumulative log returns, such as `Forecaster` or `BootstrapForecaster` below.

Conventions
- Timing. Bars are indexed by their close-to-close return. The origins are data.windows' `decision_origins`: every
  `rebalance` bars (default: the horizon H) from the first test bar (timestamp > val_end, the leakage rule of
  data.windows: never a bar that trained or selected the model). The decision of origin i is made at the close of
  bar i - 1 from the data up to and including that close; its position is held from bar i on, i.e. it earns bar
  i's return first, and stays until the next decision. So the backtest trades exactly the test bars. In
  positions.csv a row (timestamp, position) is the position HELD DURING that bar (decided at the previous close);
  in decisions.csv `timestamp` is the close the decision was made at.
- Seeds. The forecaster is called once per decision timestamp (all symbols deciding then, batched) and samples each
  decision from a seed derived from (seed, symbol, decision timestamp) (forecast.origin_seed), so a decision's
  random stream depends neither on the other symbols nor on how many bars come later: truncating or changing data
  after a date leaves every earlier decision bit-identical.
- Values. Every setting is checked before any work (BacktestConfig: costs in [0, 10000] bps, seeds in
  [0, 2**63 - 1], ...), and the test split must hold at least two decisions whose whole H-bar target is in the
  data (else a DataError saying how many bars it has), so no Sharpe comes from a single decision.
- Returns and costs. Per bar: net = position * simple_return - (cost_bps + slippage_bps) / 1e4 * |delta position|,
  where delta position includes the entry from flat. No liquidation cost at the end. Buy-and-hold is the price return
  (position 1, no costs), so its total return is last close / first close - 1 over the window (first = the close of
  the first decision bar). Momentum (sign of the trailing N-bar return) trades on the same decision bars with the
  same costs. The portfolio holds 1/n of its capital in each symbol, rebalanced to equal weights every bar (its
  per-bar return is the mean of the symbols'; bars where a symbol has no bar earn 0 for it).
- Annualisation. bars_per_year = (bars - 1) / (span in years of 365.25 days), per symbol from the whole data
  (portfolio: from the union of timestamps): 252 for daily stocks, ~6300 for 24x5 hourly FX. It adapts to any
  calendar without knowing the market's hours.
- Statistics. total_return = prod(1 + net) - 1; cagr = (1 + total_return) ** (bars_per_year / T) - 1;
  sharpe = mean / std (ddof 1) * sqrt(bars_per_year) (risk-free rate 0); sortino = mean / sqrt(mean(min(net, 0)^2))
  * sqrt(bars_per_year); max_drawdown = min over bars of equity / running peak - 1 (negative, equity starts at 1);
  turnover = mean |delta position| per bar; hit_rate = share of bars with a position whose net return is > 0.
  Undefined values (zero variance, no invested bar) are null.
- Sharpe CI: stationary bootstrap (Politis & Romano 1994) of the portfolio's net returns, geometric block lengths
  with mean T^(1/3), percentile interval, 1000 resamples by default.
- Test split: data.windows' "backtest" stage: bars after the given val_end, else the run's val_end; when the data
  has no bar after the run's (another file), the data's own 85% cutoff as in evaluation. Any decision whose first
  held bar is at or before the run's val_end is refused (LeakageError): those bars chose the checkpoint and the
  temperature.

Outputs (OUT = RUN/backtest/ by default, built in a temporary directory and renamed): metrics.json (blocks strategy,
buy_and_hold, momentum = the portfolio's; portfolio, per_symbol, sharpe_ci, risk, settings), positions.csv (timestamp,
symbol, position held, momentum_position, bar_return), decisions.csv (each decision's forecast summary, targets and,
for the risk report only, the realised H-bar return) and equity.png.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ConfigError, OutputExistsError

log = logging.getLogger("pricegpt")

STRATEGIES = ("sign", "kelly")
SECONDS_PER_YEAR = 365.25 * 86400
BACKTEST_DIR = "backtest"
OUTPUT_FILES = ("metrics.json", "positions.csv", "decisions.csv", "equity.png")
PERFORMANCE_KEYS = ("total_return", "cagr", "sharpe", "sortino", "max_drawdown", "turnover", "hit_rate")
MAX_COST_BPS = 10_000.0  # 100% of the traded value per unit of turnover: anything above is a typo
MIN_DECISIONS = 2  # decisions with a whole H-bar target the test split must hold
MAX_BOOT = 100_000
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell starting with these as a formula


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
        from .config import check_bool, check_int, check_num_samples, check_number, check_seed
        from .forecast import MAX_HORIZON_BARS

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


# ------------------------------------------------------------------------------------------ pure functions
def simulate(positions, bar_returns, cost_bps: float = 0.0, slippage_bps: float = 0.0):
    """Net returns after costs. positions (T,) or (T, n_symbols): the position held during each bar (fraction of
    capital, negative = short); bar_returns: the bars' simple returns, same shape. Returns (net, turnover), both of
    that shape: net = position * return - (cost + slippage) bps * turnover, turnover = |position - previous| with
    a flat position before the first bar."""
    positions = np.asarray(positions, dtype=np.float64)
    bar_returns = np.asarray(bar_returns, dtype=np.float64)
    assert positions.shape == bar_returns.shape, f"positions {positions.shape} vs bar_returns {bar_returns.shape}"
    assert positions.ndim in (1, 2), f"positions must be (T,) or (T, n_symbols), got {positions.shape}"
    turnover = np.abs(np.diff(positions, axis=0, prepend=np.zeros_like(positions[:1])))
    net = positions * bar_returns - (cost_bps + slippage_bps) * 1e-4 * turnover
    return net, turnover


def bars_per_year(timestamps) -> float:
    """Bars per year of a series: (bars - 1) / span in years (365.25-day years). NaN with fewer than 2 bars."""
    ts = pd.to_datetime(pd.Series(timestamps), utc=True)
    span = (ts.max() - ts.min()).total_seconds() if len(ts) >= 2 else 0.0
    return (len(ts) - 1) / (span / SECONDS_PER_YEAR) if span > 0 else float("nan")


def sharpe_ratio(net_returns, bars_per_year: float) -> float | None:
    """Annualised Sharpe ratio (risk-free 0, std with ddof 1); None when undefined (fewer than 2 bars, flat)."""
    net = np.asarray(net_returns, dtype=np.float64)
    if len(net) < 2:
        return None
    std = float(np.std(net, ddof=1))
    return float(np.mean(net) / std * math.sqrt(bars_per_year)) if std > 0 else None


def performance(net_returns, bars_per_year: float, turnover=None, positions=None) -> dict:
    """Statistics of per-bar net returns (T,) (see the module docstring for the formulas). turnover (T,) gives the
    turnover statistic; positions (T,) or (T, n) limit the hit rate to bars with a position (else: bars with a
    non-zero net return)."""
    net = np.asarray(net_returns, dtype=np.float64)
    assert net.ndim == 1, f"net_returns must be (T,), got {net.shape}"
    T = len(net)
    equity = np.cumprod(1.0 + net)
    total = float(equity[-1] - 1.0) if T else 0.0
    years = T / bars_per_year if T and bars_per_year > 0 else float("nan")
    cagr = (1.0 + total) ** (1.0 / years) - 1.0 if years > 0 and 1.0 + total > 0 else (-1.0 if T else None)
    downside = math.sqrt(float(np.mean(np.minimum(net, 0.0) ** 2))) if T else 0.0
    sortino = float(np.mean(net) / downside * math.sqrt(bars_per_year)) if downside > 0 else None
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))
    drawdown = float(np.min(np.concatenate([[1.0], equity]) / peak - 1.0))
    if positions is not None:
        positions = np.asarray(positions, dtype=np.float64)
        active = positions != 0 if positions.ndim == 1 else np.any(positions != 0, axis=1)
    else:
        active = net != 0
    hit = float(np.mean(net[active] > 0)) if np.any(active) else None
    if turnover is not None:
        turnover = np.asarray(turnover, dtype=np.float64)
        turnover = turnover if turnover.ndim == 1 else turnover.mean(axis=1)
    return {"total_return": total, "cagr": None if cagr is None or not np.isfinite(cagr) else float(cagr),
            "sharpe": sharpe_ratio(net, bars_per_year), "sortino": sortino, "max_drawdown": drawdown,
            "turnover": float(np.mean(turnover)) if turnover is not None and T else None, "hit_rate": hit}


def stationary_bootstrap_indices(T: int, n_boot: int, mean_block: float, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, T) indices of stationary-bootstrap resamples: blocks start at uniform positions, their lengths are
    geometric with mean `mean_block`, and they wrap around the end of the series."""
    starts = rng.integers(0, T, size=(n_boot, T))
    new_block = rng.random((n_boot, T)) < 1.0 / mean_block
    new_block[:, 0] = True
    steps = np.arange(T)
    block_start = np.maximum.accumulate(np.where(new_block, steps, 0), axis=1)
    return (np.take_along_axis(starts, block_start, axis=1) + steps - block_start) % T


def sharpe_ci(net_returns, bars_per_year: float, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
              mean_block: float | None = None) -> dict:
    """Percentile interval of the annualised Sharpe ratio under the stationary bootstrap (module docstring).

    Returns {low, high, level, method, mean_block, n_boot}; low/high are None when the Sharpe is undefined."""
    net = np.asarray(net_returns, dtype=np.float64)
    T = len(net)
    mean_block = float(mean_block or max(1.0, T ** (1 / 3)))
    out = {"low": None, "high": None, "level": level, "method": "stationary bootstrap (Politis-Romano), "
           "percentile interval", "mean_block": mean_block, "n_boot": int(n_boot)}
    if T < 2 or np.std(net) == 0:
        return out
    rng = np.random.default_rng(seed)
    sharpes = []
    chunk = max(1, 4_000_000 // T)  # bounds memory for long series
    for start in range(0, n_boot, chunk):
        sample = net[stationary_bootstrap_indices(T, min(chunk, n_boot - start), mean_block, rng)]
        std = sample.std(axis=1, ddof=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            sharpes.append(np.where(std > 0, sample.mean(axis=1) / std, np.nan) * math.sqrt(bars_per_year))
    sharpes = np.concatenate(sharpes)
    sharpes = sharpes[np.isfinite(sharpes)]
    if len(sharpes):
        out["low"], out["high"] = (float(q) for q in np.quantile(sharpes, [(1 - level) / 2, (1 + level) / 2]))
    return out


# --------------------------------------------------------------------------------------------- strategies
def sign_positions(p_up, long_above: float = 0.55, short_below: float = 0.45, long_only: bool = False) -> np.ndarray:
    """+1 where P(up) > long_above, -1 where P(up) < short_below (0 when long_only), else 0."""
    p_up = np.asarray(p_up, dtype=np.float64)
    short = 0.0 if long_only else -1.0
    return np.where(p_up > long_above, 1.0, np.where(p_up < short_below, short, 0.0))


def kelly_positions(mean, var, fraction: float = 0.5, cap: float = 1.0, long_only: bool = False) -> np.ndarray:
    """fraction * mean / var of the horizon's simple return, clipped to [-cap, cap] ([0, cap] when long_only).
    A zero variance with a non-zero mean goes to the cap; mean 0 gives 0."""
    mean, var = np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = np.where(var > 0, fraction * mean / var, np.sign(mean) * np.inf)
    return np.clip(np.nan_to_num(raw, nan=0.0), 0.0 if long_only else -cap, cap)


def momentum_positions(trailing_return, long_only: bool = False) -> np.ndarray:
    """Sign of the trailing return: +1 up, -1 down (0 when long_only), 0 when exactly flat."""
    signs = np.sign(np.asarray(trailing_return, dtype=np.float64))
    return np.maximum(signs, 0.0) if long_only else signs


def forecast_summary(cumulative) -> dict:
    """From cumulative log-return paths (origins, samples, H): p_up, mean and var of the H-bar simple return,
    plus the forecast module's risk numbers (VaR/ES 95/99, barrier touches), each an array over origins."""
    from .forecast import risk

    cumulative = np.asarray(cumulative, dtype=np.float64)
    simple = np.expm1(cumulative[..., -1])
    numbers = risk(np.diff(cumulative, axis=-1, prepend=0.0))
    return {"p_up": numbers["p_up"], "mean": simple.mean(axis=-1), "var": simple.var(axis=-1), **{
        k: v for k, v in numbers.items() if k not in ("p_up", "expected_return")}}


# ------------------------------------------------------------------------------------------- forecasters
class BootstrapForecaster:
    """A model-free reference with the Forecaster's batched interface: each origin's paths are H returns drawn
    with replacement from the `window` log returns up to and including the origin, seeded per origin from (seed,
    symbol, context end) like the Forecaster (forecast.origin_seed)."""

    def __init__(self, window: int = 250):
        self.window = int(window)

    def sample_cumulative(self, contexts, symbols, horizon: int, num_samples: int, *, seed: int = 0,
                          context_ends=None) -> np.ndarray:
        from .data.windows import timestamps_ns
        from .forecast import origin_seed

        contexts = list(contexts)
        keys = timestamps_ns(context_ends) if context_ends is not None else [len(c) for c in contexts]
        out = np.empty((len(contexts), num_samples, horizon))
        for i, (context, symbol, key) in enumerate(zip(contexts, symbols, keys)):
            x = np.asarray(context, dtype=np.float64)
            trailing = (x if x.ndim == 1 else x[:, 0])[-self.window:]
            rng = np.random.default_rng(origin_seed(seed, str(symbol), int(key)))
            out[i] = np.cumsum(trailing[rng.integers(0, len(trailing), size=(num_samples, horizon))], axis=-1)
        return out


# ------------------------------------------------------------------------------------------- walk-forward
@dataclass
class WalkForward:
    """What the walk-forward produced. decisions: one row per (decision timestamp, symbol) with the forecast summary
    and the targets; bars: one row per (held bar, symbol) with bar_return (simple), position and momentum_position."""

    decisions: pd.DataFrame
    bars: pd.DataFrame
    config: BacktestConfig


def walk_forward(frame: pd.DataFrame, forecaster, cutoffs, config: BacktestConfig) -> WalkForward:
    """Decisions over the test bars of every symbol of the canonical price `frame` (module docstring).

    cutoffs: a data.windows.Cutoffs of the "backtest" stage (run_backtest's), or a val_end (then the test bars
    are those after it, with no run to guard). Refuses a test split with fewer than MIN_DECISIONS decisions
    whose whole horizon is in the data, and origins the leakage rule forbids, before forecasting anything."""
    from .data.windows import (
        Cutoffs,
        check_leakage,
        decision_origins,
        require_origins,
        resolve_cutoffs,
        return_features,
        symbol_series,
    )
    from .forecast import check_paths_memory

    if not isinstance(cutoffs, Cutoffs):
        cutoffs = resolve_cutoffs(frame, "backtest", val_end=cutoffs)
    features = forecaster.features(frame) if hasattr(forecaster, "features") else return_features(frame)
    series = symbol_series(features, cutoffs.splits)
    H, R, N = config.horizon, config.rebalance, config.momentum_lookback
    origins = decision_origins(series, R, min_context=int(getattr(forecaster, "patch_len", 1)))
    require_origins(origins, series, cutoffs, H, minimum=MIN_DECISIONS)
    check_leakage(origins, series, cutoffs)
    decided_at = origins.context_end(series)
    pending: dict[np.datetime64, list[int]] = {}  # decision timestamp -> origins deciding then
    for k, when in enumerate(decided_at):
        pending.setdefault(when, []).append(k)
    check_paths_memory(max(len(group) for group in pending.values()), config.num_samples, H)
    rows = []
    for step, when in enumerate(sorted(pending)):
        group = pending[when]
        symbols = [str(origins.symbols[k]) for k in group]
        contexts = [series[s].features[:origins.index[k]] for s, k in zip(symbols, group)]
        cum = forecaster.sample_cumulative(contexts, symbols, H, config.num_samples, seed=config.seed,
                                           context_ends=np.full(len(group), when))
        cum = np.asarray(cum, dtype=np.float64)
        assert cum.shape == (len(group), config.num_samples, H), f"forecaster returned {cum.shape}"
        summary = forecast_summary(cum)
        for j, (symbol, k) in enumerate(zip(symbols, group)):
            lr, i = series[symbol].returns, int(origins.index[k])
            # the outcome of the forecast, for the risk report only (never used for positions)
            realised = math.expm1(lr[i:i + H].sum()) if i + H <= len(lr) else float("nan")
            row = {"timestamp": pd.Timestamp(when).tz_localize("UTC"), "symbol": symbol,
                   "trailing_return": float(lr[max(0, i - N):i].sum()), "realised_return": realised}
            for key, value in summary.items():
                if isinstance(value, dict):
                    row.update({f"{key}_{level}": float(v[j]) for level, v in value.items()})
                else:
                    row[key] = float(value[j])
            rows.append(row)
        if (step + 1) % 100 == 0:
            log.info(f"backtest: {step + 1}/{len(pending)} decision times")
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
    return WalkForward(decisions, pd.concat(bars, ignore_index=True), config)


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
    from .data import iso

    return iso(pd.Timestamp(ts))


# ------------------------------------------------------------------------------------------------ driver
def run_backtest(run=None, data=None, *, strategy: str = "sign", cost_bps: float = 1.0, slippage_bps: float = 0.0,
                 horizon: int | None = None, rebalance: int | None = None, num_samples: int | None = 256,
                 seed: int = 0, out=None, forecaster=None, val_end=None, write: bool = True, **options) -> dict:
    """Walk-forward backtest of `run` (a directory or a loaded Run) on `data` (anything `load_prices` reads: a path,
    sample:NAME, a price frame; default: the run's data) over the test split, writing `out` (default
    RUN/backtest/) as a whole.

    forecaster: any object with `sample_cumulative` (default: the run's Forecaster). val_end: where the test split
    starts (default: the run's val_end; without a run, the data's own 85% cutoff); with a run it may not be
    earlier than the run's (LeakageError). horizon: default the run's horizon, else one token (patch_len bars),
    else 1. options: further BacktestConfig fields (long_above, short_below, long_only, kelly_fraction, kelly_cap,
    momentum_lookback, n_boot). Every value, the output folder and the leakage rule are checked before anything
    is forecast. Returns the metrics.json dict."""
    from .data import load_prices
    from .data.windows import resolve_cutoffs, run_cutoffs
    from .evaluate import _json_ready, source_name

    if run is not None and not hasattr(run, "meta"):
        from .runs import load_run

        run = load_run(run, need_tokenizer=forecaster is None)
    if forecaster is None:
        if run is None:
            raise ConfigError("run_backtest needs a run or a forecaster")
        from .forecast import Forecaster

        forecaster = Forecaster(run)
    meta = run.meta if run is not None else {}
    horizon = horizon if horizon is not None else (meta.get("horizon") or getattr(forecaster, "patch_len", 1))
    config = BacktestConfig(strategy=strategy, cost_bps=cost_bps, slippage_bps=slippage_bps, horizon=horizon,
                            rebalance=rebalance, num_samples=256 if num_samples is None else num_samples, seed=seed,
                            **options)
    if out is None and run is not None:
        out = Path(run.dir) / BACKTEST_DIR
    if write and out is not None:
        check_output_dir(out)
    source = data if data is not None else meta.get("data")
    if source is None:
        where = run.dir if run is not None else "run_backtest"
        raise ConfigError(f"{where} does not record the data it was built from; pass --data PATH")
    frame = load_prices(source)
    cutoffs = resolve_cutoffs(frame, "backtest", run, val_end=val_end)
    log.info(f"backtest: {config.strategy}, horizon {config.horizon}, rebalance {config.rebalance}, test after "
             f"{_iso(cutoffs.splits.val_end)}, {config.num_samples} samples")
    walk = walk_forward(frame, forecaster, cutoffs, config)
    metrics = backtest_metrics(walk, frame)
    train_end = run_cutoffs(run)[0]
    metrics["settings"].update({"train_end": None if train_end is None else _iso(train_end),
                                "val_end": _iso(cutoffs.splits.val_end), "data": source_name(source),
                                "run": None if run is None else str(run.dir),
                                "forecaster": type(forecaster).__name__})
    metrics = _json_ready(metrics)
    if write and out is not None:
        write_outputs(out, metrics, walk)
        log.info(f"backtest: wrote {out}")
    return metrics


# ------------------------------------------------------------------------------------------------ outputs
def check_output_dir(out) -> None:
    """OutputExistsError unless `out` is absent or holds nothing but a previous backtest's files."""
    from .fileio import OUTPUT_MARKER

    out = Path(out)
    if out.exists() and not (out.is_dir() and {p.name for p in out.iterdir()} <= {*OUTPUT_FILES, OUTPUT_MARKER}):
        raise OutputExistsError(f"{out} exists and does not hold a backtest; choose another --out or remove it")


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """The table with every text cell that a spreadsheet would run as a formula (starting with = + - @, a tab or a
    carriage return) prefixed with a quote; numbers are left alone."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object or pd.api.types.is_string_dtype(out[column]):
            out[column] = [f"'{v}" if isinstance(v, str) and v.startswith(CSV_FORMULA_START) else v
                           for v in out[column]]
    return out


def write_outputs(out, metrics: dict, walk: WalkForward) -> None:
    """metrics.json, positions.csv, decisions.csv and equity.png, built in a temporary directory and renamed onto
    `out`. An existing `out` is replaced only when it holds nothing but a previous backtest's files. Symbols in
    the CSVs are neutralised against spreadsheet formulas (`csv_safe`)."""
    from .fileio import atomic_dir, atomic_path, write_json

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
    """Equity of the portfolio's strategy, buy-and-hold and momentum, and their drawdowns below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileio import atomic_path

    returns = portfolio_returns(walk)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    labels = {"strategy": f"{walk.config.strategy} strategy", "buy_and_hold": "buy and hold",
              "momentum": f"momentum ({walk.config.momentum_lookback} bars)"}
    for (name, label), color in zip(labels.items(), ("tab:blue", "0.4", "tab:orange")):
        equity = np.cumprod(1.0 + returns[name].to_numpy())
        sharpe = metrics[name]["sharpe"]
        top.plot(returns.index, equity, color=color, lw=1.3,
                 label=f"{label} (Sharpe {'n/a' if sharpe is None else f'{sharpe:.2f}'})")
        bottom.plot(returns.index, equity / np.maximum.accumulate(np.maximum(equity, 1.0)) - 1.0, color=color, lw=1)
    top.axhline(1.0, color="0.7", lw=0.8, ls=":")
    top.set_ylabel("equity (start = 1)")
    top.set_title(f"walk-forward backtest, {metrics['portfolio']['n_symbols']} symbol(s) equal weight, "
                  f"{walk.config.cost_bps:g} bps cost", fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_ylabel("drawdown")
    bottom.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    fig.autofmt_xdate()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ summary
def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def headline(metrics: dict) -> str:
    """One line: `backtest (sign, 1.0 bps): Sharpe 0.42 [-0.80, 1.60] vs buy-and-hold 0.61, max DD -12.3%, ...`"""
    settings, strategy, ci = metrics["settings"], metrics["strategy"], metrics.get("sharpe_ci") or {}
    cost = f"{metrics['cost_bps']:.1f}" + (f"+{metrics['slippage_bps']:.1f}" if metrics.get("slippage_bps") else "")
    interval = f" [{_fmt(ci.get('low'), '.2f')}, {_fmt(ci.get('high'), '.2f')}]" if ci.get("low") is not None else ""
    return (f"backtest ({settings['strategy']}, {cost} bps): Sharpe {_fmt(strategy['sharpe'], '.2f')}{interval} "
            f"vs buy-and-hold {_fmt(metrics['buy_and_hold']['sharpe'], '.2f')}, "
            f"max DD {_fmt(strategy['max_drawdown'], '.1%')}, turnover {_fmt(strategy['turnover'], '.2f')}/bar")


def summary_table(metrics: dict) -> str:
    """The portfolio's strategy, buy-and-hold and momentum side by side."""
    columns = (("total_return", "total", ".1%"), ("cagr", "CAGR", ".1%"), ("sharpe", "Sharpe", ".2f"),
               ("sortino", "Sortino", ".2f"), ("max_drawdown", "max DD", ".1%"), ("turnover", "turnover", ".3f"),
               ("hit_rate", "hit rate", ".1%"))
    lines = [f"{'':<14}" + "".join(f"{title:>10}" for _, title, _ in columns)]
    for name in ("strategy", "buy_and_hold", "momentum"):
        lines.append(f"{name.replace('_', '-'):<14}" + "".join(f"{_fmt(metrics[name][key], spec):>10}"
                                                               for key, _, spec in columns))
    s = metrics["settings"]
    lines.append(f"{s['n_decisions']} decisions from {s['first_decision']} to {s['last_decision']}, horizon "
                 f"{s['horizon']} bars, rebalance every {s['rebalance']}, {s['bars_per_year']:.0f} bars/year")
    return "\n".join(lines)


def backtest_command(args) -> int:
    """`pricegpt backtest`: run the walk-forward backtest, print the headline and a table, write the outputs."""
    metrics = run_backtest(args.run, data=args.data, strategy=args.strategy, cost_bps=args.cost_bps,
                           slippage_bps=getattr(args, "slippage_bps", 0.0), horizon=args.horizon,
                           num_samples=args.num_samples, seed=args.seed, out=args.out,
                           rebalance=args.rebalance, long_above=args.long_above, short_below=args.short_below,
                           long_only=args.long_only, kelly_fraction=args.kelly_fraction,
                           momentum_lookback=args.momentum_lookback)
    print(headline(metrics))
    print(summary_table(metrics))
    print(f"wrote {Path(args.out) if args.out else Path(args.run) / BACKTEST_DIR}")
    return 0
