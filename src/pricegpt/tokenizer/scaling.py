"""Volatility scaling: what a token's shock is divided by, bar by bar, without looking ahead.

`scaling` (a tokenizer config field, saved in config.json):
  "static"  every bar of a symbol is divided by the symbol's standard deviation over its train bars (a symbol with
            fewer than `min_scale_returns` train bars, or none, by the global scale: the median symbol scale).
  "ewma"    a running volatility s_t from the returns strictly before bar t, by the RiskMetrics recursion
                s^2_{t+1} = lam s^2_t + (1 - lam) r_t^2,   lam = 0.5 ** (1 / halflife)   (halflife in bars),
            started at the symbol's first return from its train variance (its static scale squared). A symbol
            without a static scale (unseen in fit) starts from the global variance g and learns its own level
            from its own bars: s^2_t = (n0 g + sum_{i<t} r_i^2) / (n0 + t) with n0 = min_scale_returns (an
            expanding mean with g as a prior worth n0 bars) for as long as 1 / (n0 + t + 1) > 1 - lam, then the
            recursion above. Bar t's scale uses r_0 .. r_{t-1} and fitted constants only.
  "garch"   s^2_{t+1} = omega + alpha r_t^2 + beta s^2_t with (omega, alpha, beta) of a zero-mean Gaussian
            GARCH(1,1) fit by `arch` on the symbol's train returns, started from the train variance. A seen symbol
            whose fit fails (or with fewer than GARCH_MIN_RETURNS train returns) uses the median (alpha, beta) of
            the fitted symbols and omega = (1 - alpha - beta) x its train variance (variance targeting); an unseen
            symbol has no variance level to target, so it uses the ewma recursion above.

Every scale is max(s_t, scale_floor x the symbol's static scale), so a run of zero returns (a halted or
illiquid symbol) cannot drive it to zero; the recursion itself runs on the unfloored variance. A patch of bars
is divided by the scale at its first bar (known before the patch starts); decoding a sampled path rolls the same
recursion forward on the path's own returns.

The recursions are linear in the variance, x_{t+1} = a x_t + c_t, and `linear_scan` evaluates them in closed
form over blocks (numpy, tens of millions of bars per second); its value at t uses c_0 .. c_{t-1} only, in a
fixed order, so appending bars never changes an earlier scale by even one bit.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

SCALINGS = ("static", "ewma", "garch")
GARCH_MIN_RETURNS = 100  # fewer train returns do not pin down three GARCH parameters
SCAN_RANGE = 1e200  # largest a**-k a scan block uses: all terms are >= 0, so no cancellation, only range


def ewma_lambda(halflife: float) -> float:
    """The RiskMetrics decay of a half-life in bars: the weight of a squared return halves every `halflife` bars."""
    return 0.5 ** (1.0 / halflife)


@dataclass(frozen=True)
class Recursion:
    """One symbol's variance recursion x_{t+1} = a x_t + b r_t^2 + c from x_0 = var0, scales floored at `floor`.
    `prior` > 0: the expanding-mean warm-up of an unseen symbol (var0 counts as `prior` bars) while
    1 / (prior + t + 1) > b."""

    a: float
    b: float
    c: float
    var0: float
    floor: float
    prior: int = 0

    def step(self, var: np.ndarray, returns: np.ndarray) -> np.ndarray:
        """The variance after one more bar with `returns` (any shape, elementwise): used when decoding paths."""
        return self.a * var + self.b * returns * returns + self.c

    def scale(self, var: np.ndarray | float) -> np.ndarray:
        return np.maximum(np.sqrt(var), self.floor)

    def variances(self, returns: np.ndarray) -> np.ndarray:
        """(n,) returns -> (n + 1,) variances: [t] is the variance at bar t (from returns before t); [n] is the
        state after the last return, the next bar's."""
        r2 = np.asarray(returns, dtype=np.float64) ** 2
        n = len(r2)
        warm = 0
        if self.prior > 0:
            # the expanding mean's weight on a new bar, 1 / (prior + t + 1), until it falls to the recursion's b
            warm = min(n, max(0, math.ceil(1.0 / self.b - self.prior - 1)))
        head = np.empty(warm + 1)
        head[0] = self.var0
        if warm:
            head[1:] = (self.prior * self.var0 + np.cumsum(r2[:warm])) / (self.prior + np.arange(1, warm + 1))
        tail = linear_scan(self.a, self.b * r2[warm:] + self.c, float(head[-1]))
        return np.concatenate([head[:-1], tail])


