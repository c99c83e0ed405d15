"""Training: `train_run` (what `pricegpt train` calls) and the `Trainer` behind it.

run.py (train_run: the run directory, config and resume checks), loop.py (the trainer), device.py (the device and
its peak FLOP/s for MFU), optim.py (AdamW, Muon, warm-up + cosine schedule), data.py (windows inside each symbol's
splits), checkpoint.py (step-folder checkpoints behind an atomic LATEST pointer, best model), metrics.py
(metrics.csv, curve, TensorBoard), dist.py (DDP under torchrun).

`latest_checkpoint(RUN)` is the checkpoint `--resume` continues from (None: nothing to resume);
`best_model_dir(RUN)` the best model, also when a kill interrupted its replacement.

`train_run(..., callbacks=[...])` hands the training's events to `Callback`s (callbacks.py); tracking.py logs runs
and evaluations to MLflow (`MlflowCallback`, `log_evaluation`; the optional `mlflow` extra).
"""

from .callbacks import Callback, CallbackError
from .checkpoint import best_model_dir, latest_checkpoint
from .data import TokenData, WindowSet, read_token_source
from .loop import Trainer, TrainingDivergedError
from .run import train_run
from .tracking import MlflowCallback, log_evaluation

__all__ = ["Callback", "CallbackError", "MlflowCallback", "TokenData", "Trainer", "TrainingDivergedError",
           "WindowSet", "best_model_dir", "latest_checkpoint", "log_evaluation", "read_token_source", "train_run"]
