"""Optimizers and the learning-rate schedule.

- `build_optimizers(model, train_config)`: AdamW over the model's parameter groups (weight decay on matrices
  only), or, with `optimizer="muon"`, Muon for the transformer blocks' 2-D matrices and AdamW for the embedding
  and the head (as nanochat does). Returns a list; the trainer steps, zeroes and checkpoints each of them.
- `Muon`: SGD momentum whose update is orthogonalised by a Newton-Schulz iteration (Keller Jordan's Muon).
- `lr_factor(step, ...)`: linear warm-up to 1, then cosine decay to `min_lr_frac` at `max_steps`.
  `set_lr(optimizers, factor)` scales every group's `base_lr`, so the schedule holds no state beyond the step.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import TrainConfig


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_frac: float) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizers: list[torch.optim.Optimizer], factor: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor


def build_optimizers(model: nn.Module, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW for everything, or Muon (blocks' matrices) + AdamW (embedding, head). Each group has `base_lr`."""
    fused = _fused_ok(model)
    betas = (config.beta1, config.beta2)
    groups = model.param_groups(config.weight_decay)
    if config.optimizer == "adamw":
        for group in groups:
            group["base_lr"] = group["lr"] = _group_lr(group, config)
        return [torch.optim.AdamW(groups, lr=config.lr, betas=betas, eps=1e-8, fused=fused)]
    assert config.optimizer == "muon", config.optimizer
    adam_groups = [g for g in groups if not g["name"].startswith("matrix")]
    for group in adam_groups:
        group["base_lr"] = group["lr"] = _group_lr(group, config)
    matrices = model.matrix_params()
    assert all(p.dim() == 2 for p in matrices), "Muon takes 2-D matrices only"
    muon = Muon([{"params": matrices, "name": "matrix", "base_lr": config.muon_lr}], lr=config.muon_lr,
                momentum=config.muon_momentum, weight_decay=config.weight_decay)
    return [torch.optim.AdamW(adam_groups, lr=config.lr, betas=betas, eps=1e-8, fused=fused), muon]


def _group_lr(group: dict, config: TrainConfig) -> float:
    """A group's peak lr: train.lr, times train.side_lr_scale for the side channels' and the symbol's tables
    (zero-initialised lookups that AdamW grows by about lr per step: MODEL_README, "Side channels and the volatility
    head")."""
    return config.lr * (config.side_lr_scale if group["name"].startswith("side") else 1.0)


def _fused_ok(model: nn.Module) -> bool | None:
    # The fused AdamW kernel is faster on CUDA; on CPU the default (foreach) path is the well-trodden one.
    return True if next(model.parameters()).is_cuda else None


# ------------------------------------------------------------------------------------------------------ Muon
def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximately orthogonal matrix with G's singular vectors (U V^T), by a quintic Newton-Schulz iteration.

    The coefficients maximise the slope at zero, so singular values land in about [0.7, 1.2] rather than exactly
    1, which does not hurt training (https://kellerjordan.github.io/posts/muon/). bf16 on accelerators, fp32 on
    CPU, where bf16 matmuls are slow and fp32 keeps runs bit-reproducible.
    """
    assert G.dim() == 2, f"Newton-Schulz needs a matrix, got shape {tuple(G.shape)}"
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    transposed = G.size(0) > G.size(1)
    if transposed:
        X = X.T
    X = X / (X.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-schulz, for 2-D hidden-layer weights.

    update = NS5(nesterov momentum of the gradient), scaled by sqrt(max(1, rows / cols)) so every matrix gets an
    update of about the same RMS; decoupled weight decay `lr * weight_decay`.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = zeropower_via_newtonschulz5(update, group["ns_steps"])
                if wd:
                    p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)