def linear_scan(a: float, inputs: np.ndarray, x0: float) -> np.ndarray:
    """x_0 = x0, x_{t+1} = a x_t + inputs_t for 0 <= a < 1 and inputs >= 0: (n,) -> (n + 1,).

    Over a block starting at x_s: x_{s+k} = a^k (x_s + sum_{j<k} a^{-1-j} inputs_{s+j}), a cumulative sum of
    non-negative terms (relative error ~ k eps). Blocks start at fixed positions, so x_t never depends on
    inputs at or after t."""
    inputs = np.asarray(inputs, dtype=np.float64)
    n = len(inputs)
    out = np.empty(n + 1)
    out[0] = x0
    if a <= 0.0:
        out[1:] = inputs
        return out
    block = int(min(max(1, math.floor(math.log(SCAN_RANGE) / -math.log(a))), 1 << 16))  # never depends on n
    k = np.arange(1, min(block, n) + 1, dtype=np.float64)
    grow, shrink = a ** -k, a ** k
    state = float(x0)
    for start in range(0, n, block):
        part = inputs[start:start + block]
        m = len(part)
        out[start + 1:start + m + 1] = shrink[:m] * (state + np.cumsum(part * grow[:m]))
        state = float(out[start + m])
    return out


def fit_garch(returns: np.ndarray) -> tuple[float, float, float] | None:
    """(omega, alpha, beta) of a zero-mean Gaussian GARCH(1,1) on `returns` (raw log returns), or None when the
    fit fails, does not converge or is not stationary. Needs the optional `arch` package."""
    try:
        from arch import arch_model  # optional dependency (the `baselines` extra): only scaling="garch" needs it
    except ImportError:
        raise ConfigError("scaling='garch' needs the optional arch package: pip install 'pricegpt[baselines]' "
                          "(or pip install arch), or use scaling='ewma'") from None
    if len(returns) < GARCH_MIN_RETURNS or not np.any(returns):
        return None
    # percent returns keep the optimiser well scaled; omega is converted back below
    model = arch_model(100.0 * np.asarray(returns, dtype=np.float64), mean="Zero", vol="GARCH", p=1, q=1,
                       dist="normal", rescale=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit = model.fit(disp="off", show_warning=False)
        except (ValueError, np.linalg.LinAlgError, RuntimeError):
            return None
    if fit.convergence_flag != 0:
        return None
    omega, alpha, beta = (float(fit.params[k]) for k in ("omega", "alpha[1]", "beta[1]"))
    if not (omega > 0 and alpha >= 0 and beta >= 0 and alpha + beta < 1) or not math.isfinite(omega):
        return None
    return omega / 1e4, alpha, beta


def check_garch(values, what: str) -> tuple[float, ...]:
    """Saved GARCH parameters, checked: ValueError (a damaged config.json) unless stationary and finite."""
    params = tuple(float(v) for v in values)
    omega, alpha, beta = params if len(params) == 3 else (1.0, *params)
    if len(params) not in (2, 3) or not all(math.isfinite(v) for v in params) or omega <= 0 or alpha < 0 \
            or beta < 0 or alpha + beta >= 1:
        raise ValueError(f"GARCH parameters of {what} must be finite with omega > 0, alpha, beta >= 0 and "
                         f"alpha + beta < 1, got {values!r}")
    return params
