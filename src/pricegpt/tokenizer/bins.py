"""Binning tokenizers: one token per patch from the patch's summed (scaled) close return.

  quantile  K equal-frequency bins: the edges are the 1/K .. (K-1)/K quantiles of the train patches' summed
            scaled returns. This is also the baseline every VQ-VAE fit is measured against (report.json).
  uniform   K equal-width bins over the clipped range [-clip, +clip] * sqrt(patch_len) of the summed scaled
            return (Chronos-style; the sum of patch_len unit-variance returns has std ~ sqrt(patch_len)), values
            beyond the range go to the end bins.

"Scaled" is whatever the tokenizer's scaling makes of a return: under ewma / garch the bins are fit on the train
shocks, and with patch_len=1 a token is one bar's shock (quantile bins per bar). Both decode a token to the mean
train patch of its bin (its centroid, times the scale); a bin that no train patch fell into decodes to its centre
spread evenly over the patch. Only the close return is binned, so these kinds take features="close" only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import check_number
from ..errors import ConfigError
from .base import Tokenizer, TokenizerConfig, register
from .patches import summed


@dataclass
class QuantileConfig(TokenizerConfig):
    kind: str = "quantile"

    def validate(self) -> None:
        super().validate()
        if self.features != "close":
            raise ConfigError(f"the {self.kind} tokenizer bins the summed close return; features must be 'close' "
                              f"(got {self.features!r}); use kind='vqvae' for ohlcv features")


@dataclass
class UniformConfig(QuantileConfig):
    kind: str = "uniform"
    clip: float = 4.0  # the bins span +-clip standard deviations of a patch's summed scaled return

    def validate(self) -> None:
        super().validate()
        check_number(self.clip, "uniform tokenizer clip", 0, 1000, lo_open=True,
                     hint="the bins span +-clip standard deviations; 4 is the default")


class _BinTokenizer(Tokenizer):
    """Shared by both kinds: `edges` (K-1,) increasing, in scaled summed-return units; bin k holds sums in
    [edges[k-1], edges[k]) (a sum equal to an edge goes to the upper bin)."""

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.edges: np.ndarray | None = None

    def _fit_edges(self, sums: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _fit_scaled(self, x_train: np.ndarray, *, progress: bool | None) -> None:
        returns = x_train[:, :, 0]
        sums = summed(returns)
        self.edges = self._fit_edges(sums)
        ids = self._bin(sums)
        K, P = self.vocab_size, self.patch_len
        counts = np.bincount(ids, minlength=K)
        table = np.stack([np.bincount(ids, weights=returns[:, j], minlength=K) for j in range(P)], axis=1)
        filled = counts > 0
        table[filled] /= counts[filled, None]
        table[~filled] = (self._centres()[~filled] / P)[:, None]
        self.decode_table = table

    def _centres(self) -> np.ndarray:
        """Centre of each bin (the end bins use their finite edge's half-width mirror)."""
        edges = self.edges
        width = np.diff(edges).mean() if len(edges) > 1 else 1.0
        bounds = np.concatenate([[edges[0] - width], edges, [edges[-1] + width]])
        return (bounds[:-1] + bounds[1:]) / 2

    def _bin(self, sums: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.edges, sums, side="right").astype(np.int64)

    def _encode_scaled(self, x: np.ndarray) -> np.ndarray:
        return self._bin(summed(x[:, :, 0]))

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {"edges": torch.from_numpy(self.edges.copy()),
                "decode_table": torch.from_numpy(self.decode_table.copy())}

    def _load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        K, P = self.vocab_size, self.patch_len
        if set(tensors) != {"edges", "decode_table"}:
            raise ValueError(f"weights {sorted(tensors)} are not those of a {self.kind} tokenizer")
        edges, table = tensors["edges"], tensors["decode_table"]
        if edges.shape != (K - 1,) or table.shape != (K, P) or edges.dtype != torch.float64 \
                or table.dtype != torch.float64:
            raise ValueError(f"edges {tuple(edges.shape)} / decode_table {tuple(table.shape)} do not match "
                             f"K={K}, patch_len={P} (float64)")
        edges_np = edges.numpy().copy()
        if not np.all(np.isfinite(edges_np)) or np.any(np.diff(edges_np) < 0):
            raise ValueError("bin edges must be finite and non-decreasing")
        self.edges = edges_np
        self.decode_table = table.numpy().copy()


@register
class QuantileTokenizer(_BinTokenizer):
    kind = "quantile"
    config_class = QuantileConfig

    def _fit_edges(self, sums: np.ndarray) -> np.ndarray:
        return np.quantile(sums, np.arange(1, self.vocab_size) / self.vocab_size)


@register
class UniformTokenizer(_BinTokenizer):
    kind = "uniform"
    config_class = UniformConfig

    def _fit_edges(self, sums: np.ndarray) -> np.ndarray:
        half = self.config.clip * math.sqrt(self.patch_len)
        return np.linspace(-half, half, self.vocab_size + 1)[1:-1]
