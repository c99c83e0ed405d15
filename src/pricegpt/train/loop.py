"""The trainer: `Trainer(config, data, run_dir).train()` (`train_run` in run.py drives it for the CLI).

One optimizer step of step index s:
  window ids, hidden calendars                               pure function of (seed, s): exact resume, and the same
     = WindowSet.sample(seed, s, global_batch, dropout)      global batch whatever the number of processes
  dropout RNG = torch.manual_seed(f(seed, s, rank))          also a pure function of the step
  for each micro-batch (grad accumulation; DDP syncs gradients on the last one): forward, backward
  clip the global gradient norm, step AdamW (or Muon + AdamW) at lr = peak * lr_factor(s)

Every `eval_every` steps (and at step 0 and the last step) the validation loss is measured on a fixed, evenly
spread set of validation windows; a better loss replaces RUN/model. Every `save_every` steps, at the end and on
Ctrl-C / SIGTERM a checkpoint is saved (checkpoint.py: step folders and a LATEST pointer, never a moment without
one). Only rank 0 logs and writes. Host syncs happen only at log, eval and checkpoint steps: the training loss
accumulates on the device, and the stop flag (a signal caught by any rank) is all-reduced at those steps only.

Stopping. Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint, records RUN/model/meta.json
with finished=false and then raises: KeyboardInterrupt for SIGINT (the CLI exits 130), SystemExit(143) for
SIGTERM (the conventional 128 + 15 a process manager expects), so no caller mistakes an interrupted run for a
trained one. `--resume` continues exactly. A non-finite loss or weight stops training with TrainingDivergedError
before anything of that step is saved; the last good checkpoint stays.

Calendar (model.calendar): each window's calendar ids go to the model with its tokens, in training and in
evaluation; in training a `train.calendar_dropout` fraction of the windows has its calendar hidden (-1), so the
model also works without timestamps.

Side channels (model.side): each window's side-channel ids go to the model with its tokens; in training each
token's are hidden (-1, the "unknown" rows) with probability `train.side_dropout`, drawn as a pure function of
(seed, step), because generated positions have none.

Asset identity (model.symbol_embedding): each window's symbol row goes to the model; in training a
`train.symbol_dropout` fraction of the windows reads the "unknown" row instead (a stream of its own), so the model
also forecasts symbols it never saw. The rows are the training store's symbols, copied into model.symbols.

Volatility head (model.vol_bars) and shock head (model.shock_bins): the loss minimised is the cross-entropy plus
train.vol_loss_weight times the volatility head's QLIKE loss and train.shock_loss_weight times the shock head's
cross-entropy, against targets computed from each window's own next tokens (vol_targets.py, shock_targets.py);
the losses logged and early stopping use the next-token cross-entropy alone.

Fine-tuning: `Trainer(..., init_model=GPT)` starts step 0 from a trained model's weights instead of a fresh
initialisation (run.py checks the architecture and the tokenizer); after that the run is like any other.

Resuming: `Trainer.load_checkpoint` restores the weights, optimizer, RNG and step of a checkpoint; the checks on
the run directory, its config and its data before that are run.py's. MFU uses device.py's per-device peak.

Callbacks (`Trainer(..., callbacks=[...])`, callbacks.py): rank 0 hands on_start, on_step (at log steps, whose loss
is on the host anyway), on_evaluation, on_checkpoint and on_end to the user's objects; one that raises stops
training with a CallbackError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..config import ARCHITECTURE_KEYS, RunConfig
from ..errors import CheckpointError, ConfigError, PriceGPTError
from ..fileio import write_json
from ..model.gpt import GPT
from ..tokenizer import load_tokenizer
from . import dist
from .callbacks import Callbacks
from .checkpoint import (
    META_FILE,
    MODEL_DIR,
    best_model_dir,
    latest_checkpoint,
    load_checkpoint,
    read_meta,
    restart_hint,
    rng_state,
    save_best_model,
    save_checkpoint,
    set_rng_state,
)
from .data import TokenData
from .device import _known_peak_flops as _known_peak_flops  # re-exported: tests read the MFU peak from here
from .device import compile_unavailable, peak_flops, pick_device
from .metrics import METRICS_FILE, MetricsLog
from .optim import build_optimizers, lr_factor, set_lr
from .shock_targets import ShockTargets
from .vol_targets import VolTargets

log = logging.getLogger("pricegpt")

FORMAT_VERSION = 1


class TrainingDivergedError(PriceGPTError):
    """The loss or the weights became NaN or infinite; nothing of that step was saved."""


class Trainer:
    """Trains a GPT on `data` into `run_dir`. `Trainer(config, data, run_dir).train()` -> result dict."""

    def __init__(self, config: RunConfig, data: TokenData, run_dir: str | os.PathLike, *,
                 dist_info: dist.DistInfo | None = None, init_model: GPT | None = None, callbacks=None):
        """init_model: a trained model of the config's architecture whose weights step 0 starts from (a
        fine-tune); None: a fresh initialisation from train.seed. callbacks: objects with any of on_start,
        on_step, on_evaluation, on_checkpoint, on_end (callbacks.py), called on rank 0 only."""
        self.config, self.data, self.run_dir = config, data, Path(run_dir)
        self.dist = dist_info or dist.DistInfo()
        self.callbacks = Callbacks(callbacks, enabled=self.dist.is_main)
        t = config.train
        if config.model.calendar and not data.has_calendar:
            raise ConfigError("model.calendar needs a token store with timestamps: the training data carries no "
                              "calendar; read it with read_token_source(path, calendar=True) from a store written "
                              "by `pricegpt tokenize`")
        if config.model.side and not data.has_side:
            raise ConfigError("model.side needs a token store with side channels: the training data carries none; "
                              "read it with read_token_source(path, side=True) from a store of data with open, high "
                              "and low columns")
        if config.model.side and config.model.side_edges is None and data.source.get("side_edges") is not None:
            config.model = dataclasses.replace(config.model, side_edges=data.source["side_edges"])
        if config.model.symbol_embedding and config.model.symbols is None:
            config.model = dataclasses.replace(config.model, symbols=list(data.train.names))
        rows = {name: i for i, name in enumerate(config.model.symbols or ())}
        self.symbol_rows = {w: w.symbol_rows(rows) for w in (data.train, data.val)}  # per segment, once
        if t.num_threads:
            torch.set_num_threads(t.num_threads)
        self.device = pick_device(t.device, self.dist)
        dist.init(self.dist, self.device)
        self.accum_steps = t.grad_accum_steps(self.dist.world_size)
        self.global_batch = t.batch_size * self.dist.world_size * self.accum_steps
        self.tokens_per_step = self.global_batch * (data.train.length - 1)

        torch.manual_seed(t.seed)  # the same initial weights on every process
        self.model = GPT(config.model).to(self.device)
        if init_model is not None:
            self._load_init(init_model)
        self.optimizers = build_optimizers(self.model, t)
        # the volatility head's targets come from the tokenizer's code table (vol_targets.py)
        self.vol_targets = VolTargets(_tokenizer_of(data), config.model.vol_bars, config.model.sequence_len) \
            if config.model.vol_bars else None
        self.shock_targets = ShockTargets(_tokenizer_of(data), config.model.shock_bins) \
            if config.model.shock_bins else None
        self.forward_model = self._compiled() if t.compile else self.model
        if self.dist.enabled:
            self.forward_model = DistributedDataParallel(
                self.forward_model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.autocast_dtype = torch.bfloat16 if t.dtype == "bf16" else None

        self.step = 0  # optimizer steps done
        self.best_val_loss: float | None = None
        self.best_step: int | None = None
        self.evals_since_best = 0
        self.last_val_loss: float | None = None
        self.last_train_loss: float | None = None
        self.stopped_early = False
        self.saved_step: int | None = None  # the step of the newest checkpoint on disk
        self._best_model_meta: dict | None = None  # RUN/model/meta.json as last written
        self._stop_signal: int | None = None
        self._resumed = False
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = 0
        self.metrics = MetricsLog(self.run_dir, vocab_size=config.model.vocab_size,
                                  tensorboard=t.tensorboard) if self.dist.is_main else None
        self.peak_flops = peak_flops(t, self.device, self.dist.world_size)

    def _compiled(self):
        """torch.compile of the model; on a CPU without a C++ compiler (inductor builds its kernels with one) a
        ConfigError before any step, instead of a crash at the first."""
        reason = compile_unavailable() if self.device.type == "cpu" else None
        if reason:
            raise ConfigError(f"train.compile=true: {reason}; install one, or set train.compile=false")
        return torch.compile(self.model)

    def _load_init(self, init_model: GPT) -> None:
        """Copy a trained model's weights in (cast to the training weights' fp32 and moved to the device), before
        the optimizer, torch.compile and DDP see the model."""
        mine, theirs = self.config.model.to_dict(), init_model.config.to_dict()
        differ = [key for key in (*ARCHITECTURE_KEYS, "calendar", "side", "symbol_embedding", "symbols")
                  if mine[key] != theirs[key]]
        assert not differ, f"the init model's architecture differs from model config in {differ}"
        self.model.load_state_dict(init_model.state_dict())

    # --------------------------------------------------------------------------------------------- resume
    def load_checkpoint(self, path: str | os.PathLike | None = None) -> None:
        """Continue from the latest checkpoint (or `path`): weights, optimizer state, step, best loss, RNG states.

        Reads only; every problem (a damaged file, a --max-steps below the run's step) raises before training."""
        t = self.config.train
        path = Path(path) if path else latest_checkpoint(self.run_dir)
        if path is None:
            raise CheckpointError(f"{self.run_dir} has no checkpoint to resume from; start a new run without "
                                  "--resume")
        weights, state, _ = load_checkpoint(path, self.run_dir)
        if state["step"] > t.max_steps:
            raise ConfigError(f"{self.run_dir} is already at step {state['step']}; --max-steps (train.max_steps) "
                              f"{t.max_steps} would go back: pass a larger --max-steps to train further")
        try:
            self.model.load_state_dict(weights)
            for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
                optimizer.load_state_dict(saved)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:
            raise CheckpointError(f"checkpoint {path} does not fit this model and optimizer ({str(err)[:200]}); "
                                  f"resume with the run's own config.yaml, or {restart_hint(self.run_dir)}") from err
        if state["global_batch_size"] != self.global_batch:
            raise ConfigError(f"checkpoint {path} was trained with a global batch of {state['global_batch_size']} "
                              f"windows, this run has {self.global_batch}; set train.global_batch_size="
                              f"{state['global_batch_size']} to continue the same run")
        if self.metrics is not None:
            self.metrics.resume(state["step"])
        self.step = self.saved_step = state["step"]
        self._resumed = True
        self.best_val_loss, self.best_step = state["best_val_loss"], state["best_step"]
        self.evals_since_best = state["evals_since_best"]
        self.last_val_loss = state.get("last_val_loss")
        # the patience in force now decides (a run resumed with a larger or no patience trains on)
        patience = t.early_stopping_patience
        self.stopped_early = bool(patience) and self.evals_since_best >= patience
        self._load_best_model_meta()
        try:
            set_rng_state(state["rng"])
        except (RuntimeError, ValueError, TypeError, KeyError) as err:
            raise CheckpointError(f"{path / 'trainer_state.pt'} is damaged (its RNG state cannot be restored: "
                                  f"{err}); {restart_hint(self.run_dir)}") from err

    def _load_best_model_meta(self) -> None:
        """The best model on disk (RUN/model, or the copy a kill left as .model.old) and its meta.json; without one
        the next evaluation saves the current weights as the best model."""
        found = best_model_dir(self.run_dir)
        if found is not None:
            with contextlib.suppress(CheckpointError):
                self._best_model_meta = read_meta(found / META_FILE, "")
        if self._best_model_meta is None and self.best_val_loss is not None:
            log.warning(f"{self.run_dir / MODEL_DIR} is missing or damaged; the current weights will be evaluated "
                        "and saved as the best model")
            self.best_val_loss = self.best_step = None

    @property
    def nothing_to_train(self) -> bool:
        """True when the run is at max_steps or stopped early and has its best model."""
        return (self.step >= self.config.train.max_steps or self.stopped_early) and self.best_val_loss is not None

    def _trainer_state(self) -> dict:
        return {
            "step": self.step,
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "evals_since_best": self.evals_since_best,
            "last_val_loss": self.last_val_loss,
            "stopped_early": self.stopped_early,
            # the data position: batches are a pure function of (seed, step) and the global batch size
            "data": {"seed": self.config.train.seed, "step": self.step},
            "global_batch_size": self.global_batch,
            "schedule": {"lr_factor": self._lr_factor(max(self.step - 1, 0))},
            "rng": rng_state(),
        }

    def _meta(self, **extra) -> dict:
        return {"format_version": FORMAT_VERSION, "step": self.step, "max_steps": self.config.train.max_steps,
                "best_val_loss": self.best_val_loss, "best_step": self.best_step,
                "world_size": self.dist.world_size, "global_batch_size": self.global_batch,
                "stopped_early": self.stopped_early, **self.data.source, **extra}

    def save_checkpoint(self) -> None:
        self._check_weights()
        if self.dist.is_main:
            # metrics first: a kill between the two leaves rows after the checkpoint (a resume drops them), never
            # a checkpoint whose earlier rows were not written yet
            self.metrics.flush(plot=False)
            path = save_checkpoint(self.run_dir, self.model, self._trainer_state(), self._meta())
        self.saved_step = self.step
        dist.barrier(self.dist)
        if self.dist.is_main:
            self.callbacks("on_checkpoint", {"step": self.step, "path": str(path)})

    # ------------------------------------------------------------------------------------------- divergence
    def _diverged(self, what: str) -> TrainingDivergedError:
        lr = self.config.train.lr
        kept = (f"the last checkpoint (step {self.saved_step}) is kept" if self.saved_step is not None
                else "no checkpoint had been saved yet")
        return TrainingDivergedError(f"training diverged at step {self.step}: {what}; nothing of this step was "
                                     f"saved and {kept}. Lower the learning rate (train.lr={lr:g}) and rerun with "
                                     f"--resume --set train.lr={lr / 4:g}")

    def _check_loss(self, what: str, value: float | None) -> None:
        if value is not None and not math.isfinite(value):
            raise self._diverged(f"the {what} is {value}")

    def _check_weights(self) -> None:
        """Before weights are saved: every one finite (the same answer on every rank, so all raise together)."""
        finite = torch.stack([p.detach().isfinite().all() for p in self.model.parameters()]).all()
        if not bool(finite):
            raise self._diverged("the weights hold NaN or infinite values")

    # ------------------------------------------------------------------------------------------------ train
    def _lr_factor(self, step: int) -> float:
        t = self.config.train
        return lr_factor(step, t.warmup_steps, t.max_steps, t.min_lr_frac)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _batch(self, windows, ids: np.ndarray, hidden: np.ndarray | None = None,
               side_hidden: np.ndarray | None = None, symbol_hidden: np.ndarray | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """inputs (B, T), targets (B, T) and the model's other inputs: for a calendar model the inputs' calendar
        ids (B, T, 2), -1 in the windows `hidden` marks; for a side model their side-channel ids (B, T, 3), -1
        where `side_hidden` (B, T) is True; for a symbol model each window's symbol row (B,), -1 where
        `symbol_hidden` (B,) is True."""
        batch = windows.gather(ids)
        extra = {}
        if self.config.model.symbol_embedding:
            symbol = windows.gather_symbol(ids, self.symbol_rows[windows])
            if symbol_hidden is not None:
                symbol[torch.from_numpy(symbol_hidden)] = -1
            extra["symbol"] = symbol
        if self.config.model.calendar:
            calendar = windows.gather_calendar(ids)[:, :-1]
            if hidden is not None and hidden.any():
                calendar[torch.from_numpy(hidden)] = -1
            extra["calendar"] = calendar
        if self.config.model.side:
            side = windows.gather_side(ids)[:, :-1]
            if side_hidden is not None:
                side[torch.from_numpy(side_hidden)] = -1
            extra["side"] = side
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
            extra = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in extra.items()}
        return batch[:, :-1], batch[:, 1:], extra

    def train_step(self) -> None:
        """One optimizer step on the global batch of step `self.step`."""
        t, step, rank, world = self.config.train, self.step, self.dist.rank, self.dist.world_size
        ids, hidden = self.data.train.sample(t.seed, step, self.global_batch, t.calendar_dropout)
        side_hidden = None
        if self.config.model.side:  # its own stream: the windows drawn never depend on it
            side_hidden = np.random.default_rng([t.seed, step, 1]).random(
                (self.global_batch, self.data.train.length - 1)) < t.side_dropout
        symbol_hidden = None
        if self.config.model.symbol_embedding:  # a third stream, for the same reason
            symbol_hidden = np.random.default_rng([t.seed, step, 2]).random(self.global_batch) < t.symbol_dropout
        torch.manual_seed(_step_seed(t.seed, step, rank))  # dropout: a pure function of the step too
        set_lr(self.optimizers, self._lr_factor(step))
        B = t.batch_size
        for micro in range(self.accum_steps):
            lo = (micro * world + rank) * B
            x, y, extra = self._batch(self.data.train, ids[lo : lo + B], hidden[lo : lo + B],
                                      None if side_hidden is None else side_hidden[lo : lo + B],
                                      None if symbol_hidden is None else symbol_hidden[lo : lo + B])
            last = micro == self.accum_steps - 1
            no_sync = self.forward_model.no_sync() if self.dist.enabled and not last else contextlib.nullcontext()
            weights = []  # of the heads' losses, in the order forward returns them after the cross-entropy
            if self.vol_targets is not None:
                extra["vol_targets"] = self.vol_targets(y).to(self.device)
                weights.append(t.vol_loss_weight)
            if self.shock_targets is not None:
                extra["shock_targets"] = self.shock_targets(y).to(self.device)
                weights.append(t.shock_loss_weight)
            with no_sync:
                with self._autocast():
                    loss = self.forward_model(x, y, **extra)
                if weights:  # [cross-entropy, the heads' losses]: the loss logged is the cross-entropy
                    total = loss[0] + sum(w * head for w, head in zip(weights, loss[1:]))
                    loss = loss[0]
                    (total / self.accum_steps).backward()
                else:
                    (loss / self.accum_steps).backward()
            self._loss_sum += loss.detach()
            self._loss_count += 1
        if t.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        for optimizer in self.optimizers:
            optimizer.step()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.step += 1

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean validation loss over a fixed, evenly spread set of validation windows (all processes together)."""
        t, rank, world = self.config.train, self.dist.rank, self.dist.world_size
        ids = self.data.val.eval_ids(t.eval_batches * self.global_batch)[rank::world]
        total = torch.zeros(2, device=self.device, dtype=torch.float64)
        self.model.eval()
        for lo in range(0, len(ids), t.batch_size):
            x, y, extra = self._batch(self.data.val, ids[lo : lo + t.batch_size])
            with self._autocast():
                loss = self.model(x, y, **extra)
            total[0] += loss.double() * len(x)
            total[1] += len(x)
        self.model.train()
        dist.all_reduce_sum(total, self.dist)
        return (total[0] / total[1]).item()

    def _take_train_loss(self) -> float | None:
        if not self._loss_count:
            return None
        total = torch.stack([self._loss_sum.double(), torch.tensor(float(self._loss_count), device=self.device,
                                                                 dtype=torch.float64)])
        dist.all_reduce_sum(total, self.dist)
        self._loss_sum.zero_()
        self._loss_count = 0
        return (total[0] / total[1]).item()

    def _after_eval(self, val_loss: float) -> None:
        self._check_loss("validation loss", val_loss)
        self.last_val_loss = val_loss
        is_best = self.best_val_loss is None or val_loss < self.best_val_loss
        if is_best:
            self._check_weights()
            self.best_val_loss, self.best_step, self.evals_since_best = val_loss, self.step, 0
            if self.dist.is_main:
                meta = self._meta(val_loss=val_loss, train_loss=self.last_train_loss, finished=False)
                save_best_model(self.run_dir, self.model, meta, self.data.tokenizer_dir)
                self._best_model_meta = meta
        else:
            self.evals_since_best += 1
        patience = self.config.train.early_stopping_patience
        if patience and self.evals_since_best >= patience:
            self.stopped_early = True
        self.callbacks("on_evaluation", {
            "step": self.step, "val_loss": val_loss, "train_loss": self.last_train_loss,
            "best_val_loss": self.best_val_loss, "best_step": self.best_step, "is_best": is_best,
            "model_dir": str(self.run_dir / MODEL_DIR)})

    def train(self) -> dict:
        """Train from `self.step` to `train.max_steps` (or early stopping); return the result.

        A signal saves a checkpoint and raises (KeyboardInterrupt for SIGINT, SystemExit(143) for SIGTERM). The
        callbacks get on_end whatever ends training (callbacks.py)."""
        self._started = time.perf_counter()
        try:
            result = self._train()
        except BaseException as err:
            interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
            self.callbacks.end({"status": "interrupted" if interrupted else "failed",
                                "error": None if interrupted else f"{type(err).__name__}: {err}",
                                **self._end_info(self._result(self._started))})
            raise
        self.callbacks.end({"status": "finished", "error": None, **self._end_info(result)})
        return result

    def _end_info(self, result: dict) -> dict:
        return {"step": self.step, "saved_step": self.saved_step, "run_dir": str(self.run_dir),
                "metrics_csv": str(self.run_dir / METRICS_FILE), **result}

    def _train(self) -> dict:
        from tqdm.auto import tqdm

        t = self.config.train
        show = self.dist.is_main
        say = log.info if show else (lambda *_: None)
        started = self._started
        self.callbacks("on_start", self._start_info())
        if self.nothing_to_train:
            reason = (f"stopped early at step {self.step} (no better validation loss in {t.early_stopping_patience} "
                      "evaluations; set a larger train.early_stopping_patience to train on)" if self.stopped_early
                      else f"already at step {self.step} of train.max_steps={t.max_steps} (pass a larger "
                           "--max-steps to train further)")
            say(f"{self.run_dir}: training is already finished: {reason}")
            if self.dist.is_main:
                self._mark_model(finished=True)
            dist.barrier(self.dist)
            return self._result(started)
        bar = tqdm(total=t.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not (show and sys.stderr.isatty()))
        if show and not bar.disable:
            say = bar.write
        say(self._describe())
        stopped_by = 0
        try:
            with self._signals_caught():
                if self.best_val_loss is None:  # step 0, or a resumed run whose best model was lost
                    val_loss = self.evaluate()
                    self._after_eval(val_loss)
                    self._log(self.step, val_loss=val_loss, lr=0.0 if self.step == 0 else None)
                    say(f"step {self.step}: val loss {val_loss:.4f} (uniform: ln {self.config.model.vocab_size} = "
                        f"{math.log(self.config.model.vocab_size):.4f})")
                interval_start, interval_steps = time.perf_counter(), 0
                while self.step < t.max_steps and not self.stopped_early:
                    self.train_step()
                    interval_steps += 1
                    bar.update(1)
                    step, done = self.step, self.step >= t.max_steps
                    is_eval = step % t.eval_every == 0 or done
                    is_save = step % t.save_every == 0 or done
                    is_log = step % t.log_every == 0 or is_eval
                    if is_log:
                        elapsed = time.perf_counter() - interval_start
                        tok_per_s = interval_steps * self.tokens_per_step / max(elapsed, 1e-9)
                        self.last_train_loss = self._take_train_loss()
                        self._check_loss("training loss", self.last_train_loss)
                        mfu = (self.model.flops_per_token(self.data.train.length - 1) * tok_per_s / self.peak_flops
                               if self.peak_flops else None)
                        lr = self._lr_factor(step - 1) * t.lr
                        self._log(step, lr=lr, train_loss=self.last_train_loss, tok_per_s=tok_per_s, mfu=mfu)
                        self.callbacks("on_step", {"step": step, "max_steps": t.max_steps,
                                                   "train_loss": self.last_train_loss, "lr": lr,
                                                   "tokens_per_s": tok_per_s, "mfu": mfu})
                        bar.set_postfix(loss=f"{self.last_train_loss:.4f}", lr=f"{lr:.2e}",
                                        tok_s=f"{tok_per_s:,.0f}", refresh=False)
                        interval_start, interval_steps = time.perf_counter(), 0
                    if is_eval:
                        val_loss = self.evaluate()
                        self._after_eval(val_loss)
                        self._log(step, val_loss=val_loss)
                        say(f"step {step}/{t.max_steps}: train loss {self.last_train_loss:.4f}, val loss "
                            f"{val_loss:.4f} (best {self.best_val_loss:.4f} at step {self.best_step})")
                        if self.metrics is not None:
                            self.metrics.flush()
                        if self.stopped_early:
                            say(f"early stopping: no better validation loss in {t.early_stopping_patience} "
                                "evaluations")
                    # one process reads its own flag for free; under DDP the all-reduce is a host sync, so it
                    # happens only at steps that sync anyway (the same steps on every rank)
                    if not self.dist.enabled or is_log or is_save:
                        stopped_by = dist.max_over_processes(self._stop_signal or 0, self.dist, self.device)
                    if is_save or stopped_by or self.stopped_early:
                        self.save_checkpoint()
                    if is_eval or is_save:
                        interval_start, interval_steps = time.perf_counter(), 0  # tokens/s: training time only
                    if stopped_by:
                        name = (signal.Signals(self._stop_signal).name if self._stop_signal
                                else "a signal on another rank")
                        say(f"stopped by {name} at step {step}: checkpoint saved; continue with --resume (or rerun "
                            "the same `pricegpt pipeline` command)")
                        break
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
        if self.dist.is_main:
            self._mark_model(finished=not stopped_by)
            self.metrics.flush(plot=True)
        dist.barrier(self.dist)
        if stopped_by == signal.SIGTERM:
            raise SystemExit(128 + signal.SIGTERM)
        if stopped_by:
            raise KeyboardInterrupt
        return self._result(started)

    def _result(self, started: float) -> dict:
        return {"best_val_loss": self.best_val_loss, "best_step": self.best_step, "steps": self.step,
                "out": str(self.run_dir), "model_dir": str(self.run_dir / MODEL_DIR),
                "final_train_loss": self.last_train_loss, "final_val_loss": self.last_val_loss,
                "stopped_early": self.stopped_early, "seconds": time.perf_counter() - started}

    # ------------------------------------------------------------------------------------------- plumbing
    def _start_info(self) -> dict:
        t = self.config.train
        return {"step": self.step, "max_steps": t.max_steps, "resumed": self._resumed, "run_dir": str(self.run_dir),
                "config": self.config.to_dict(), "num_params": self.model.num_params(), "device": str(self.device),
                "world_size": self.dist.world_size, "global_batch": self.global_batch,
                "tokens_per_step": self.tokens_per_step}

    def _log(self, step: int, **values) -> None:
        if self.metrics is not None:
            self.metrics.log(step, **values)

    def _mark_model(self, finished: bool) -> None:
        """Record in RUN/model/meta.json whether training finished (the pipeline resumes unfinished runs)."""
        if self._best_model_meta is None:
            return
        meta = {**self._best_model_meta, "finished": finished, "steps_trained": self.step}
        if meta != self._best_model_meta:
            write_json(self.run_dir / MODEL_DIR / META_FILE, meta)
            self._best_model_meta = meta

    def _describe(self) -> str:
        m, t = self.config.model, self.config.train
        return (f"training {self.model.num_params():,} parameters ({m.n_layer} layers, n_embd {m.n_embd}) on "
                f"{self.device} x{self.dist.world_size}, {t.dtype}, {t.optimizer}; global batch {self.global_batch} "
                f"windows x {self.data.train.length - 1} tokens (accumulation {self.accum_steps}); "
                f"{self.data.train.num_windows:,} train / {self.data.val.num_windows:,} val windows; "
                f"steps {self.step} -> {t.max_steps}")

    @contextlib.contextmanager
    def _signals_caught(self):
        """SIGINT / SIGTERM finish the current step and save a checkpoint (train raises after); a second Ctrl-C
        aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _tokenizer_of(data: TokenData):
    """The tokenizer the training tokens were written with, or None (a bare token file)."""
    return None if data.tokenizer_dir is None else load_tokenizer(data.tokenizer_dir)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
