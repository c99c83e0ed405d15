"""Targets of the volatility head (model.vol_bars): what the next bars' squared returns were, from the tokens alone.

A token stands for a patch of scaled close returns (the tokenizer's `decode_table`: each code's centroid), so the
realised squared return of the n = ceil(vol_bars / patch_len) tokens after position t is known from the window
itself, in units of the volatility scale s of the first of them (the forecast origin's, which the forecaster
multiplies back):

    v_t = mean_j z2[y_{t+j}] * exp(L_{t+j} - L_t),   j = 0 .. n-1,

with z2[k] the mean squared scaled return of code k's bars and L the running log growth of the scale. Under
"ewma" scaling the scale rolls forward with each bar's own shock, s^2 <- s^2 (lam + (1 - lam) z^2), so a token's
growth is the sum over its bars of log(lam + (1 - lam) z^2) (the floor on the scale ignored). Under "static"
scaling the scale is fixed (growth 0); under "garch" the growth depends on the scale's level too and is taken as 0,
an approximation. Positions without n targets left in the window have no target (NaN).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError
from ..tokenizer.scaling import ewma_lambda


class VolTargets:
    """The volatility head's targets for windows of one tokenizer's tokens (module docstring)."""

    def __init__(self, tokenizer, vol_bars: int, sequence_len: int | None = None):
        if tokenizer is None or getattr(tokenizer, "decode_table", None) is None:
            raise ConfigError("model.vol_bars needs the tokenizer of the tokens (to know what each token's returns "
                              "were): train on a token store written by `pricegpt tokenize`, not a bare token file")
        table = np.asarray(tokenizer.decode_table, dtype=np.float64)  # (K, patch_len) scaled close returns
        self.n_tokens = max(1, math.ceil(vol_bars / table.shape[1]))
        if sequence_len is not None and self.n_tokens > sequence_len // 2:
            raise ConfigError(f"model.vol_bars={vol_bars} needs {self.n_tokens} tokens after each position "
                              f"({table.shape[1]} bar(s) per token), more than half of a {sequence_len}-token "
                              f"window: the head would see (almost) no target; use model.vol_bars <= "
                              f"{(sequence_len // 2) * table.shape[1]} or a longer model.sequence_len")
        self.z2 = torch.as_tensor((table ** 2).mean(axis=1), dtype=torch.float32)
        if tokenizer.config.scaling == "ewma":
            lam = ewma_lambda(tokenizer.config.halflife)
            growth = np.log(lam + (1 - lam) * table ** 2).sum(axis=1)
        else:
            growth = np.zeros(len(table))
        self.growth = torch.as_tensor(growth, dtype=torch.float32)

    def __call__(self, targets: torch.Tensor) -> torch.Tensor:
        """targets (B, T) token ids (the next token at each position) -> (B, T) float32 v_t, NaN where fewer than
        n_tokens targets remain in the window."""
        targets = targets.long().cpu()
        B, T = targets.shape
        z2, growth = self.z2[targets], self.growth[targets]
        log_level = torch.cat([torch.zeros(B, 1), growth.cumsum(dim=1)[:, :-1]], dim=1)  # L_m, L_0 = 0
        out = torch.full((B, T), float("nan"))
        n = self.n_tokens
        if T >= n:
            valid = T - n + 1
            total = torch.zeros(B, valid)
            for j in range(n):
                total += z2[:, j:j + valid] * torch.exp(log_level[:, j:j + valid] - log_level[:, :valid])
            out[:, :valid] = total / n
        return out
