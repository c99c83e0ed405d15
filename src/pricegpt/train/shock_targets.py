"""Targets of the shock head (model.shock_bins): the class of the next bar's absolute shock, from the tokens alone.

A token stands for a patch of scaled close returns (the tokenizer's `decode_table`: each code's centroid). The
first bar of the token at position t + 1 is "the next bar" after position t; its absolute scaled return
|z_k| (k the code) is sorted into `shock_bins` classes holding equal numbers of codes (each code weighs one, so
the classes follow the codebook, which a fitted VQ-VAE spreads by the density of the train shocks). The target of
position t is the class of the token the model must predict next, -1 where it has none.

The class is a coarsening of the next token, which the main cross-entropy already predicts: the head adds weight
to getting the size of the next move right, whatever its sign and shape (MODEL_README has the ablation).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


def shock_classes(tokenizer, shock_bins: int) -> np.ndarray:
    """(K,) int64: each code's shock class in [0, shock_bins), by the size of its first bar's scaled return."""
    if tokenizer is None or getattr(tokenizer, "decode_table", None) is None:
        raise ConfigError("model.shock_bins needs the tokenizer of the tokens (to know what each token's returns "
                          "were): train on a token store written by `pricegpt tokenize`, not a bare token file")
    size = np.abs(np.asarray(tokenizer.decode_table, dtype=np.float64)[:, 0])
    if shock_bins > len(size):
        raise ConfigError(f"model.shock_bins={shock_bins} is more classes than the tokenizer's {len(size)} codes; "
                          f"use at most {len(size)}")
    order = np.argsort(size, kind="stable")
    classes = np.empty(len(size), dtype=np.int64)
    classes[order] = np.arange(len(size)) * shock_bins // len(size)
    return classes


class ShockTargets:
    """The shock head's targets for windows of one tokenizer's tokens (module docstring)."""

    def __init__(self, tokenizer, shock_bins: int):
        self.classes = torch.as_tensor(shock_classes(tokenizer, shock_bins))

    def __call__(self, targets: torch.Tensor) -> torch.Tensor:
        """targets (B, T) token ids (the next token at each position, -1 none) -> (B, T) int64 classes, -1 none."""
        targets = targets.long().cpu()
        return torch.where(targets >= 0, self.classes[targets.clamp(min=0)], torch.full_like(targets, -1))
