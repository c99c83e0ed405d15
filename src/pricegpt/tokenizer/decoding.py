"""Within-code decoding: a token decodes to a draw from the train patches assigned to its code, with a fitted tail
on the two outermost codes, instead of the code's centroid.

Fitted once, on the train patches in shock units (each patch's close returns divided by its scale):

  member table   per code, up to `decode_quantiles` (M) member patches at evenly spaced ranks of their summed
                 shock, the smallest and the largest always included (all members when the code has fewer than
                 M): (K, M, patch_len), with the number of rows each code holds (0: no train member).
  tails          the outermost codes, lowest and highest by the mean summed shock of their members, get a
                 generalised Pareto tail beyond their `tail_from` quantile u (the summed shock; mirrored for the
                 lowest code). It is fit on the tail pool: the outermost code's members, with the next codes
                 inwards (by mean) added until the pool holds TAIL_POOL members (a VQ-VAE's outermost codes often
                 hold one or two train patches). The pool's excesses y over its own `tail_from` quantile u_pool are
                 fit by probability-weighted moments (Hosking & Wallis 1987): a0 = mean y, a1 = mean (1 - p_i)
                 y_(i) with p_i = (i - 0.35) / n, xi = 2 - a0 / (a0 - 2 a1) bounded to [0, 0.5] (no bounded tail; a
                 finite variance), beta_pool = a0 (1 - xi), the scale whose mean excess is a0; moved to the code's
                 threshold by the GPD's threshold stability, beta = beta_pool + xi (u - u_pool). Fewer than
                 TAIL_MIN_EXCESSES excesses: no tail. A tail draw's summed shock is capped at `tail_cap` times the
                 largest train move on its side.

Drawing for one token of code k with u ~ U[0, 1) (one uniform per token, from the caller's generator): the
member rows at positions u (m_k - 1) are interpolated linearly, so a draw keeps a real patch's shape and its sum
lies within the code's train range. For an outer code, when u is beyond `tail_from` (below 1 - tail_from for the
lowest), the summed shock is instead u +- the GPD quantile of the conditional level (u - tail_from) /
(1 - tail_from), and every bar of the interpolated patch is shifted equally to reach it: these draws can exceed
the largest train move. A code with no train member decodes to its centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .patches import summed

DECODES = ("centroid", "within")
TAIL_MIN_EXCESSES = 3
TAIL_POOL = 20  # members a tail is fit on, at least (from the outermost codes inwards)
PREFIX = "decode."  # the within tables' tensor names in model.safetensors


@dataclass
class WithinTables:
    """members (K, M, P) shock patches sorted by sum; counts (K,) rows used per code; tail_codes (2,) the lowest
    and highest code (-1: no tail); tail_params (2, 4): threshold sum, xi, beta, the largest train move (the
    largest |summed shock| on that side)."""

    members: np.ndarray
    counts: np.ndarray
    tail_codes: np.ndarray
    tail_params: np.ndarray

    def tensors(self) -> dict[str, torch.Tensor]:
        return {PREFIX + "members": torch.from_numpy(self.members.copy()),
                PREFIX + "counts": torch.from_numpy(self.counts.copy()),
                PREFIX + "tail_codes": torch.from_numpy(self.tail_codes.copy()),
                PREFIX + "tail_params": torch.from_numpy(self.tail_params.copy())}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], K: int, M: int, P: int) -> WithinTables | None:
        """The tables from model.safetensors' `decode.*` tensors (popped from `tensors`); None when the file has
        none (written before within-code decoding existed). ValueError when they do not match the config."""
        names = {PREFIX + n for n in ("members", "counts", "tail_codes", "tail_params")}
        present = names & set(tensors)
        if not present:
            return None
        if present != names:
            raise ValueError(f"within-code tables incomplete: have {sorted(present)}, need {sorted(names)}")
        t = {name[len(PREFIX):]: tensors.pop(name) for name in sorted(names)}
        expected = {"members": ((K, M, P), torch.float64), "counts": ((K,), torch.int64),
                    "tail_codes": ((2,), torch.int64), "tail_params": ((2, 4), torch.float64)}
        for name, (shape, dtype) in expected.items():
            if tuple(t[name].shape) != shape or t[name].dtype != dtype:
                raise ValueError(f"tensor {PREFIX}{name} is {tuple(t[name].shape)} {t[name].dtype}, expected "
                                 f"{shape} {dtype} (K={K}, decode_quantiles={M}, patch_len={P})")
        tables = cls(*(t[n].numpy().copy() for n in ("members", "counts", "tail_codes", "tail_params")))
        if np.any(tables.counts < 0) or np.any(tables.counts > M):
            raise ValueError(f"{PREFIX}counts must lie in [0, {M}]")
        if np.any(tables.tail_codes < -1) or np.any(tables.tail_codes >= K):
            raise ValueError(f"{PREFIX}tail_codes must be codes in [0, {K}) or -1")
        xi, beta, largest = tables.tail_params[:, 1], tables.tail_params[:, 2], tables.tail_params[:, 3]
        if np.any(xi < 0) or np.any(xi > 0.5) or np.any(beta < 0) or np.any(largest < 0):
            raise ValueError(f"{PREFIX}tail_params need xi in [0, 0.5] and beta, the largest move >= 0")
        return tables


def fit_gpd(excess: np.ndarray) -> tuple[float, float]:
    """(xi, beta) of a generalised Pareto distribution for positive `excess` by probability-weighted moments,
    xi bounded to [0, 0.5], beta = mean excess x (1 - xi)."""
    y = np.sort(np.asarray(excess, dtype=np.float64))
    n = len(y)
    a0 = float(y.mean())
    a1 = float(np.mean((1 - (np.arange(1, n + 1) - 0.35) / n) * y))
    denominator = a0 - 2 * a1
    xi = 2 - a0 / denominator if denominator > 0 else 0.5
    xi = float(np.clip(xi, 0.0, 0.5))
    return xi, a0 * (1 - xi)


def gpd_quantile(p: np.ndarray, xi: float, beta: float) -> np.ndarray:
    """The excess at level p in [0, 1) of GPD(xi, beta)."""
    if xi < 1e-9:
        return -beta * np.log1p(-p)
    return beta / xi * ((1 - p) ** -xi - 1)


def fit_within(shocks: np.ndarray, ids: np.ndarray, K: int, M: int, tail_from: float) -> WithinTables:
    """The tables from the train patches' close shocks (n, P) and their codes (n,) (see the module docstring)."""
    n, P = shocks.shape
    sums = summed(shocks)
    order = np.lexsort((sums, ids))  # by code, then by summed shock
    bounds = np.searchsorted(ids[order], np.arange(K + 1))
    members = np.zeros((K, M, P))
    counts = np.zeros(K, dtype=np.int64)
    means = np.full(K, np.nan)
    for k in range(K):
        rows = order[bounds[k]:bounds[k + 1]]
        if len(rows) == 0:
            continue
        m = min(len(rows), M)
        pick = rows[np.round(np.linspace(0, len(rows) - 1, m)).astype(np.int64)]
        members[k, :m] = shocks[pick]
        counts[k] = m
        means[k] = sums[rows].mean()
    tail_codes = np.full(2, -1, dtype=np.int64)
    tail_params = np.zeros((2, 4))
    filled = np.flatnonzero(np.isfinite(means))
    for side, sign in enumerate((-1.0, 1.0)):  # the low tail is fit on the negated sums
        inwards = filled[np.argsort(-sign * means[filled], kind="stable")]
        if len(inwards) == 0:
            continue
        pool_size = np.cumsum(np.bincount(ids, minlength=K)[inwards])
        pool = inwards[:int(np.searchsorted(pool_size, min(TAIL_POOL, pool_size[-1]))) + 1]
        pool_sums = sign * sums[np.isin(ids, pool)]
        pool_threshold = float(np.quantile(pool_sums, tail_from))
        excess = pool_sums[pool_sums > pool_threshold] - pool_threshold
        if len(excess) < TAIL_MIN_EXCESSES:
            continue
        xi, beta = fit_gpd(excess)
        code = int(inwards[0])
        threshold = float(np.quantile(sign * sums[ids == code], tail_from))
        tail_codes[side] = code
        tail_params[side] = (sign * threshold, xi, max(beta + xi * (threshold - pool_threshold), 1e-12 * beta),
                             max(float((sign * sums).max()), 0.0))
    return WithinTables(members, counts, tail_codes, tail_params)


