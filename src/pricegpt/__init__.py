"""pricegpt: market prices as a language.

Prices become log returns, a tokenizer turns return patches into discrete codes, a small GPT continues the
sequence, and sampled futures are decoded back to returns and judged against honest baselines.

The public API is imported lazily, so `import pricegpt` stays cheap and the CLI starts fast:

    from pricegpt import load_prices, Forecaster
    fc = Forecaster.from_run("runs/quickstart")
    fc.predict_df(load_prices("sample:stocks-daily"), horizon=4)   # symbol, timestamp, mean, "0.1" .. "0.9", prices

In a notebook, `pricegpt.enable_logging()` shows the library's log lines (training progress, warnings) in the cell.
"""

from __future__ import annotations

import importlib
import logging
import sys

from .errors import ConfigError

__version__ = "0.1.0"

_API = {
    "PriceGPTError": "errors", "DataError": "errors", "ConfigError": "errors", "CheckpointError": "errors",
    "TokenizerError": "errors",
    "load_prices": "data", "read_prices": "data", "log_returns": "data", "time_splits": "data", "Splits": "data",
    "GPT": "model", "GPTConfig": "model",
    "create_tokenizer": "tokenizer", "load_tokenizer": "tokenizer", "fit_to_dir": "tokenizer",
    "write_token_store": "tokenizer", "TokenStore": "tokenizer",
    "RunConfig": "config", "TrainConfig": "config",
    "train_run": "train", "Trainer": "train",
    "load_run": "runs", "Run": "runs",
    "Forecaster": "forecast", "calibrate_temperature": "forecast", "forecast_symbol": "forecast",
    "evaluate_run": "evaluate", "origins_frame": "evaluate",
    "run_backtest": "backtest",
    "analyze": "analysis", "analyze_to_dir": "analysis",
    "run_pipeline": "pipeline", "PipelineSettings": "pipeline",
}

__all__ = sorted(_API) + ["__version__", "enable_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted, not the stream of when the handler was made: a
    notebook kernel swaps its stderr per cell, and a process that calls the CLI's `main` more than once (a test)
    never writes to a stream closed since. `enable_logging` and the command line both use it."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def enable_logging(level: int | str = "INFO") -> logging.Logger:
    """Show the "pricegpt" logger's records at `level` and above on stderr (a notebook shows them under the cell),
    and return the logger. Idempotent: a second call only changes the level; a logger that already writes to
    stderr (the command line's) gets no second handler. Its records stop propagating to the root logger, so a
    root handler (logging.basicConfig) does not print them twice."""
    logger = logging.getLogger("pricegpt")
    name = level.upper() if isinstance(level, str) else level
    known = isinstance(name, int) and not isinstance(name, bool) or isinstance(logging.getLevelName(name), int)
    if not known:
        raise ConfigError(f"logging level {level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL (or a "
                          "number)")
    logger.setLevel(name)
    if not any(isinstance(h, logging.StreamHandler) and h.stream is sys.stderr for h in logger.handlers):
        handler = CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.propagate = False
    return logger


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pricegpt' has no attribute {name!r}")


def __dir__():
    return __all__
