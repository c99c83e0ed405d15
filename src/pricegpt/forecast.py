"""Forecasts from a trained run: context bars -> tokens -> sampled token paths -> decoded log-return paths.

    fc = Forecaster.from_run("runs/x")
    paths = fc.sample_paths(frame, horizon_bars=20, num_samples=512)      # ForecastPaths, (symbols, samples, H)
    table = fc.predict_quantiles(frame, horizon_bars=20)                  # cumulative-return and price quantiles
    summary = risk(paths.paths[0])                                        # P(up), VaR/ES 95/99, barrier touches

How a context becomes a forecast (the same for one symbol or thousands of evaluation origins):
1. Take the last k * patch_len bars of features (log returns) up to and including the origin bar. k is the
   model's context length minus the tokens to generate (so the whole sequence stays within the positions the
   model was trained on), or fewer if the history is shorter; at least one patch.
2. Cut them into patches that END AT THE ORIGIN and encode them with the run's tokenizer, using the symbol's
   train-split scale (exactly the scaling of training; an unknown symbol gets the global scale).
3. Generate ceil(H / patch_len) tokens per sample, decode each with the symbol's scale, keep the first H bars.
Every sampled path is kept; nothing is averaged.

Seeds. Every origin is sampled by its own engine calls (one call of up to num_samples rows, more only when its
samples exceed what the KV-cache budget allows in one call) with a seed derived from (seed, symbol, the timestamp
of the context's last bar): an origin's paths are the same whether it is forecast alone or among thousands,
whatever --max-origins, the symbol set or the batch size (the KV-cache budget only matters when one origin's
samples need several calls). At the default 256 samples this is also faster than packing 32 origins into one call:
6.7 s instead of 10.3 s for the quickstart evaluation's 488 origins on 2 CPU cores (tiny model, 4 new tokens);
with 16 samples per origin it is about 3x slower (per-call overhead), which only tests and quick looks use.

Values (horizon, num_samples, seed, temperature) are checked before any work: ConfigErrors naming the bound
(config.py's checks), and the paths' memory against half of the free memory (`check_paths_memory`).

Temperature: the run's calibrated temperature (RUN/calibration.json, chosen on the validation split by
`calibrate_temperature`) unless one is given; 1.0 for an uncalibrated run.

Risk numbers are computed from the H-bar cumulative log return R of each path. Losses are POSITIVE fractions of
the position's value: loss = 1 - exp(R). VaR_a is the a-quantile of the loss (e.g. var_95 = 0.03: a 5% chance of
losing 3% or more) and ES_a the mean loss in that worst (1 - a) tail. A barrier +-k is touched when the price
path closes at or beyond (1 +- k) times the origin close at any of the H bars (close-to-close monitoring).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import check_int, check_memory, check_num_samples, check_seed, check_temperature, derive_seed, show
from .errors import ConfigError, DataError, OutputExistsError, PriceGPTError
from .model import generate

log = logging.getLogger("pricegpt")

QUANTILE_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
TEMPERATURE_GRID = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
VAR_LEVELS = (0.95, 0.99)
BARRIERS = (0.05, 0.10)
KV_CACHE_BUDGET_BYTES = 512 * 2**20  # bounds the KV cache (and so memory) of one engine call
MAX_HORIZON_BARS = 100_000  # a horizon is generated token by token; the engine's bound on new tokens
FORECAST_DIR = "forecast"  # RUN/forecast/SYMBOL.png: the default place of `pricegpt forecast`'s charts
PATH_COPIES = 3  # float64 copies of all paths alive at once (paths, cumulative, sorted for the scores)


@dataclass
class ForecastPaths:
    """Sampled futures of several symbols from one origin each.

    symbols (n,), origins (n,) the last context bar's timestamp, last_close (n,) the close at the origin (NaN
    when unknown), paths (n, samples, horizon) float64 decoded per-bar log returns."""

    symbols: list[str]
    origins: list[pd.Timestamp]
    last_close: np.ndarray
    paths: np.ndarray

    @property
    def cumulative(self) -> np.ndarray:
        """(n, samples, horizon) cumulative log return from the origin after each bar."""
        return np.cumsum(self.paths, axis=-1)

    def for_symbol(self, symbol: str) -> np.ndarray:
        """(samples, horizon) per-bar log returns of one symbol."""
        return self.paths[self.symbols.index(symbol)]


class Forecaster:
    """A trained run ready to forecast: `Forecaster.from_run(dir)` or `Forecaster(load_run(dir))`."""

    def __init__(self, run):
        if run.tokenizer is None:
            raise PriceGPTError(f"{run.dir} has no tokenizer (it was trained on a bare token file); its tokens "
                                "cannot be decoded to returns, so it cannot forecast prices")
        self.run = run
        self.model = run.model
        self.tokenizer = run.tokenizer

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, device: str = "cpu") -> Forecaster:
        from .runs import load_run

        return cls(load_run(run_dir, device=device, need_tokenizer=True))

    @property
    def patch_len(self) -> int:
        return self.tokenizer.patch_len

    @property
    def temperature(self) -> float:
        return float(self.run.calibration.get("temperature", 1.0))

    def features(self, frame: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per symbol: (timestamps (n,) datetime64[ns], features (n, n_features)); column 0 is the log return."""
        from .tokenizer import bar_features

        return bar_features(frame, self.tokenizer.config.features)

    def context_patches(self, horizon: int) -> int:
        """How many patches of context a forecast of `horizon` bars uses when the history allows."""
        n_new = math.ceil(horizon / self.patch_len)
        return max(1, self.model.config.sequence_len - n_new)

    # ------------------------------------------------------------------------------------------- sampling
    def sample_returns(self, contexts, symbols, horizon: int, num_samples: int, *, seed: int = 0,
                       temperature: float | None = None, context_ends=None) -> np.ndarray:
        """Per-bar log-return paths of many origins: (origins, num_samples, horizon) float64.

        contexts: a list of arrays (bars,) or (bars, n_features) of raw features up to each origin, or one
        array (origins, bars[, n_features]); symbols: one symbol per origin (for the scale); context_ends: the
        timestamp of each context's last bar. Each origin is sampled by its own engine calls with a seed derived
        from (seed, symbol, context end) (without context_ends: the number of context bars), so its paths do
        not depend on which other origins are asked for, their order or the memory budget (see `origin_seed`).
        """
        from .data.windows import timestamps_ns

        horizon, num_samples, seed = check_sampling(horizon, num_samples, seed)
        temperature = self.temperature if temperature is None else check_temperature(temperature)
        symbols = [str(s) for s in symbols]
        contexts = list(contexts)
        assert len(contexts) == len(symbols), f"{len(contexts)} contexts but {len(symbols)} symbols"
        if context_ends is not None:
            keys = timestamps_ns(context_ends)
            assert len(keys) == len(contexts), f"{len(keys)} context ends but {len(contexts)} contexts"
        else:
            keys = np.array([len(c) for c in contexts], dtype=np.int64)
        check_paths_memory(len(contexts), num_samples, horizon)
        P = self.patch_len
        n_new = math.ceil(horizon / P)
        max_patches = self.context_patches(horizon)
        tokens = []
        for context, symbol in zip(contexts, symbols):
            x = np.asarray(context, dtype=np.float64)
            x = x[:, None] if x.ndim == 1 else x
            k = min(max_patches, len(x) // P)
            if k < 1:
                raise DataError(f"{symbol}: a forecast needs at least {P} bars of history before the origin "
                                f"(one patch), got {len(x)}")
            tokens.append(self.tokenizer.encode_patches(x[len(x) - k * P:].reshape(k, P, x.shape[1]), symbol))
        out = np.empty((len(contexts), num_samples, horizon))
        block = min(num_samples, self._rows_per_call())
        for i, (ids, symbol, key) in enumerate(zip(tokens, symbols, keys)):
            idx = torch.as_tensor(np.asarray(ids)[None], dtype=torch.long)
            for b, s0 in enumerate(range(0, num_samples, block)):
                n = min(block, num_samples - s0)
                generated = generate(self.model, idx, n_new, num_samples=n, temperature=temperature,
                                                seed=origin_seed(seed, symbol, int(key), b))
                out[i, s0:s0 + n] = self.tokenizer.decode(generated[0].cpu().numpy(), symbol)[:, :horizon]
        return out

    def sample_cumulative(self, contexts, symbols, horizon: int, num_samples: int, *, seed: int = 0,
                          temperature: float | None = None, context_ends=None) -> np.ndarray:
        """Like `sample_returns`, as cumulative log returns from the origin: (origins, num_samples, horizon)."""
        return np.cumsum(self.sample_returns(contexts, symbols, horizon, num_samples, seed=seed,
                                             temperature=temperature, context_ends=context_ends), axis=-1)

    def _rows_per_call(self) -> int:
        """Sample rows per engine call: the engine's KV cache holds sequence_len positions per row (fp32)."""
        c = self.model.config
        bytes_per_row = c.n_layer * 2 * c.sequence_len * c.n_kv_head * c.head_dim * 4
        return max(1, KV_CACHE_BUDGET_BYTES // bytes_per_row)

    def sample_paths(self, context_frame, horizon_bars: int, num_samples: int, *, seed: int = 0,
                     temperature: float | None = None, symbols: list[str] | None = None) -> ForecastPaths:
        """Paths for the `horizon_bars` bars after the last bar of each symbol in `context_frame` (a price frame,
        file, folder or sample:NAME: whatever `load_prices` reads)."""
        from .data import load_prices

        check_sampling(horizon_bars, num_samples, seed, horizon_flag="horizon_bars (--horizon)")
        context_frame = load_prices(context_frame)
        per_symbol = self.features(context_frame)
        symbols = sorted(per_symbol) if symbols is None else [str(s) for s in symbols]
        check_symbols(symbols, list(per_symbol))
        last_close = context_frame.groupby("symbol")["close"].last()
        ends = [per_symbol[s][0][-1] if len(per_symbol[s][0]) else np.datetime64("NaT") for s in symbols]
        paths = self.sample_returns([per_symbol[s][1] for s in symbols], symbols, horizon_bars, num_samples,
                                    seed=seed, temperature=temperature, context_ends=ends)
        origins = [pd.Timestamp(end).tz_localize("UTC") for end in ends]
        return ForecastPaths(symbols, origins, np.array([float(last_close[s]) for s in symbols]), paths)

    def predict_quantiles(self, context_frame, horizon_bars: int, levels=QUANTILE_LEVELS,
                          num_samples: int = 512, *, seed: int = 0, temperature: float | None = None,
                          symbols: list[str] | None = None) -> pd.DataFrame:
        """One row per symbol and horizon step (1..H): quantiles of the cumulative log return (`return_qL`)
        and of the price (`price_qL` = last close * exp(return quantile))."""
        fc = self.sample_paths(context_frame, horizon_bars, num_samples, seed=seed, temperature=temperature,
                               symbols=symbols)
        return quantile_table(fc, levels)


def check_symbols(wanted: list[str], available: list[str]) -> None:
    """DataError naming the symbols the data lacks and (some of) those it has."""
    missing = [s for s in wanted if s not in available]
    if missing:
        known = sorted(available)
        shown = ", ".join(show(s) for s in known[:20]) + (f" and {len(known) - 20} more" if len(known) > 20 else "")
        raise DataError(f"symbol(s) {', '.join(show(s) for s in missing[:5])} not in the data; available: "
                        f"{shown or 'none'}")


# ------------------------------------------------------------------------------------------ values and seeds
def check_sampling(horizon, num_samples, seed, *, horizon_flag: str = "--horizon") -> tuple[int, int, int]:
    """(horizon, num_samples, seed) as ints inside their bounds, else a ConfigError naming the flag and the bound:
    horizon in [1, MAX_HORIZON_BARS], num_samples in [1, 1,000,000], seed in [0, 2**63 - 1]."""
    return (check_int(horizon, horizon_flag, 1, MAX_HORIZON_BARS),
            check_num_samples(num_samples, "num_samples (--num-samples)"), check_seed(seed, "seed (--seed)"))


def paths_bytes(n_origins: int, num_samples: int, horizon: int) -> int:
    """Host memory of the sampled paths of `n_origins` origins: the float64 paths and the copies scoring them
    makes (cumulative returns, sorted samples)."""
    return PATH_COPIES * 8 * int(n_origins) * int(num_samples) * int(horizon)


def check_paths_memory(n_origins: int, num_samples: int, horizon: int) -> None:
    """ConfigError, before anything is sampled, when the paths would need more than half the free memory."""
    check_memory(paths_bytes(n_origins, num_samples, horizon),
                 f"{n_origins:,} origin(s) x {num_samples:,} sample paths x {horizon:,} bars",
                 "use a smaller --num-samples (or fewer origins: --max-origins, a shorter split)")


def origin_seed(seed: int, symbol: str, key: int, block: int = 0) -> int:
    """The sampling seed of one origin: derived from (seed, symbol, key) only, key = the timestamp (ns) of the
    context's last bar; `block` numbers the engine calls of an origin whose samples exceed one call."""
    symbol_key = int.from_bytes(hashlib.sha256(str(symbol).encode("utf-8")).digest()[:8], "little")
    return derive_seed(seed, symbol_key, int(key), int(block))


def quantile_table(fc: ForecastPaths, levels=QUANTILE_LEVELS) -> pd.DataFrame:
    cum = fc.cumulative
    quantiles = np.quantile(cum, levels, axis=1)  # (levels, symbols, horizon)
    frames = []
    for i, symbol in enumerate(fc.symbols):
        table = pd.DataFrame({"symbol": symbol, "origin": fc.origins[i], "step": np.arange(1, cum.shape[-1] + 1)})
        for j, level in enumerate(levels):
            table[f"return_q{level:g}"] = quantiles[j, i]
        for j, level in enumerate(levels):
            table[f"price_q{level:g}"] = fc.last_close[i] * np.exp(quantiles[j, i])
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------- risk
def risk(paths: np.ndarray, var_levels=VAR_LEVELS, barriers=BARRIERS) -> dict:
    """Risk numbers from per-bar log-return paths (samples, horizon), or (origins, samples, horizon) for a batch
    (then every value is an array over origins). See the module docstring for the sign conventions.

    Keys: p_up (P(R_H > 0)), expected_return (mean simple return), var_95/es_95/var_99/es_99 (positive = loss),
    p_touch_up / p_touch_down: {"0.05": probability, ...} for each barrier k.
    """
    paths = np.asarray(paths, dtype=np.float64)
    batch = paths.ndim == 3
    paths = paths if batch else paths[None]
    cum = np.cumsum(paths, axis=-1)
    final = cum[..., -1]  # (origins, samples)
    loss = np.sort(1.0 - np.exp(final), axis=-1)
    S = loss.shape[-1]
    out = {"p_up": np.mean(final > 0, axis=-1), "expected_return": np.mean(np.expm1(final), axis=-1)}
    for level in var_levels:
        var = np.quantile(loss, level, axis=-1)
        tail = max(1, math.ceil(round((1 - level) * S, 9)))  # at least the worst path; round: 0.05 * 100 > 5
        out[f"var_{round(level * 100)}"] = var
        out[f"es_{round(level * 100)}"] = loss[:, S - tail:].mean(axis=-1)
    high, low = cum.max(axis=-1), cum.min(axis=-1)
    out["p_touch_up"] = {f"{k:g}": np.mean(high >= math.log1p(k), axis=-1) for k in barriers}
    out["p_touch_down"] = {f"{k:g}": np.mean(low <= math.log1p(-k), axis=-1) for k in barriers}
    if batch:
        return out
    return {key: ({k: float(v[0]) for k, v in value.items()} if isinstance(value, dict) else float(value[0]))
            for key, value in out.items()}


# ---------------------------------------------------------------------------------------------- calibration
def calibrate_temperature(run, frame, splits, horizon: int, num_samples: int = 256,
                          grid=TEMPERATURE_GRID, max_origins: int | None = 50, seed: int = 0) -> dict:
    """Pick the sampling temperature with the lowest mean CRPS of the H-bar return on the VALIDATION split
    (origins chosen as in evaluation, at most `max_origins` per symbol) and store it in RUN/calibration.json.

    frame: prices (anything `load_prices` reads); splits: the cutoffs, or None for the run's. The origins are those
    of data.windows' "calibrate" stage: targets after the run's train_end and at or before its val_end, else a
    LeakageError. Every grid value is scored on the same origins with the same seeds (common random numbers), so
    differences between temperatures are not sampling noise of the origins."""
    from .data import load_prices
    from .data.windows import check_leakage, require_origins, resolve_cutoffs, select_origins, symbol_series
    from .evaluate.metrics import crps_samples

    horizon, num_samples, seed = check_sampling(horizon, num_samples, seed)
    grid = [check_temperature(t, "temperature grid value") for t in grid]
    if not grid:
        raise ConfigError("the temperature grid is empty; give at least one temperature")
    if max_origins is not None:
        max_origins = check_int(max_origins, "max_origins (--max-origins)", 1, 2**31 - 1)
    forecaster = Forecaster(run)
    frame = load_prices(frame)
    cutoffs = resolve_cutoffs(frame, "calibrate", run, train_end=None if splits is None else splits.train_end,
                              val_end=None if splits is None else splits.val_end)
    series = symbol_series(forecaster.features(frame), cutoffs.splits)
    origins = select_origins(series, "val", horizon, max_origins=max_origins, min_context=forecaster.patch_len)
    require_origins(origins, series, cutoffs, horizon)
    check_leakage(origins, series, cutoffs, horizon)
    check_paths_memory(origins.n, num_samples, horizon)
    contexts, ends = origins.contexts(series), origins.context_end(series)
    realised = origins.realised(series, horizon)[:, -1]
    crps = {}
    for temperature in grid:
        cum = forecaster.sample_cumulative(contexts, origins.symbols, horizon, num_samples, seed=seed,
                                           temperature=temperature, context_ends=ends)
        crps[f"{temperature:g}"] = float(np.mean(crps_samples(cum[..., -1], realised)))
        log.info(f"calibration: temperature {temperature:g} -> val CRPS {crps[f'{temperature:g}']:.6f}")
    best = min(grid, key=lambda t: crps[f"{t:g}"])
    at_edge = len(grid) > 1 and best in (min(grid), max(grid))
    if at_edge:
        log.warning(f"calibration: the best temperature {best:g} is at the edge of the grid {list(grid)}; "
                    "a wider grid may find a better one")
    calibration = {"temperature": float(best), "crps": crps, "split": "val", "n_origins": origins.n,
                   "horizon_bars": horizon, "num_samples": num_samples, "seed": seed, "at_grid_edge": at_edge}
    run.save_calibration(calibration)
    return calibration


# -------------------------------------------------------------------------------------------------- command
def symbol_file_name(symbol: str) -> str:
    """A symbol as a file name stem: the symbol when it is a plain short name, else a cleaned, shortened name
    with a hash suffix (no path separators, never too long). The token store's rule, so one rule names files."""
    from .tokenizer.store import safe_file_names

    return safe_file_names([str(symbol)])[str(symbol)]


def format_forecast(table: pd.DataFrame, summary: dict, symbol: str, horizon: int, num_samples: int,
                    temperature: float) -> str:
    levels = [c[len("return_q"):] for c in table.columns if c.startswith("return_q")]
    origin = table["origin"].iloc[0]
    lines = [f"{symbol}: {num_samples} sampled paths for the next {horizon} bars after {origin:%Y-%m-%d %H:%M} "
             f"(temperature {temperature:g})",
             "cumulative log return quantiles:",
             f"{'step':>4} " + " ".join(f"{'q' + lv:>9}" for lv in levels)]
    for _, row in table.iterrows():
        lines.append(f"{int(row['step']):>4} " + " ".join(f"{row['return_q' + lv]:>+9.4f}" for lv in levels))
    lines.append("price quantiles at the horizon: " + "  ".join(
        f"q{lv} {table['price_q' + lv].iloc[-1]:.4f}" for lv in levels))
    lines.append(f"P(up over {horizon} bars) {summary['p_up']:.1%}   expected return {summary['expected_return']:+.2%}")
    levels_pct = [key[len("var_"):] for key in summary if key.startswith("var_")]
    lines.append("loss as a positive fraction of value: " + "  ".join(
        f"VaR {lv}% {summary['var_' + lv]:.2%}  ES {lv}% {summary['es_' + lv]:.2%}" for lv in levels_pct))
    for k in summary["p_touch_up"]:
        lines.append(f"P(touch +{float(k):.0%}) {summary['p_touch_up'][k]:.1%}   "
                     f"P(touch -{float(k):.0%}) {summary['p_touch_down'][k]:.1%}")
    return "\n".join(lines)


def forecast_command(args) -> int:
    """`pricegpt forecast`: quantiles and risk of the next --horizon bars of --symbol, and a fan chart PNG.

    The chart goes to --out (a new .png file; an existing file only when it is a chart in RUN/forecast/) or
    RUN/forecast/SYMBOL.png. Every value and the chart path are checked before the run is loaded."""
    from .data import load_prices
    from .evaluate.plots import fan_chart

    horizon, num_samples, seed = check_sampling(args.horizon, args.num_samples, args.seed)
    default_dir = Path(args.run) / FORECAST_DIR
    out = Path(args.out) if args.out else default_dir / f"{symbol_file_name(args.symbol)}.png"
    check_chart_path(out, default_dir, flag="--out" if args.out else "the default chart path")
    forecaster = Forecaster.from_run(args.run)
    frame = load_prices(args.data)
    check_symbols([args.symbol], frame["symbol"].unique().tolist())
    frame = frame[frame["symbol"] == args.symbol]
    fc = forecaster.sample_paths(frame, horizon, num_samples, seed=seed, symbols=[args.symbol])
    table = quantile_table(fc)
    summary = risk(fc.paths[0])
    print(format_forecast(table, summary, args.symbol, horizon, num_samples, forecaster.temperature))
    history = frame["close"].to_numpy(dtype=np.float64)[-max(4 * horizon, 60):]
    fan_chart(out, history, fc.last_close[0] * np.exp(fc.cumulative[0]), ylabel="price",
              title=f"{args.symbol}: next {horizon} bars ({num_samples} paths)")
    print(f"fan chart: {out}")
    return 0


def check_chart_path(out: Path, forecast_dir: Path, flag: str = "--out") -> None:
    """Refuse a chart path that is not a .png name, or that exists and is not a chart in the run's forecast folder
    (`forecast_dir`, RUN/forecast/, where pricegpt writes them): a user's file is never replaced."""
    if out.suffix.lower() != ".png":
        raise ConfigError(f"{flag} {out}: the fan chart is a PNG image; give a file name ending in .png")
    if not (out.exists() or out.is_symlink()):
        return
    ours = (out.is_file() and not out.is_symlink() and _is_png(out)
            and out.parent.resolve() == forecast_dir.resolve())
    if not ours:
        raise OutputExistsError(f"{flag} {out} already exists and is not one of pricegpt's charts in "
                                f"{forecast_dir}; it is never replaced: choose another --out")


def _is_png(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False
