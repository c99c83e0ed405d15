"""Strategies: target positions from forecasts, the momentum benchmark, and a model-free reference forecaster.

A strategy turns the forecast summary of a decision (`forecast_summary`: P(up), mean and variance of the H-bar
simple return, the forecast module's risk numbers) into a target position; a new one is a function here plus its
name in STRATEGIES and a branch in walk.walk_forward.

- sign:  +1 when P(up) > long_above, -1 when P(up) < short_below (0 with long_only), else flat.
- kelly: fraction * mean / variance of the H-bar simple return, clipped to [-cap, cap].
- momentum (the benchmark): the sign of the trailing N-bar return, on the same decision bars with the same costs.
"""

from __future__ import annotations

import numpy as np

from ..data.windows import timestamps_ns
from ..forecast import origin_seed, risk

STRATEGIES = ("sign", "kelly")


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
        contexts = list(contexts)
        keys = timestamps_ns(context_ends) if context_ends is not None else [len(c) for c in contexts]
        out = np.empty((len(contexts), num_samples, horizon))
        for i, (context, symbol, key) in enumerate(zip(contexts, symbols, keys)):
            x = np.asarray(context, dtype=np.float64)
            trailing = (x if x.ndim == 1 else x[:, 0])[-self.window:]
            rng = np.random.default_rng(origin_seed(seed, str(symbol), int(key)))
            out[i] = np.cumsum(trailing[rng.integers(0, len(trailing), size=(num_samples, horizon))], axis=-1)
        return out
