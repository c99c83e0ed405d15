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
Every sampled path is kept; nothing is averaged. Sampling is seeded (the engine's torch.Generator).

Temperature: the run's calibrated temperature (RUN/calibration.json, chosen on the validation split by
`calibrate_temperature`) unless one is given; 1.0 for an uncalibrated run.

Risk numbers are computed from the H-bar cumulative log return R of each path. Losses are POSITIVE fractions of
the position's value: loss = 1 - exp(R). VaR_a is the a-quantile of the loss (e.g. var_95 = 0.03: a 5% chance of
losing 3% or more) and ES_a the mean loss in that worst (1 - a) tail. A barrier +-k is touched when the price
path closes at or beyond (1 +- k) times the origin close at any of the H bars (close-to-close monitoring).
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .errors import DataError, PriceGPTError

log = logging.getLogger("pricegpt")

QUANTILE_LEVELS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
TEMPERATURE_GRID = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)
VAR_LEVELS = (0.95, 0.99)
BARRIERS = (0.05, 0.10)
KV_CACHE_BUDGET_BYTES = 512 * 2**20  # bounds the KV cache (and so memory) of one engine call


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
                       temperature: float | None = None) -> np.ndarray:
        """Per-bar log-return paths for many origins in as few engine calls as memory allows.

        contexts: a list of arrays (bars,) or (bars, n_features) of raw features up to each origin, or one
        array (origins, bars[, n_features]); symbols: one symbol per origin (for the scale).
        Returns (origins, num_samples, horizon) float64.
        """
        assert horizon >= 1 and num_samples >= 1, "horizon and num_samples must be positive"
        temperature = self.temperature if temperature is None else float(temperature)
        symbols = [str(s) for s in symbols]
        contexts = list(contexts)
        assert len(contexts) == len(symbols), f"{len(contexts)} contexts but {len(symbols)} symbols"
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
        rows = self._rows_per_call()
        call = 0
        # Contexts of equal length share one engine call; the early origins of a short history form their own.
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(tokens):
            by_length.setdefault(len(ids), []).append(i)
        for members in by_length.values():
            origins_per_call = max(1, rows // num_samples)
            samples_per_call = min(num_samples, rows)
            for start in range(0, len(members), origins_per_call):
                chunk = members[start:start + origins_per_call]
                idx = torch.as_tensor(np.stack([tokens[i] for i in chunk]), dtype=torch.long)
                for s0 in range(0, num_samples, samples_per_call):
                    n = min(samples_per_call, num_samples - s0)
                    generated = self.model.generate(idx, n_new, num_samples=n, temperature=temperature,
                                                    seed=seed * 1_000_003 + call)
                    call += 1
                    generated = generated.cpu().numpy()
                    for j, i in enumerate(chunk):
                        out[i, s0:s0 + n] = self.tokenizer.decode(generated[j], symbols[i])[:, :horizon]
        return out

    def sample_cumulative(self, contexts, symbols, horizon: int, num_samples: int, *, seed: int = 0,
                          temperature: float | None = None) -> np.ndarray:
        """Like `sample_returns`, as cumulative log returns from the origin: (origins, num_samples, horizon)."""
        return np.cumsum(self.sample_returns(contexts, symbols, horizon, num_samples, seed=seed,
                                             temperature=temperature), axis=-1)

    def _rows_per_call(self) -> int:
        """Sample rows per engine call: the engine's KV cache holds sequence_len positions per row (fp32)."""
        c = self.model.config
        bytes_per_row = c.n_layer * 2 * c.sequence_len * c.n_kv_head * c.head_dim * 4
        return max(1, KV_CACHE_BUDGET_BYTES // bytes_per_row)

    def sample_paths(self, context_frame: pd.DataFrame, horizon_bars: int, num_samples: int, *, seed: int = 0,
                     temperature: float | None = None, symbols: list[str] | None = None) -> ForecastPaths:
        """Paths for the `horizon_bars` bars after the last bar of each symbol in `context_frame`."""
        per_symbol = self.features(context_frame)
        symbols = sorted(per_symbol) if symbols is None else [str(s) for s in symbols]
        check_symbols(symbols, list(per_symbol))
        last_close = context_frame.groupby("symbol")["close"].last()
        paths = self.sample_returns([per_symbol[s][1] for s in symbols], symbols, horizon_bars, num_samples,
                                    seed=seed, temperature=temperature)
        origins = [pd.Timestamp(per_symbol[s][0][-1]).tz_localize("UTC") for s in symbols]
        return ForecastPaths(symbols, origins, np.array([float(last_close[s]) for s in symbols]), paths)

    def predict_quantiles(self, context_frame: pd.DataFrame, horizon_bars: int, levels=QUANTILE_LEVELS,
                          num_samples: int = 512, *, seed: int = 0, temperature: float | None = None,
                          symbols: list[str] | None = None) -> pd.DataFrame:
        """One row per symbol and horizon step (1..H): quantiles of the cumulative log return (`return_qL`)
        and of the price (`price_qL` = last close * exp(return quantile))."""
        fc = self.sample_paths(context_frame, horizon_bars, num_samples, seed=seed, temperature=temperature,
                               symbols=symbols)
        return quantile_table(fc, levels)


def check_symbols(wanted: list[str], available: list[str]) -> None:
    missing = [s for s in wanted if s not in available]
    if missing:
        raise DataError(f"symbol(s) {', '.join(missing)} not in the data; available: {', '.join(sorted(available))}")


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
def calibrate_temperature(run, frame: pd.DataFrame, splits, horizon: int, num_samples: int = 256,
                          grid=TEMPERATURE_GRID, max_origins: int | None = 50, seed: int = 0) -> dict:
    """Pick the sampling temperature with the lowest mean CRPS of the H-bar return on the VALIDATION split
    (origins chosen as in evaluation, at most `max_origins` per symbol) and store it in RUN/calibration.json.

    Every grid value is scored on the same origins with the same seed (common random numbers), so differences
    between temperatures are not sampling noise of the origins."""
    from .evaluate import select_origins, symbol_series
    from .evaluate.metrics import crps_samples

    forecaster = Forecaster(run)
    series = symbol_series(forecaster.features(frame), splits)
    origins = select_origins(series, "val", horizon, max_origins=max_origins,
                             min_context=forecaster.patch_len)
    if origins.n == 0:
        raise DataError(f"no validation origins with a full {horizon}-bar target; the validation split is too short "
                        "for this horizon (use a smaller --horizon or a later --val-end)")
    contexts = origins.contexts(series)
    realised = origins.realised(series, horizon)[:, -1]
    crps = {}
    for temperature in grid:
        cum = forecaster.sample_cumulative(contexts, origins.symbols, horizon, num_samples, seed=seed,
                                           temperature=temperature)
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
def safe_filename(name: str) -> str:
    """A symbol as a file name: anything but letters, digits, '.', '_' and '-' becomes '_' (no path tricks)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    return cleaned or "symbol"


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
    """`pricegpt forecast`: quantiles and risk of the next --horizon bars of --symbol, and a fan chart PNG."""
    from .data import load_prices
    from .evaluate.plots import fan_chart

    forecaster = Forecaster.from_run(args.run)
    frame = load_prices(args.data)
    check_symbols([args.symbol], frame["symbol"].unique().tolist())
    frame = frame[frame["symbol"] == args.symbol]
    fc = forecaster.sample_paths(frame, args.horizon, args.num_samples, seed=args.seed, symbols=[args.symbol])
    table = quantile_table(fc)
    summary = risk(fc.paths[0])
    print(format_forecast(table, summary, args.symbol, args.horizon, args.num_samples, forecaster.temperature))
    out = Path(args.out) if args.out else Path(args.run) / "forecast" / f"{safe_filename(args.symbol)}.png"
    history = frame["close"].to_numpy(dtype=np.float64)[-max(4 * args.horizon, 60):]
    fan_chart(out, history, fc.last_close[0] * np.exp(fc.cumulative[0]), ylabel="price",
              title=f"{args.symbol}: next {args.horizon} bars ({args.num_samples} paths)")
    print(f"fan chart: {out}")
    return 0