def sample_within(tables: WithinTables, centroids: np.ndarray, ids: np.ndarray, u: np.ndarray, tail_from: float,
                  tail_cap: float) -> np.ndarray:
    """Shock patches (..., P) for codes `ids` (...) and uniforms `u` (same shape) in [0, 1)."""
    shape = ids.shape
    flat, u = ids.reshape(-1), u.reshape(-1)
    m = tables.counts[flat]
    last = np.maximum(m - 1, 0)
    position = u * last
    lo = np.minimum(np.floor(position).astype(np.int64), np.maximum(m - 2, 0))
    hi = np.minimum(lo + 1, last)
    frac = (position - lo)[:, None]
    out = (1 - frac) * tables.members[flat, lo] + frac * tables.members[flat, hi]
    empty = m == 0
    out[empty] = centroids[flat[empty]]
    P = out.shape[1]
    for side, code in enumerate(tables.tail_codes):
        if code < 0:
            continue
        threshold, xi, beta, largest = tables.tail_params[side]
        beyond = (flat == code) & ((u > tail_from) if side else (u < 1 - tail_from))
        if not beyond.any():
            continue
        level = (u[beyond] - tail_from) if side else (1 - tail_from - u[beyond])
        excess = gpd_quantile(level / (1 - tail_from), xi, beta)
        target = np.minimum(threshold + excess, tail_cap * largest) if side else \
            np.maximum(threshold - excess, -tail_cap * largest)
        out[beyond] += ((target - summed(out[beyond])) / P)[:, None]
    return out.reshape(*shape, P)
