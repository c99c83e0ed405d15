"""Training: `train_run` (what `pricegpt train` calls) and the `Trainer` behind it.

loop.py (the trainer), optim.py (AdamW, Muon, warm-up + cosine schedule), data.py (windows inside each symbol's
splits), checkpoint.py (atomic checkpoints, best model), metrics.py (metrics.csv, curve, TensorBoard),
dist.py (DDP under torchrun).
"""

from .data import TokenData, WindowSet, read_token_source
from .loop import Trainer, train_run

__all__ = ["TokenData", "Trainer", "WindowSet", "read_token_source", "train_run"]
