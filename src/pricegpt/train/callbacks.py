"""Training callbacks: `train_run(..., callbacks=[...])` hands the trainer's events to the user's objects.

A callback is any object with one or more of these methods, each called with one plain dict (a fresh copy per
callback), on rank 0 only:

    on_start(info)       before the first step: step (where training starts: 0, or a resumed run's step),
                         max_steps, resumed, run_dir, config (the resolved RunConfig as a nested dict),
                         num_params, device, world_size, global_batch, tokens_per_step
    on_step(info)        every train.log_every steps (the steps whose loss reaches the host anyway): step,
                         max_steps, train_loss (mean over the steps since the last call), lr, tokens_per_s, mfu
                         (None when the device's peak FLOP/s is unknown)
    on_evaluation(info)  after each validation (step 0, every train.eval_every steps, the last step): step, val_loss,
                         train_loss (None at step 0), best_val_loss, best_step, is_best, model_dir (RUN/model, the
                         best model, saved by this evaluation when is_best)
    on_checkpoint(info)  after a checkpoint is on disk: step, path (RUN/checkpoints/step-N)
    on_end(info)         once, whatever ends training: status ("finished": max_steps or early stopping reached;
                         "interrupted": Ctrl-C / SIGTERM, a checkpoint was saved; "failed": an exception, in
                         `error`), step, then for "finished" and "interrupted" train_run's result (best_val_loss,
                         best_step, steps, out, model_dir, stopped_early, ...) and run_dir, metrics_csv

`Callback` is a base class whose methods do nothing, to subclass when that reads better. Steps count optimizer
steps; losses are mean cross-entropies in nats per token.

A callback that raises stops training: its exception comes out of `train_run` as a `CallbackError` naming the
callback, the event and the step (the original exception chained as its cause); the newest checkpoint on disk
stays and `--resume` continues from it. Every callback then still gets on_end with status "failed"; what one
raises there is logged, so that the error that stopped training is the one reported.
"""

from __future__ import annotations

import copy
import logging

from ..errors import ConfigError, PriceGPTError

log = logging.getLogger("pricegpt")

EVENTS = ("on_start", "on_step", "on_evaluation", "on_checkpoint", "on_end")


class Callback:
    """A training callback whose every method does nothing: override the events you need (see the module
    docstring for what each `info` dict holds)."""

    def on_start(self, info: dict) -> None:
        pass

    def on_step(self, info: dict) -> None:
        pass

    def on_evaluation(self, info: dict) -> None:
        pass

    def on_checkpoint(self, info: dict) -> None:
        pass

    def on_end(self, info: dict) -> None:
        pass


class CallbackError(PriceGPTError):
    """A training callback raised: training stopped (the newest checkpoint is kept)."""


class Callbacks:
    """The callbacks of one training run, called in the order given. `enabled=False` (every rank but 0) makes
    each call do nothing."""

    def __init__(self, callbacks=(), *, enabled: bool = True):
        self.callbacks = check_callbacks(callbacks)
        self.enabled = enabled

    def __bool__(self) -> bool:
        return bool(self.callbacks) and self.enabled

    def __call__(self, event: str, info: dict) -> None:
        """Call `event` on every callback that has it; the first exception stops the run as a CallbackError."""
        assert event in EVENTS and event != "on_end", event
        if not self:
            return
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is None:
                continue
            try:
                method(copy.deepcopy(info))
            except Exception as err:
                raise CallbackError(f"training callback {_name(callback)}.{event} raised at step "
                                    f"{info.get('step')}: {type(err).__name__}: {err}; training stopped (the newest "
                                    "checkpoint is kept: fix the callback and continue with --resume)") from err

    def end(self, info: dict) -> None:
        """on_end. After a failure ("failed") a callback's own exception is logged rather than raised, so the
        error that stopped training is the one the caller sees."""
        if not self:
            return
        for callback in self.callbacks:
            method = getattr(callback, "on_end", None)
            if method is None:
                continue
            try:
                method(copy.deepcopy(info))
            except Exception as err:
                if info.get("status") == "failed":
                    log.warning(f"training callback {_name(callback)}.on_end raised after training failed: "
                                f"{type(err).__name__}: {err}")
                    continue
                raise CallbackError(f"training callback {_name(callback)}.on_end raised at step {info.get('step')}: "
                                    f"{type(err).__name__}: {err} (training itself finished; RUN/model holds "
                                    "the best model)") from err


def check_callbacks(callbacks) -> list:
    """The callbacks as a list; a class instead of an instance, or an object with none of the events, is a
    ConfigError (it would otherwise be ignored without a word)."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise ConfigError(f"callbacks must be a list of callback objects, not {type(callbacks).__name__}: "
                          "train_run(..., callbacks=[MyCallback()])")
    for callback in callbacks:
        if isinstance(callback, type):
            raise ConfigError(f"callbacks holds the class {callback.__name__}; pass an instance: "
                              f"callbacks=[{callback.__name__}()]")
        if not any(callable(getattr(callback, event, None)) for event in EVENTS):
            raise ConfigError(f"callback {_name(callback)} has none of the methods {', '.join(EVENTS)}; subclass "
                              "pricegpt.train.Callback and override the events you need")
    return list(callbacks)


def _name(callback) -> str:
    return type(callback).__name__
